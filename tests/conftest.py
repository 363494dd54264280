"""Shared fixtures: real sample data from ../shared/data, small CPU settings, offline W&B."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HYDRA_FULL_ERROR", "1")


def shared_data_dir() -> Path:
    """``$BAPOSE_SHARED/data`` or ``../shared/data`` beside the checkout."""
    root = Path(os.environ.get("BAPOSE_SHARED", REPO.parent / "shared"))
    data = root / "data"
    if not data.is_dir():
        pytest.fail(f"sample data not found at '{data}': clone bapose with ../shared beside it or set BAPOSE_SHARED")
    return data


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return shared_data_dir()


@pytest.fixture(scope="session")
def coco_sample(shared_data: Path) -> Path:
    return shared_data / "coco_sample"


@pytest.fixture(scope="session")
def crowdpose_sample(shared_data: Path) -> Path:
    return shared_data / "crowdpose_sample"


@pytest.fixture(scope="session")
def ochuman_sample(shared_data: Path) -> Path:
    return shared_data / "ochuman_sample"


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory):
    # generated datasets go to a per-session temp cache, never the user's ~/.cache: set for the whole session
    # (module-scoped fixtures that train or start subprocesses run before any function-scoped fixture)
    before = os.environ.get("BAPOSE_CACHE")
    os.environ["BAPOSE_CACHE"] = str(tmp_path_factory.getbasetemp() / "bapose-cache")
    yield
    if before is None:
        os.environ.pop("BAPOSE_CACHE", None)
    else:
        os.environ["BAPOSE_CACHE"] = before
