"""Issue 22: where runs land and data is looked up does not depend on the folder a run starts from.

``paths.root_dir`` is the checkout's root (a wheel install: the working directory at start) unless ``BAPOSE_ROOT``;
dataset roots default to ``<paths.data_dir>/<dataset>`` (``BAPOSE_DATA``), and ``COCO_ROOT`` / ``CROWDPOSE_ROOT`` /
``DATA_ROOT`` / ``data.root=`` still set one dataset's root.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import bapose.paths
from bapose.build import build_datamodule, compose_config
from bapose.errors import DataError

REPO = Path(__file__).resolve().parents[1]
DATASETS = ("coco", "crowdpose", "custom")
ENV = ("BAPOSE_ROOT", "BAPOSE_DATA", "COCO_ROOT", "CROWDPOSE_ROOT", "DATA_ROOT")


@pytest.fixture
def clean_env(monkeypatch):
    for k in ENV:
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


def _roots(*overrides: str) -> dict[str, str]:
    return {name: str(compose_config([f"data={name}", *overrides]).data.root) for name in DATASETS}


def test_data_roots_and_run_folders_are_the_same_from_any_working_directory(clean_env, tmp_path):
    assert bapose.paths.checkout_root() == REPO
    clean_env.chdir(REPO)
    from_repo = _roots()
    assert from_repo == {name: str(REPO / "data" / name) for name in DATASETS}
    elsewhere = tmp_path / "somewhere" / "else"
    elsewhere.mkdir(parents=True)
    clean_env.chdir(elsewhere)
    assert _roots() == from_repo
    cfg = compose_config([])
    # README's `outputs/train/runs/<run>` from the repo root, wherever the command was typed
    assert Path(str(cfg.paths.log_dir)) == REPO / "outputs"
    assert Path(str(cfg.hydra.run.dir)).parent == REPO / "outputs" / "train" / "runs"
    assert Path(str(cfg.hydra.sweep.dir)).parent == REPO / "outputs" / "train" / "multiruns"
    assert cfg.data.root is None  # data=synthetic (the default) lives in the cache, not under data_dir
    assert Path(str(compose_config(["data=synthetic_dense"]).paths.data_dir)) == REPO / "data"


def test_bapose_data_moves_every_root_and_dataset_variables_still_win(clean_env, tmp_path):
    clean_env.chdir(tmp_path)
    clean_env.setenv("BAPOSE_DATA", "/x")
    assert _roots() == {"coco": "/x/coco", "crowdpose": "/x/crowdpose", "custom": "/x/custom"}
    clean_env.setenv("COCO_ROOT", "/c")
    # COCO_ROOT is COCO's alone: crowdpose and custom inherit coco.yaml but keep their own roots
    assert _roots() == {"coco": "/c", "crowdpose": "/x/crowdpose", "custom": "/x/custom"}
    clean_env.setenv("CROWDPOSE_ROOT", "/cp")
    clean_env.setenv("DATA_ROOT", "/mine")
    assert _roots() == {"coco": "/c", "crowdpose": "/cp", "custom": "/mine"}
    assert _roots("data.root=/given") == dict.fromkeys(DATASETS, "/given")


def test_bapose_root_moves_outputs_and_data(clean_env, tmp_path):
    clean_env.chdir(tmp_path)
    clean_env.setenv("BAPOSE_ROOT", "/r")
    cfg = compose_config(["data=coco"])
    assert (cfg.paths.root_dir, cfg.paths.log_dir, cfg.data.root) == ("/r", "/r/outputs", "/r/data/coco")


def test_a_wheel_install_roots_runs_at_the_starting_folder(clean_env, tmp_path):
    """No checkout to anchor to (configs inside the package): the working directory at start, made absolute."""
    clean_env.setattr(bapose.paths, "checkout_root", lambda: None)
    clean_env.chdir(tmp_path)
    cfg = compose_config(["data=crowdpose"])
    assert cfg.paths.root_dir == str(tmp_path.resolve())
    assert cfg.data.root == str(tmp_path.resolve() / "data" / "crowdpose")


def test_a_missing_data_root_names_the_field_the_folder_and_the_ways_to_set_it(clean_env, tmp_path):
    clean_env.setenv("BAPOSE_DATA", str(tmp_path / "nowhere"))
    datamodule = build_datamodule(compose_config(["data=coco"]))
    with pytest.raises(DataError) as err:
        datamodule.setup("fit")
    msg = str(err.value)
    assert "'data.root'" in msg and str(tmp_path / "nowhere" / "coco") in msg
    assert "annotations/person_keypoints_train2017.json" in msg and "BAPOSE_DATA" in msg and "data.root=" in msg
