"""Where bapose finds its Hydra configs and caches, installed from a wheel or from a checkout."""

from __future__ import annotations

import os
from pathlib import Path


def config_dir() -> Path:
    """The Hydra config folder: ``bapose/conf`` inside a wheel, ``conf/`` at the repo root in a checkout."""
    packaged = Path(__file__).resolve().parent / "conf"
    if packaged.is_dir():
        return packaged
    repo = Path(__file__).resolve().parents[2] / "conf"
    if repo.is_dir():
        return repo
    raise FileNotFoundError(f"bapose configs not found: looked in '{packaged}' and '{repo}'")


def cache_dir() -> Path:
    """Cache for generated datasets: ``$BAPOSE_CACHE`` or ``~/.cache/bapose``."""
    root = os.environ.get("BAPOSE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "bapose")
    return Path(root)
