"""bapose: the BAPose experiment suite (bottom-up multi-person pose estimation with D-WASP).

``bapose.load_model(ckpt_path)`` rebuilds a trained checkpoint as a ready-to-run model (net, codec, joint set); see
:mod:`bapose.loading`. It is imported on first use, so ``import bapose`` stays light.
"""

from __future__ import annotations

from typing import Any

from bapose._version import __version__

__all__ = ["__version__", "load_model"]


def __getattr__(name: str) -> Any:
    if name in ("load_model", "LoadedModel"):
        from bapose import loading

        return getattr(loading, name)
    raise AttributeError(f"module 'bapose' has no attribute {name!r}")
