"""The package version, in a module of its own: modules that stamp it into files import it from here, never from
the package root (whose lazy ``load_model`` sits above every layer)."""

__version__ = "0.1.0"
