"""Issue 7, "nothing lost": every fault of the catalogue, through the entry points a user goes through.

Data faults go through ``build_datamodule(cfg)`` of the composed train config (``data=coco`` pointed at a copy of
the real 4-image COCO sample) and its DataLoaders (``num_workers=0``, and 1 where a worker's error must surface);
run faults through ``train(cfg)``; what the user sees through the ``bapose-train`` console script. Every error must
name the file, the field (or annotation id) and what was expected.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch

from bapose.build import build_datamodule, build_module, compose_config
from bapose.training.fit import train
from bapose.codecs import BAPoseCodec
from bapose.errors import CheckpointError, ConfigError, DataError, user_message
from bapose.evaluation import KeypointEvaluator
from bapose.training import BAPoseLoss, NonFiniteLossError
from bapose.checkpoints.io import load_checkpoint_safely

SIZE = 64
TRAIN_CLI = Path(sys.executable).with_name("bapose-train")
# the real train config on the generated set, shrunk: 64 px, 4 images, no workers, CSV logging only
TINY = [
    "data.input_size=64", "data.synthetic.num_train=4", "data.synthetic.num_val=2", "data.synthetic.image_size=64",
    "data.batch_size=2", "data.val_batch_size=2", "data.num_workers=0", "data.persistent_workers=false",
    "data.pin_memory=false", "logger=[csv]", "draw_images=0", "run_test=false", "trainer.max_epochs=1",
    "trainer.limit_val_batches=1",
]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------------------- helpers
def _coco_copy(coco_sample: Path, root: Path, edit=None) -> tuple[Path, dict]:
    """Copy the COCO sample (4 images, 14 people) into ``root``; ``edit(data)`` may change the json first."""
    root.mkdir(parents=True, exist_ok=True)
    for jpg in coco_sample.glob("*.jpg"):
        shutil.copy(jpg, root / jpg.name)
    data = json.loads((coco_sample / "test_coco.json").read_text())
    if edit is not None:
        edit(data)
    ann = root / "ann.json"
    ann.write_text(json.dumps(data))
    return ann, data


def _coco_dm(root: Path, *overrides: str):
    """``build_datamodule`` of the train config with ``data=coco`` reading ``root/ann.json`` for train and val."""
    cfg = compose_config([
        "data=coco", f"data.root={root}", f"data.input_size={SIZE}", "data.num_workers=0", "data.val_num_workers=0",
        "data.persistent_workers=false", "data.pin_memory=false", "data.batch_size=2", "data.val_batch_size=2",
        "data.train.ann_file=ann.json", "data.train.image_dir=.", "data.val.ann_file=ann.json",
        "data.val.image_dir=.", *overrides,
    ])
    return build_datamodule(cfg)


def _run_cli(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """``bapose-train`` as a user runs it: no HYDRA_FULL_ERROR, one thread, offline W&B."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.update(OMP_NUM_THREADS="1", WANDB_MODE="offline")
    return subprocess.run([str(TRAIN_CLI), *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)


def _first_line(text: str) -> str:
    return next(line for line in text.splitlines() if line.strip())


def _finite_targets(batch: dict[str, Any]) -> bool:
    return all(bool(torch.isfinite(batch[k]).all()) for k in ("heatmaps", "heatmap_weights", "offsets",
                                                                "offset_weights"))


# ---------------------------------------------------------------------------------------------------- 1. missing
def test_missing_image_fails_at_setup_or_is_dropped_with_a_count(coco_sample, tmp_path, caplog):
    ann, _ = _coco_copy(coco_sample, tmp_path)
    (tmp_path / "000000040083.jpg").unlink()
    dm = _coco_dm(tmp_path)
    with pytest.raises(DataError) as err:
        dm.setup("fit")  # before any batch: the whole list is checked when the dataset is built
    msg = str(err.value)
    assert f"file '{ann}'" in msg and "1 of 4 images are missing" in msg
    assert "000000040083.jpg" in msg and "expected every image listed in 'images' to exist" in msg

    caplog.set_level(logging.WARNING, logger="bapose.data.dataset")
    dm = _coco_dm(tmp_path, "data.on_bad_sample=skip")
    dm.setup("fit")
    assert len(dm.train_dataset) == 3 and dm.train_dataset.num_skipped == 1
    assert len(dm.val_dataset) == 3 and dm.val_dataset.num_skipped == 1
    assert 40083 not in dm.train_dataset.ids
    assert sum("1 of 4 images are missing" in r.getMessage() and "skipping them" in r.getMessage()
               for r in caplog.records) == 2  # train and val each say so once


# ---------------------------------------------------------------------------------------------------- 2. corrupt
def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_truncated_jpeg_names_the_file_in_the_main_process_and_in_a_worker(coco_sample, tmp_path):
    _coco_copy(coco_sample, tmp_path)
    bad = tmp_path / "000000196141.jpg"
    _truncate(bad)
    # what OpenCV alone does with it: decodes "successfully" with the missing half grey
    import cv2
    assert cv2.imread(str(bad)) is not None

    dm = _coco_dm(tmp_path)
    dm.setup("fit")
    with pytest.raises(DataError, match=rf"file '{re.escape(str(bad))}': JPEG is truncated \(\d+ bytes"):
        list(dm.val_dataloader())

    dm = _coco_dm(tmp_path, "data.val_num_workers=1")  # the val loader's own workers (issue 20)
    dm.setup("validate")
    with pytest.raises(DataError) as err:
        list(dm.val_dataloader())
    assert str(bad) in str(err.value) and "DataLoader worker process 0" in str(err.value)
    line = user_message(err.value)  # the one line the CLI prints
    assert line.startswith(f"file '{bad}': JPEG is truncated") and line.endswith("(in DataLoader worker process 0)")
    assert "expected a complete JPEG/PNG image" in line and "\n" not in line


def test_truncated_jpeg_is_skipped_with_a_logged_count(coco_sample, tmp_path, caplog):
    _coco_copy(coco_sample, tmp_path)
    _truncate(tmp_path / "000000196141.jpg")
    caplog.set_level(logging.WARNING, logger="bapose.data.dataset")
    dm = _coco_dm(tmp_path, "data.on_bad_sample=skip", "data.augmentation.flip_prob=0.0")
    dm.setup("fit")
    assert len(dm.train_dataset) == 4  # a corrupt file is only found when read
    ids = []
    for batch in dm.train_dataloader():
        assert _finite_targets(batch)
        ids += batch["image_id"].tolist()
    # the bad sample was replaced by the next good one: full batches, the bad id never trained on
    assert len(ids) == 4 and 196141 not in ids
    assert dm.train_dataset.num_skipped == 1
    skipped = [r.getMessage() for r in caplog.records if "on_bad_sample='skip': skipped" in r.getMessage()]
    assert len(skipped) == 1 and "skipped 1 bad image(s)" in skipped[0] and "000000196141.jpg" in skipped[0]


# ---------------------------------------------------------------------------------------------------- 3. zero size
def test_empty_image_file_and_zero_declared_size(coco_sample, tmp_path):
    _coco_copy(coco_sample, tmp_path)
    empty = tmp_path / "000000000785.jpg"
    empty.write_bytes(b"")
    dm = _coco_dm(tmp_path)
    dm.setup("validate")
    with pytest.raises(DataError, match=rf"file '{re.escape(str(empty))}': image file is empty \(0 bytes\); "
                                        r"expected a JPEG/PNG image"):
        list(dm.val_dataloader())

    def zero(data):
        data["images"][2]["width"] = 0
        data["images"][2]["height"] = 0

    ann, _ = _coco_copy(coco_sample, tmp_path / "zero", zero)
    with pytest.raises(DataError) as err:
        _coco_dm(tmp_path / "zero").setup("fit")
    assert str(err.value) == (f"file '{ann}', field 'images.width': image id 196141 ('000000196141.jpg') has width 0;"
                              " expected a positive number of pixels")


# ---------------------------------------------------------------------------------------------------- 4. bad json
def test_annotation_file_that_is_not_json_names_file_and_position(tmp_path):
    text = '{"images": [],\n "annotations": [,]}'
    tmp_path.joinpath("ann.json").write_text(text)
    with pytest.raises(json.JSONDecodeError) as parse:
        json.loads(text)
    with pytest.raises(DataError) as err:
        _coco_dm(tmp_path).setup("fit")
    msg = str(err.value)
    assert msg.startswith(f"file '{tmp_path / 'ann.json'}': not valid JSON")
    pos = parse.value
    assert pos.lineno == 2 and f"line 2 column {pos.colno} (char {pos.pos})" in msg
    assert msg.endswith("expected a COCO keypoint json")


# ---------------------------------------------------------------------------------------------------- 5. length
def test_keypoints_of_wrong_length_name_the_annotation_and_3k(coco_sample, tmp_path):
    def cut(data):
        data["annotations"][3]["keypoints"] = data["annotations"][3]["keypoints"][:-3]

    ann, data = _coco_copy(coco_sample, tmp_path, cut)
    with pytest.raises(DataError) as err:
        _coco_dm(tmp_path).setup("fit")
    assert str(err.value) == (f"file '{ann}', annotation id {data['annotations'][3]['id']}, field 'keypoints': "
                              "48 numbers; expected 51 (x, y, v for each of 17 joints)")


# ---------------------------------------------------------------------------------------------------- 6. invisible
IDENTITY_AUG = ["data.augmentation.min_scale=1.0", "data.augmentation.max_scale=1.0",
                "data.augmentation.max_rotation=0.0", "data.augmentation.max_translate=0.0",
                "data.augmentation.flip_prob=0.0"]


def _sample_of(dm, image_id) -> dict[str, Any]:
    """The training sample of one image (through the dataset's own __getitem__)."""
    return dm.train_dataset[dm.train_dataset.ids.index(image_id)]


def test_person_without_visible_keypoints_becomes_an_ignore_region(coco_sample, tmp_path):
    square = [50.0, 50.0, 250.0, 50.0, 250.0, 250.0, 50.0, 250.0]  # 200 x 200 px: ~9 x 9 grid cells at 64 px

    def add_hidden(data, segmentation=(square,)):
        data["annotations"].append({"id": 99, "image_id": 40083, "category_id": 1, "iscrowd": 0, "num_keypoints": 0,
                                    "keypoints": [0] * 51, "area": 40000.0, "bbox": [50, 50, 200, 200],
                                    "segmentation": [list(p) for p in segmentation]})

    _coco_copy(coco_sample, tmp_path, add_hidden)
    dm = _coco_dm(tmp_path, *IDENTITY_AUG)
    dm.setup("fit")
    keypoints, _, mask = dm.train_dataset.annotations(40083)
    assert len(keypoints) == 2  # the two labelled people; the hidden one is not a training person...
    assert mask is not None and mask[50:250, 50:250].all()  # ...but its polygon is ignored
    with_mask = _sample_of(dm, 40083)
    assert _finite_targets(with_mask)
    ignored = int((with_mask["heatmap_weights"] == 0).all(0).sum())  # grid cells ignored in every channel
    assert ignored >= 49

    # the same people without the hidden one's polygon: nothing to mask, still no crash and no NaN
    _coco_copy(coco_sample, tmp_path / "noseg", lambda d: add_hidden(d, segmentation=()))
    dm = _coco_dm(tmp_path / "noseg", *IDENTITY_AUG)
    dm.setup("fit")
    plain = _sample_of(dm, 40083)
    assert _finite_targets(plain) and int((plain["heatmap_weights"] == 0).all(0).sum()) < ignored
    # the labelled people's targets are the same either way: the hidden person added only the ignore region
    torch.testing.assert_close(plain["heatmaps"], with_mask["heatmaps"], rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------- 7. outside
def test_person_outside_the_image_gives_no_center_and_finite_targets(coco_sample, tmp_path):
    def far_away(data):  # image 785 has one person: move every joint 5000 px right and down
        for a in data["annotations"]:
            if a["image_id"] == 785:
                a["keypoints"] = [v + 5000 if i % 3 != 2 else v for i, v in enumerate(a["keypoints"])]

    _coco_copy(coco_sample, tmp_path, far_away)
    dm = _coco_dm(tmp_path, *IDENTITY_AUG)
    dm.setup("fit")
    s = _sample_of(dm, 785)
    assert _finite_targets(s)
    assert float(s["heatmaps"].abs().sum()) == 0.0  # no joint and no center (the center channel is the last)
    assert float(s["offset_weights"].sum()) == 0.0 and float(s["offsets"].abs().sum()) == 0.0

    # after augmentation: a shift far larger than the crop pushes every person out of every sample
    dm = _coco_dm(tmp_path, "data.augmentation.max_translate_px=100000")
    dm.setup("fit")
    loss = BAPoseLoss()
    k = dm.meta.num_keypoints
    for batch in dm.train_dataloader():
        assert _finite_targets(batch)
        assert float(batch["heatmaps"][:, k].sum()) == 0.0 and float(batch["offset_weights"].sum()) == 0.0
        terms = loss(torch.zeros_like(batch["heatmaps"]), torch.zeros_like(batch["offsets"]), batch["heatmaps"],
                     batch["heatmap_weights"], batch["offsets"], batch["offset_weights"])
        assert all(math.isfinite(float(v)) for v in terms.values()) and float(terms["offset"]) == 0.0


# ---------------------------------------------------------------------------------------------------- 8. no people
def test_image_without_people_is_left_out_of_training_kept_and_scored_in_eval(coco_sample, tmp_path, caplog):
    def add_empty(data):
        data["images"].append({**data["images"][0], "id": 1, "file_name": "empty.jpg"})

    ann, data = _coco_copy(coco_sample, tmp_path, add_empty)
    shutil.copy(tmp_path / data["images"][0]["file_name"], tmp_path / "empty.jpg")
    caplog.set_level(logging.INFO, logger="bapose.data.dataset")
    dm = _coco_dm(tmp_path)
    dm.setup("fit")
    assert 1 not in dm.train_dataset.ids and len(dm.train_dataset) == 4 and dm.train_dataset.num_without_people == 1
    assert any(f"file '{ann}': 1 of 5 images have no non-crowd person with labelled keypoints; left out of training "
               "(train_images='labelled')" == r.getMessage() for r in caplog.records)
    assert 1 in dm.val_dataset.ids and len(dm.val_dataset) == 5 and dm.val_dataset.num_without_people == 0
    ids = [i for b in dm.val_dataloader() for i in b["image_id"].tolist()]
    assert sorted(ids) == sorted(i["id"] for i in data["images"])

    # evaluation scores the empty image: a confident person there is a false positive that lowers AP
    people = [a for a in data["annotations"] if a["num_keypoints"] > 0]
    poses = {i: [] for i in ids}
    for a in people:
        kp = np.asarray(a["keypoints"], dtype=np.float64).reshape(-1, 3)
        kp[:, 2] = 1.0
        poses[a["image_id"]].append(kp)
    image_ids = sorted(poses)

    def ap(extra: bool) -> float:
        ev = KeypointEvaluator(ann, dm.meta)
        p = {i: list(v) for i, v in poses.items()}
        s = {i: [1.0] * len(v) for i, v in poses.items()}
        if extra:
            p[1].append(np.asarray(people[0]["keypoints"], dtype=np.float64).reshape(-1, 3))
            s[1].append(2.0)
        ev.update(image_ids, [np.asarray(p[i]).reshape(-1, dm.meta.num_keypoints, 3) for i in image_ids],
                  [np.asarray(s[i]) for i in image_ids])
        return ev.compute()["AP"]

    assert ap(extra=False) == pytest.approx(1.0)
    assert ap(extra=True) < 0.99


# ---------------------------------------------------------------------------------------------------- 9. config key
def test_unknown_config_key_is_one_clear_line_naming_it(tmp_path):
    done = _run_cli("data.batchsize=4", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert done.returncode == 1
    out = done.stdout + done.stderr
    assert _first_line(out) == "Could not override 'data.batchsize'."
    assert "Key 'batchsize' is not in struct" in out and "Traceback" not in out
    assert not (tmp_path / "run").exists()  # rejected while composing, before a run folder exists


# ---------------------------------------------------------------------------------------------------- 10. size
def test_input_size_not_multiple_of_32_fails_before_training(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("BAPOSE_CACHE", str(cache))
    cfg = compose_config([*TINY, "data.input_size=100"], output_dir=tmp_path / "out")
    with pytest.raises(ConfigError) as err:
        train(cfg)
    assert str(err.value) == ("data field 'input_size' is 100; expected a positive multiple of 32 (data.size_divisor; "
                              "HRNet downsamples by 32), e.g. 96")
    # at build time: no data generated, no run files, no checkpoint
    assert not cache.exists() and not (tmp_path / "out").exists()

    # what the user sees: that line, no traceback
    done = _run_cli(*TINY, "data.input_size=100", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == f"bapose-train: {err.value}"
    # and the run folder says so (sweep reports list failed jobs from it)
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["status"] == "failed" and status["error"] == f"bapose-train: {err.value}"
    assert status["overrides"][-1] == "data.input_size=100" and status["error_type"] == "SystemExit"


# ---------------------------------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def w18s_ckpt(tmp_path_factory) -> Path:
    """A bapose_w18s (K=17) checkpoint as ``BAPoseModule`` writes it: state_dict + ``bapose`` metadata."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("w18s")
    cfg = compose_config(TINY, output_dir=out)
    torch.manual_seed(0)
    module = build_module(cfg, codec=BAPoseCodec(SIZE))
    path = out / "w18s.ckpt"
    torch.save({"state_dict": module.state_dict(), "bapose": module.checkpoint_metadata(), "epoch": 0,
                "global_step": 0, "pytorch-lightning_version": L.__version__}, path)
    return path


def test_truncated_checkpoint_names_the_file(w18s_ckpt, tmp_path):
    cut = tmp_path / "cut.ckpt"
    data = w18s_ckpt.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as err:
        train(compose_config([*TINY, f"ckpt_path={cut}"], output_dir=tmp_path / "out"))
    msg = str(err.value)
    assert msg.startswith(f"checkpoint file '{cut}' ({len(data) // 2} bytes) is truncated or corrupt")
    assert msg.endswith("expected a complete torch.save zip archive")
    assert not list((tmp_path / "out").rglob("*.ckpt"))


def test_checkpoint_of_another_architecture_or_k_names_what_differs(w18s_ckpt, tmp_path):
    with pytest.raises(CheckpointError) as err:
        train(compose_config([*TINY, "model=dekr_w18s", f"ckpt_path={w18s_ckpt}"], output_dir=tmp_path / "a"))
    msg = str(err.value)
    assert msg.startswith(f"checkpoint '{w18s_ckpt}' does not fit this model")
    assert "model config differs: model.decoder: checkpoint {'dilations': [1, 6, 12, 18]" in msg
    assert "vs this run None" in msg and re.search(r"\d+ unexpected keys: net\.decoder\.", msg)

    k14 = ["data.synthetic.keypoint_set=crowdpose", "data.num_keypoints=14"]
    with pytest.raises(CheckpointError) as err:
        train(compose_config([*TINY, *k14, f"ckpt_path={w18s_ckpt}"], output_dir=tmp_path / "b"))
    msg = str(err.value)
    assert f"checkpoint '{w18s_ckpt}'" in msg and "field 'bapose.num_keypoints' is 17 but the model expects 14" in msg
    assert "model.num_keypoints: checkpoint 17 vs this run 14" in msg
    assert "net.heatmap_head.final.weight: checkpoint (18, 32, 1, 1) vs model (15, 32, 1, 1)" in msg


# ---------------------------------------------------------------------------------------------------- 13. NaN
def _poison_loss(monkeypatch, nan_calls) -> list[int]:
    """Make BAPoseLoss return NaN on the calls in ``nan_calls`` (a set, or "all"); returns the call log."""
    real = BAPoseLoss.forward
    calls: list[int] = []

    def forward(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        n = len(calls)
        calls.append(n)
        if nan_calls == "all" or n in nan_calls:
            # NaN that would flow into every gradient if backward ran
            out = {k: v * float("nan") for k, v in out.items()}
        return out

    monkeypatch.setattr(BAPoseLoss, "forward", forward)
    return calls


def _all_finite(state: dict) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in state.values() if torch.is_tensor(v) and v.is_floating_point())


def test_nan_loss_is_skipped_and_counted_then_stops_the_run(tmp_path, monkeypatch):
    every_step = "callbacks.last_checkpoint.every_n_train_steps=1"
    _poison_loss(monkeypatch, {0})
    metrics = train(compose_config([*TINY, every_step], output_dir=tmp_path / "skip"))
    # Lightning counts the skipped step (no backward, no update) in global_step: 2 batches, 2 steps, 1 skipped
    assert metrics["nonfinite_steps"] == 1 and metrics["global_step"] == 2
    last = load_checkpoint_safely(tmp_path / "skip" / "checkpoints" / "last.ckpt")
    assert last["bapose_counters"]["nonfinite_steps"] == 1 and _all_finite(last["state_dict"])

    calls = _poison_loss(monkeypatch, "all")
    cfg = compose_config([*TINY, every_step, "module.max_nonfinite_steps=2", "trainer.max_epochs=3"],
                         output_dir=tmp_path / "stop")
    with pytest.raises(NonFiniteLossError) as err:
        train(cfg)
    assert len(calls) == 2  # stopped at the second NaN in a row, not at the end of the run
    assert str(err.value).startswith("training stopped: the loss was non-finite for 2 optimizer steps in a row "
                                     "(module.max_nonfinite_steps=2; epoch 0")
    # the skipped steps never reached the weights: whatever was saved is finite and holds the initial weights
    L.seed_everything(cfg.seed)  # as train() does before it builds the net: the same initial weights
    init = build_module(cfg, codec=None).state_dict()
    saved = sorted((tmp_path / "stop" / "checkpoints").glob("*.ckpt"))
    assert [p.name for p in saved] == ["last.ckpt"]  # written after the first (skipped) step, none after the stop
    ckpt = load_checkpoint_safely(saved[0])
    assert ckpt["global_step"] == 1 and ckpt["bapose_counters"]["nonfinite_steps"] == 1
    assert _all_finite(ckpt["state_dict"])
    for key in ("net.heatmap_head.final.weight", "net.offset_head.transition.0.weight"):
        torch.testing.assert_close(ckpt["state_dict"][key], init[key], rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------- 15. pickle
class _Bomb:
    """Unpickling this runs code: it writes ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


def test_pickle_bomb_checkpoint_is_refused_without_running_it(tmp_path):
    armed = tmp_path / "armed.ckpt"
    torch.save({"state_dict": {}, "x": _Bomb(tmp_path / "control")}, armed)
    torch.load(armed, weights_only=False)  # the control: a plain pickle load does run it
    assert (tmp_path / "control").read_text() == "pwned"

    marker = tmp_path / "marker"
    bomb = tmp_path / "bomb.ckpt"
    torch.save({"state_dict": {}, "x": _Bomb(marker)}, bomb)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint_safely(bomb)
    assert str(err.value).startswith(f"checkpoint file '{bomb}' holds objects outside the weights-only allow-list")
    assert "(unsupported global 'exec')" in str(err.value) and not marker.exists()
    # and the path a user resumes through (Lightning -> AtomicCheckpointIO)
    with pytest.raises(CheckpointError, match=re.escape(f"checkpoint file '{bomb}' holds objects outside")):
        train(compose_config([*TINY, f"ckpt_path={bomb}"], output_dir=tmp_path / "out"))
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------------- 14. SIGKILL
STEPS_PER_EPOCH = 8
SHRUNK_DEMO = [
    "experiment=demo", "data.input_size=64", "data.synthetic.image_size=64",
    f"data.synthetic.num_train={2 * STEPS_PER_EPOCH}", "data.synthetic.num_val=2", "data.batch_size=2",
    "data.val_batch_size=2", "data.num_workers=0", "data.persistent_workers=false", "data.pin_memory=false",
    "trainer.max_epochs=2", "trainer.limit_val_batches=1", "logger=[csv]", "draw_images=0",
    "callbacks.last_checkpoint.every_n_train_steps=1",
    # the LR moves every step, so the restored scheduler position shows in the LR itself
    "module.scheduler_interval=step", "scheduler=multistep", "scheduler.milestones=[3,6,9]", "optimizer.lr=0.002",
]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_requeue_with_the_same_slurm_job_id_resumes(tmp_path):
    """A job killed after its first checkpoint and started again with the same command and SLURM_JOB_ID (what a
    requeue does) finds its run folder, resumes from last.ckpt automatically and ends at the uninterrupted schedule's
    last step."""
    env = {**{k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR" and not k.startswith("SLURM_")},
           "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "BAPOSE_CACHE": str(tmp_path / "cache"),
           "BAPOSE_ROOT": str(tmp_path), "SLURM_JOB_ID": "4242"}
    cmd = [str(TRAIN_CLI), *SHRUNK_DEMO]  # no run folder given: the SLURM job names it
    runs = tmp_path / "outputs" / "train" / "runs"
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, env=env)
        try:
            deadline = time.monotonic() + 90
            seen = -1
            while proc.poll() is None and time.monotonic() < deadline:
                # saves are atomic renames: last.ckpt is either absent or a whole checkpoint
                found = sorted(runs.glob("slurm-4242-*/checkpoints/last.ckpt"))
                if found:
                    seen = load_checkpoint_safely(found[0])["global_step"]
                    if seen >= 2:
                        break
                time.sleep(0.05)
            assert proc.poll() is None, f"the run ended (rc {proc.returncode}) before it could be killed at step 2"
            assert seen >= 2, "no last.ckpt with global_step >= 2 in time"
            proc.send_signal(signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    (run,) = runs.iterdir()
    last = run / "checkpoints" / "last.ckpt"
    # a killed job cannot write its end: status.json still says running (a report lists it as unfinished)
    assert json.loads((run / "status.json").read_text())["status"] == "running"
    ckpt = load_checkpoint_safely(last)  # right after the kill: whole and loadable
    step = ckpt["global_step"]
    assert 2 <= step < 2 * STEPS_PER_EPOCH and _all_finite(ckpt["state_dict"])
    sched = ckpt["lr_schedulers"][0]
    lr = ckpt["optimizer_states"][0]["param_groups"][0]["lr"]
    assert sched["last_epoch"] == step  # a per-step scheduler: its position is the step

    # the requeue: the very same command and SLURM_JOB_ID, no ckpt_path
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert [p.name for p in runs.iterdir()] == [run.name]  # the same folder, no second run
    m = re.search(r"resumed from '([^']+)': epoch (\d+), global step (\d+), lr (\S+), scheduler last_epoch (\d+)", out)
    assert m, out[-3000:]
    assert Path(m[1]) == last and int(m[2]) == ckpt["epoch"] == step // STEPS_PER_EPOCH
    assert int(m[3]) == step  # not 0
    assert int(m[5]) == sched["last_epoch"] and float(m[4]) == pytest.approx(lr, rel=1e-5)
    # the LR in the optimizer is the LR used: the step schedule times the demo's 60-step linear warm-up
    assert lr == pytest.approx(2e-3 * 0.1 ** sum(step >= s for s in (3, 6, 9)) * min(1.0, (step + 1) / 60))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["global_step"] == 2 * STEPS_PER_EPOCH and metrics["epoch"] == 2
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "finished" and status["metrics"]["global_step"] == 2 * STEPS_PER_EPOCH
    final = load_checkpoint_safely(last)
    assert final["global_step"] == 2 * STEPS_PER_EPOCH
    assert final["lr_schedulers"][0]["last_epoch"] == 2 * STEPS_PER_EPOCH


@pytest.mark.slow
def test_slurm_requeue_signal_saves_hpc_checkpoint_requeues_and_the_requeued_job_resumes_from_it(tmp_path):
    """Under SLURM (`--signal=SIGUSR1@120`, README "Scaling out") Lightning's SLURMEnvironment saves an hpc checkpoint
    into the run folder at the signal and calls `scontrol requeue <job id>`; SLURM then kills the job and starts the
    same command again. Here SLURM is the environment variables srun sets for one task, `scontrol` a script on PATH
    that records its arguments, and the kill a SIGKILL: the requeued job finds its folder and resumes from the hpc
    checkpoint (the state at the signal, not the epoch-end last.ckpt), ending at the uninterrupted schedule's last
    step."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    record = tmp_path / "scontrol.args"
    (fake_bin / "scontrol").write_text(f"#!/bin/sh\necho \"$@\" >> '{record}'\n")
    (fake_bin / "scontrol").chmod(0o755)
    env = {**{k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR" and not k.startswith("SLURM_")},
           "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "BAPOSE_CACHE": str(tmp_path / "cache"),
           "BAPOSE_ROOT": str(tmp_path), "PATH": f"{fake_bin}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")])),
           # what srun sets for a one-task job (Lightning's SLURMEnvironment.detect() needs NTASKS and a job name)
           "SLURM_JOB_ID": "5151", "SLURM_JOB_NAME": "bapose", "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1",
           "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NNODES": "1",
           "SLURM_NODELIST": "localhost"}
    # last.ckpt only at epoch ends here: the hpc checkpoint is the most recent state when the signal comes mid-epoch
    # (the test watches the global step through a spy callback: the signal goes in strictly after the epoch end)
    steps = tmp_path / "steps.txt"
    # the second epoch slowed down (0.4 s a step): the kill below comes before that epoch's end writes last.ckpt
    cmd = [str(TRAIN_CLI), *[o for o in SHRUNK_DEMO if not o.startswith("callbacks.last_checkpoint")],
           "+callbacks.steps._target_=ddp_spies.StepFile", f"+callbacks.steps.path={steps}",
           f"+callbacks.steps.slow_after={STEPS_PER_EPOCH}", "+callbacks.steps.slow_s=0.4"]
    runs = tmp_path / "outputs" / "train" / "runs"
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, env=env)
        try:
            deadline = time.monotonic() + 120
            hpc: list[Path] = []
            signalled = False
            while proc.poll() is None and time.monotonic() < deadline:
                step = int(steps.read_text() or -1) if steps.is_file() else -1
                if not signalled and step > STEPS_PER_EPOCH:
                    proc.send_signal(signal.SIGUSR1)  # in the second epoch (its first steps)
                    signalled = True
                hpc = sorted(runs.glob("slurm-5151-*/hpc_ckpt_*.ckpt"))
                if hpc and record.exists():
                    break
                time.sleep(0.05)
            first = (tmp_path / "first.log").read_text(errors="replace")
            assert proc.poll() is None, f"the run ended (rc {proc.returncode}) before the requeue: {first[-2000:]}"
            assert hpc and record.exists(), first[-3000:]
            time.sleep(0.5)  # let Lightning finish the call; then SLURM kills the job for its requeue
            proc.send_signal(signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    assert record.read_text().split() == ["requeue", "5151"]
    (run,) = runs.iterdir()
    saved = load_checkpoint_safely(hpc[-1])
    step = saved["global_step"]
    last_epoch_end = load_checkpoint_safely(run / "checkpoints" / "last.ckpt")["global_step"]
    assert STEPS_PER_EPOCH <= step < 2 * STEPS_PER_EPOCH and last_epoch_end == STEPS_PER_EPOCH

    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert [p.name for p in runs.iterdir()] == [run.name]
    assert "resuming from Lightning's SLURM requeue checkpoint" in out
    m = re.search(r"resumed from '([^']+)': epoch (\d+), global step (\d+)", out)
    assert m and Path(m[1]) == hpc[-1] and int(m[3]) == step, out[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["global_step"] == 2 * STEPS_PER_EPOCH and metrics["epoch"] == 2
