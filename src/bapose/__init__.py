"""bapose: the BAPose experiment suite (bottom-up multi-person pose estimation with D-WASP)."""

__version__ = "0.1.0"
