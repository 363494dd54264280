"""bapose-eval takes the dataset, joint set and input size from the checkpoint unless told otherwise, refuses a
dataset with another joint set naming both, and tells old checkpoints which data= to give (issue 13)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bapose.training.evaluate import evaluate, with_eval_data
from bapose.build import compose_config
from bapose.training.fit import train
from bapose.errors import CheckpointError
from bapose.checkpoints.io import load_checkpoint_safely

# a COCO-17 checkpoint: the generated demo set at 64 px (its joints are COCO's), two short epochs
TINY = [
    "data.input_size=64", "data.synthetic.num_train=4", "data.synthetic.num_val=3", "data.synthetic.image_size=64",
    "data.batch_size=2", "data.val_batch_size=2", "data.num_workers=0", "data.persistent_workers=false",
    "data.pin_memory=false", "logger=[csv]", "draw_images=0", "debug=limit", "trainer.max_epochs=1",
    "trainer.limit_train_batches=1", "trainer.limit_val_batches=1.0", "run_test=false", "codec.center_threshold=-1",
]


@pytest.fixture(scope="module")
def coco_ckpt(tmp_path_factory) -> tuple[Path, dict]:
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("train")
    metrics = train(compose_config(TINY, output_dir=run))
    return Path(metrics["best_model_path"]), metrics


def _eval(out: Path, *overrides: str) -> dict:
    # an untrained net has no confident centers: keep the top-30 so there are people to compare
    return evaluate(compose_config(["codec.center_threshold=-1", *overrides], config_name="eval", output_dir=out))


def test_checkpoint_stores_its_dataset(coco_ckpt):
    ckpt, _ = coco_ckpt
    data = load_checkpoint_safely(ckpt)["bapose"]["data"]
    assert data["name"] == "synthetic" and data["input_size"] == 64 and data["num_keypoints"] == 17
    assert data["meta"]["name"] == "coco" and len(data["meta"]["keypoints"]) == 17
    assert data["eval_mode"] == "coco" and data["synthetic"]["num_val"] == 3


def test_eval_without_data_scores_on_the_checkpoints_dataset(coco_ckpt, tmp_path):
    ckpt, trained = coco_ckpt
    out = _eval(tmp_path, f"ckpt_path={ckpt}", "trainer.accelerator=cpu")
    # the very images, joints and input size of training: the AP its final validation measured
    for key in ("AP", "AP50", "AR"):
        assert out[f"val/{key}"] == pytest.approx(trained[f"val/{key}"], abs=1e-12)
    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results) > 0 and all(len(r["keypoints"]) == 17 * 3 for r in results)
    at_train = json.loads((Path(trained["best_model_path"]).parents[1] / "val_results.json").read_text())
    key = lambda r: (r["image_id"], -r["score"])  # noqa: E731
    assert sorted(results, key=key) == sorted(at_train, key=key)  # the same images, people and scores
    # data.<key>= changes one key of the stored dataset
    out2 = _eval(tmp_path / "b", f"ckpt_path={ckpt}", "data.val_batch_size=1", "trainer.accelerator=cpu")
    assert out2["val/AP"] == pytest.approx(out["val/AP"], abs=1e-12)


def test_another_joint_set_is_refused_naming_both(coco_ckpt, crowdpose_sample, tmp_path):
    ckpt, _ = coco_ckpt
    with pytest.raises(CheckpointError) as err:
        _eval(tmp_path, f"ckpt_path={ckpt}", "data=crowdpose", f"data.root={crowdpose_sample}",
              "data.val.ann_file=test_crowdpose.json", "data.val.image_dir=.")
    msg = str(err.value)
    assert "'coco' (17 joints: nose, left_eye" in msg and "'crowdpose' (14 joints: left_shoulder" in msg
    assert str(ckpt) in msg and "\n" not in msg


def test_old_checkpoint_says_which_data_to_give(coco_ckpt, tmp_path):
    ckpt, _ = coco_ckpt
    old = load_checkpoint_safely(ckpt)
    del old["bapose"]["data"]
    path = tmp_path / "old.ckpt"
    torch.save(old, path)
    with pytest.raises(CheckpointError, match=r"does not store the dataset.*give one with joint set 'coco' "
                                               r"\(17 joints.*data=coco data.root=") as err:
        _eval(tmp_path / "e", f"ckpt_path={path}")
    assert "\n" not in str(err.value)
    # the console script ends on that one line, no traceback
    exe = Path(sys.executable).parent / "bapose-eval"
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.run([str(exe), f"ckpt_path={path}", f"hydra.run.dir={tmp_path / 'cli'}"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("bapose-eval: checkpoint") and "data=coco" in last and "Traceback" not in proc.stderr
    # given a dataset with data=, it evaluates (at the checkpoint's input size, 64, not the group's 256)
    out = _eval(tmp_path / "given", f"ckpt_path={path}", "data=synthetic",
                *[o for o in TINY if o.startswith("data.") and not o.startswith("data.input_size")],
                "trainer.accelerator=cpu")
    assert 0.0 <= out["val/AP"] <= 1.0


def test_input_size_is_the_checkpoints_unless_given(tmp_path):
    info = {"input_size": 64}
    cfg = compose_config(["ckpt_path=x.ckpt", "data=synthetic"], config_name="eval", output_dir=tmp_path)
    assert cfg.data.input_size == 256 and with_eval_data(cfg, info, Path("x.ckpt")).data.input_size == 64
    cfg = compose_config(["ckpt_path=x.ckpt", "data=synthetic", "data.input_size=128"], config_name="eval",
                         output_dir=tmp_path)
    assert with_eval_data(cfg, info, Path("x.ckpt")).data.input_size == 128
    # from the checkpoint: its stored dataset, with the keys given on top
    stored = {"data": {"_target_": "bapose.data.datamodule.BAPoseDataModule", "name": "coco", "input_size": 640,
                       "root": "/old/coco", "val": {"ann_file": "a.json", "image_dir": "val2017"}, "eval_mode": "coco"},
              "input_size": 640}
    cfg = compose_config(["ckpt_path=x.ckpt", "data.root=/new/coco", "data.val.image_dir=images"],
                         config_name="eval", output_dir=tmp_path)
    data = with_eval_data(cfg, stored, Path("x.ckpt")).data
    assert data.root == "/new/coco" and data.input_size == 640 and dict(data.val) == {"ann_file": "a.json",
                                                                                       "image_dir": "images"}


def test_default_eval_data_of_a_coco_checkpoint_keeps_its_files_and_no_synthetic_options(tmp_path):
    """A checkpoint trained on COCO files stores `synthetic: null`, `test: null`: conf/data/checkpoint.yaml's all-null
    `synthetic:` / `test:` nodes must leave them null (an all-null dict made the datamodule generate a dataset with
    num_train=None), while a key given on the command line still lands."""
    spec = {"name": "coco", "input_size": 512, "num_keypoints": 17, "root": "/data/coco",
            "train": {"ann_file": "annotations/person_keypoints_train2017.json", "image_dir": "train2017"},
            "val": {"ann_file": "annotations/person_keypoints_val2017.json", "image_dir": "val2017"},
            "test": None, "synthetic": None, "eval_mode": "coco", "val_batch_size": 1}
    info = {"data": spec, "input_size": 512, "meta": "coco", "num_keypoints": 17}
    cfg = compose_config(["ckpt_path=x.ckpt", "data.val_batch_size=4"], config_name="eval", output_dir=tmp_path)
    data = with_eval_data(cfg, info, Path("x.ckpt")).data
    assert data.synthetic is None and data.test is None
    assert data.val.ann_file == spec["val"]["ann_file"] and data.root == "/data/coco"
    assert data.val_batch_size == 4 and data.input_size == 512
