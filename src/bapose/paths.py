"""Where bapose finds its Hydra configs, caches and the root of its runs and data, installed from a wheel or from a
checkout. :func:`default_root_dir` is ``${bapose.root_dir:}`` (``bapose.utils.resolvers``), the default of
``paths.root_dir`` (``conf/paths``).
"""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def checkout_root() -> Path | None:
    """The repo root when bapose is imported from a source checkout (``src/bapose`` with ``conf/`` at the repo root,
    an editable install included); ``None`` for a wheel install (configs in ``bapose/conf``)."""
    if (_PACKAGE / "conf").is_dir():
        return None
    root = _PACKAGE.parents[1]
    return root if (root / "conf").is_dir() else None


def config_dir() -> Path:
    """The Hydra config folder: ``bapose/conf`` inside a wheel, ``conf/`` at the repo root in a checkout."""
    packaged = _PACKAGE / "conf"
    if packaged.is_dir():
        return packaged
    repo = _PACKAGE.parents[1] / "conf"
    if repo.is_dir():
        return repo
    raise FileNotFoundError(f"bapose configs not found: looked in '{packaged}' and '{repo}'")


def default_root_dir() -> str:
    """``paths.root_dir`` when ``BAPOSE_ROOT`` is not set, absolute: the checkout's root (where ``make train`` runs and
    ``outputs/`` has always been), whatever folder a run starts from; for a wheel install, which has no such folder,
    the working directory at start (Hydra's own default for ``outputs/``)."""
    root = checkout_root()
    return str(root if root is not None else Path.cwd().resolve())


def cache_dir() -> Path:
    """Cache for generated datasets: ``$BAPOSE_CACHE`` or ``~/.cache/bapose``."""
    root = os.environ.get("BAPOSE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "bapose")
    return Path(root)

