"""bapose-predict on real COCO sample images: drawings, a results json bapose-score accepts, geometry back to
original pixels, video, and the bad inputs (non-image files, corrupt images, checkpoints of another model or K)."""

from __future__ import annotations

import argparse
import json
import shutil
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from bapose import LoadedModel, load_model  # the public loader (bapose.loading)
from bapose.cli.predict import predict, predict_batch
from bapose.cli.score import main as score_main
from bapose.build import build_module, compose_config
from bapose.codecs import BAPoseCodec
from bapose.data.metadata import DatasetMeta
from bapose.data.transforms import eval_resize_matrix, invert_affine, apply_affine
from bapose.errors import CheckpointError
from bapose.checkpoints.io import AtomicCheckpointIO


def make_checkpoint(path: Path, model: str = "bapose_w18s", input_size: int = 128) -> Path:
    """A freshly initialised module saved through the real checkpoint code (on_save_checkpoint + AtomicCheckpointIO)."""
    torch.manual_seed(0)                              # the same untrained weights every run
    cfg = compose_config([f"model={model}", f"data.input_size={input_size}"])
    module = build_module(cfg, codec=BAPoseCodec(input_size=input_size))
    module.meta = DatasetMeta.coco()
    ckpt = {"state_dict": module.state_dict(), "epoch": 0, "global_step": 0}
    module.on_save_checkpoint(ckpt)
    AtomicCheckpointIO().save_checkpoint(ckpt, path)
    return path


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt")


def _cfg(out: Path, *overrides: str):
    # center_threshold=-1: an untrained net has no confident centers; keep the top-30 so results are not empty
    return compose_config(["num_threads=1", "progress=false", "codec.center_threshold=-1.0", *overrides],
                          config_name="predict", output_dir=out)


def test_folder_gives_drawings_and_a_json_bapose_score_accepts(tmp_path, coco_sample, tiny_ckpt, capsys):
    folder = tmp_path / "in"
    shutil.copytree(coco_sample, folder)              # 4 jpgs + 2 json files (not images)
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    gt_file = coco_sample / "test_coco.json"
    out = tmp_path / "out"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = predict(_cfg(out, f"ckpt_path={tiny_ckpt}", f"input={folder}", f"ann_file={gt_file}",
                               "batch_size=3"))
    messages = " ".join(str(w.message) for w in caught)
    for name in ("notes.txt", "test_coco.json", "example_preds.json", "broken.jpg"):
        assert name in messages                       # each skipped file named
    assert summary["num_images"] == 4 and len(summary["drawn"]) == 4

    gt = json.loads(gt_file.read_text())
    sizes = {im["file_name"]: (im["height"], im["width"]) for im in gt["images"]}
    for p in map(Path, summary["drawn"]):
        drawn = cv2.imread(str(p))
        original = cv2.imread(str(coco_sample / p.name))
        assert drawn.shape[:2] == sizes[p.name] == original.shape[:2]

    results = json.loads((out / "results.json").read_text())
    # an untrained net may put all of an image's top-30 centers in the batch padding (then dropped): ids are a subset
    ids = {r["image_id"] for r in results}
    assert ids <= {im["id"] for im in gt["images"]} and len(ids) >= 2
    assert all(len(r["keypoints"]) == 17 * 3 for r in results)
    # poses are in original pixels: the untrained net's offsets are ~0, so joints sit near their center, and people
    # regressed into the batch padding (right / bottom of the smaller images) were dropped
    wh = {im["id"]: (im["width"], im["height"]) for im in gt["images"]}
    for r in results:
        kp = np.asarray(r["keypoints"]).reshape(17, 3)
        w, h = wh[r["image_id"]]
        mean = kp[:, :2].mean(0)
        assert -5 < mean[0] < w + 5 and -5 < mean[1] < h + 5
    per_image = np.bincount([r["image_id"] for r in results])
    assert per_image.max() <= 30                      # codec.max_people
    capsys.readouterr()
    assert score_main([str(gt_file), str(out / "results.json"), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert 0.0 <= stats["AP"] <= 1.0 and 0.0 <= stats["AR"] <= 1.0


class _OracleNet(nn.Module):
    """Returns the codec's targets of known people as its 'prediction' (ignores the pixels)."""

    stride, size_divisor, num_keypoints = 4, 32, 17

    def __init__(self, heatmaps: np.ndarray, offsets: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("h", torch.from_numpy(heatmaps)[None])
        self.register_buffer("o", torch.from_numpy(offsets)[None])
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, images):
        return self.h.expand(images.shape[0], -1, -1, -1), self.o.expand(images.shape[0], -1, -1, -1)


def test_poses_come_back_in_original_pixels(coco_sample):
    """Oracle maps made from the ground truth at the eval resize decode to the ground truth in original pixels."""
    gt = json.loads((coco_sample / "test_coco.json").read_text())
    img = next(i for i in gt["images"] if i["file_name"] == "000000197388.jpg")
    anns = [a for a in gt["annotations"] if a["image_id"] == img["id"] and a["num_keypoints"] > 0]
    kp = np.asarray([a["keypoints"] for a in anns], np.float64).reshape(-1, 17, 3)
    size = 256
    (rh, rw), (ph, pw), to_orig = eval_resize_matrix(img["height"], img["width"], size)
    kp_in = kp.copy()
    kp_in[..., :2] = apply_affine(kp[..., :2], invert_affine(to_orig))
    scale2 = (rh / img["height"]) * (rw / img["width"])
    codec = BAPoseCodec(input_size=size)
    t = codec.encode(kp_in, np.asarray([a["area"] for a in anns]) * scale2, image_size=(ph, pw))
    model = LoadedModel(net=_OracleNet(t["heatmaps"], t["offsets"]), codec=codec, meta=DatasetMeta.coco(),
                        input_size=size, path=Path("oracle"))
    image = cv2.cvtColor(cv2.imread(str(coco_sample / img["file_name"])), cv2.COLOR_BGR2RGB)
    (poses, scores), = predict_batch(model, [image])
    assert len(poses) >= 4                            # 5 people; the smallest may get no center (area rule)
    labelled = kp[..., 2] > 0
    errors = []
    for p in poses:                                   # each found person matches a ground-truth one to < 1 px
        d = np.linalg.norm(kp[..., :2] - p[None, :, :2], axis=-1)
        d = np.where(labelled, d, np.nan)
        errors.append(np.nanmean(d, axis=1).min())
    assert max(errors) < 1.0, errors


def test_video_and_running_ids(tmp_path, coco_sample, tiny_ckpt):
    frame = cv2.resize(cv2.imread(str(coco_sample / "000000000785.jpg")), (160, 112))
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter.fourcc(*"MJPG"), 5.0, (160, 112))
    assert writer.isOpened()
    for i in range(3):
        writer.write(np.roll(frame, 10 * i, axis=1))
    writer.release()
    out = tmp_path / "out"
    summary = predict(_cfg(out, f"ckpt_path={tiny_ckpt}", f"input={video}", "batch_size=2", "device=cpu"))
    assert summary["num_images"] == 3 and summary["video"] is not None
    cap = cv2.VideoCapture(summary["video"])
    n, shape = 0, None
    while True:
        ok, f = cap.read()
        if not ok:
            break
        n, shape = n + 1, f.shape
    cap.release()
    assert n == 3 and shape[:2] == (112, 160)
    index = json.loads((out / "images.json").read_text())["images"]
    assert [i["file_name"] for i in index] == ["clip.avi#0", "clip.avi#1", "clip.avi#2"]
    assert {r["image_id"] for r in json.loads((out / "results.json").read_text())} == {0, 1, 2}


def test_checkpoint_of_another_k_or_model_is_refused(tmp_path, crowdpose_sample, tiny_ckpt):
    # another K: a 17-joint checkpoint asked to predict CrowdPose's 14 joints
    with pytest.raises(CheckpointError, match=r"K=17.*crowdpose.*14"):
        load_model(tiny_ckpt, ann_file=str(crowdpose_sample / "test_crowdpose.json"))
    # another model: a BAPose checkpoint loaded as the DEKR baseline names the keys that differ
    dekr = compose_config(["model=dekr_w18s"]).model
    with pytest.raises(CheckpointError, match=r"unexpected keys: decoder\."):
        load_model(tiny_ckpt, model=dekr, model_from_checkpoint=False)
    # weights_only=True: a checkpoint holding an arbitrary object is refused, not unpickled
    ckpt = torch.load(tiny_ckpt, weights_only=True)
    ckpt["extra"] = argparse.Namespace(x=1)
    torch.save(ckpt, tmp_path / "unsafe.ckpt")
    with pytest.raises(CheckpointError, match="allow-list"):
        load_model(tmp_path / "unsafe.ckpt")
    # the checkpoint's own config rebuilds it: K, meta and input size come from it
    model = load_model(tiny_ckpt)
    assert model.meta.name == "coco" and model.input_size == 128 and model.net.num_keypoints == 17
