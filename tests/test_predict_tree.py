"""bapose-predict over a dataset tree: recursive walk, relative paths kept (same-named files never overwrite each
other), one summary line naming every skipped file, globs, ids from an annotation file by relative path, and poses
that do not depend on which other images share the batch (issue 13)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from bapose import load_model
from bapose.cli.predict import predict, predict_batch
from bapose.build import compose_config
from bapose.data.transforms import EvalTransform
from bapose.predictor import predict as run_inference
from bapose.predictor import same_size_batches, to_original

from test_predict import make_checkpoint  # the same tiny real checkpoint the other predict tests use

SIZES = {"top.jpg": (150, 200), "a/x.jpg": (150, 200), "b/x.jpg": (120, 260), "b/c/deep.png": (200, 150)}


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt")


@pytest.fixture()
def tree(tmp_path: Path, coco_sample: Path) -> Path:
    """A dataset-like tree: images in subfolders, two files named x.jpg, non-images, a corrupt image, a hidden
    folder."""
    root = tmp_path / "data"
    photo = cv2.imread(str(coco_sample / "000000000785.jpg"))
    for i, (name, (h, w)) in enumerate(SIZES.items()):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / name), cv2.resize(np.roll(photo, 40 * i, axis=1), (w, h)))
    (root / "notes.txt").write_text("not an image")
    (root / "a" / "clip.mp4").write_bytes(b"\x00" * 10)
    (root / "b" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    (root / ".cache").mkdir()
    cv2.imwrite(str(root / ".cache" / "thumb.jpg"), photo[:50, :50])
    return root


def _cfg(out: Path, *overrides: str):
    return compose_config(["num_threads=1", "progress=false", "codec.center_threshold=-1.0", *overrides],
                          config_name="predict", output_dir=out)


def test_a_tree_is_walked_and_drawn_once_per_image_keeping_its_layout(tmp_path, tree, tiny_ckpt):
    out = tmp_path / "out"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = predict(_cfg(out, f"ckpt_path={tiny_ckpt}", f"input={tree}", "batch_size=2"))
    assert summary["num_images"] == 4
    drawn = sorted(Path(p).relative_to(out / "images").as_posix() for p in summary["drawn"])
    assert drawn == sorted(SIZES)                              # every image once, the tree kept, no overwrite
    for name, (h, w) in SIZES.items():
        assert cv2.imread(str(out / "images" / name)).shape[:2] == (h, w)
    # one summary line names every skipped file (relative path and why); the hidden folder is not an input
    lines = [str(w.message) for w in caught if "skipped" in str(w.message)]
    assert len(lines) == 1
    for name in ("notes.txt", "a/clip.mp4", "b/broken.jpg"):
        assert name in lines[0]
    assert "thumb.jpg" not in lines[0] and "a video" in lines[0]
    assert sorted(summary["skipped"]) == ["a/clip.mp4", "b/broken.jpg", "notes.txt"]
    index = json.loads((out / "images.json").read_text())["images"]
    assert [i["file_name"] for i in index] == sorted(SIZES) and [i["id"] for i in index] == [0, 1, 2, 3]
    assert {r["image_id"] for r in json.loads((out / "results.json").read_text())} <= {0, 1, 2, 3}


def test_top_level_only_and_globs(tmp_path, tree, tiny_ckpt):
    with pytest.warns(UserWarning, match=r"skipped 1 file\(s\).*notes\.txt"):
        flat = predict(_cfg(tmp_path / "flat", f"ckpt_path={tiny_ckpt}", f"input={tree}", "recursive=false",
                            "draw=false"))
    assert flat["num_images"] == 1 and flat["skipped"] == ["notes.txt"]
    globbed = predict(_cfg(tmp_path / "glob", f"ckpt_path={tiny_ckpt}", f"input={tree}/**/x.jpg"))
    assert sorted(Path(p).relative_to(tmp_path / "glob" / "images").as_posix() for p in globbed["drawn"]) == \
        ["a/x.jpg", "b/x.jpg"]
    with pytest.raises(Exception, match="matches no image"):
        predict(_cfg(tmp_path / "none", f"ckpt_path={tiny_ckpt}", f"input={tree}/**/*.gif"))


def test_ann_file_ids_by_relative_path(tmp_path, tree, tiny_ckpt):
    """A json whose file_name entries carry subfolders gives each same-named file its own id."""
    images = [{"id": 10 + i, "file_name": f"data/{name}", "width": w, "height": h}
              for i, (name, (h, w)) in enumerate(SIZES.items()) if name != "top.jpg"]
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": images, "annotations": [], "categories": [
        {"id": 1, "name": "person", "keypoints": list(load_model(tiny_ckpt).meta.keypoints)}]}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = predict(_cfg(tmp_path / "out", f"ckpt_path={tiny_ckpt}", f"input={tree}", f"ann_file={ann}",
                               "draw=false"))
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert {r["image_id"] for r in results} == {11, 12, 13}  # a/x.jpg and b/x.jpg apart
    assert "top.jpg" in summary["skipped"] and any("top.jpg (not in field 'images'" in str(w.message)
                                                   for w in caught)


def test_the_same_image_gives_the_same_poses_whatever_its_batch(coco_sample, tiny_ckpt):
    model = load_model(tiny_ckpt, codec={"center_threshold": -1.0})
    photo = cv2.cvtColor(cv2.imread(str(coco_sample / "000000000785.jpg")), cv2.COLOR_BGR2RGB)
    image = cv2.resize(photo, (200, 150))
    same_size = cv2.resize(np.ascontiguousarray(photo[::-1]), (200, 150))
    larger = cv2.resize(photo, (300, 140))                  # pads to a wider input than `image`
    alone_poses, alone_scores = predict_batch(model, [image])[0]
    for batch, at in (([larger, same_size, image, same_size], 2), ([image, larger], 0), ([same_size, image], 1)):
        poses, scores = predict_batch(model, batch)[at]
        assert poses.shape == alone_poses.shape and len(poses) > 0
        # batched convolutions may round differently from a batch of one: equal to float noise, far below a pixel
        np.testing.assert_allclose(poses, alone_poses, atol=1e-3)
        np.testing.assert_allclose(scores, alone_scores, atol=1e-5)
    # what this guards against: padding `image` to its larger neighbour (the old batching) moves its people
    transform = EvalTransform(model.input_size)
    small, big = transform(image), transform(larger)
    hp, wp = (max(small["image"].shape[i], big["image"].shape[i]) for i in (0, 1))
    padded = np.zeros((1, hp, wp, 3), np.uint8)
    padded[0, : small["image"].shape[0], : small["image"].shape[1]] = small["image"]
    r = run_inference(model.net, torch.from_numpy(padded).permute(0, 3, 1, 2).float() / 255, model.codec)[0]
    old = to_original(r.poses.numpy(), small["input_to_orig"])
    n = min(len(old), len(alone_poses))
    assert len(old) != len(alone_poses) or np.abs(old[:n] - alone_poses[:n]).max() > 1.0


def test_batches_group_equal_sizes_and_bound_what_waits():
    items = [(i, s) for i, s in enumerate("aabcaabbbcca")]
    batches = list(same_size_batches(iter(items), 2, key=lambda f: f[1]))
    assert sorted(i for b in batches for i, _ in b) == list(range(len(items)))  # each once
    assert all(len({s for _, s in b}) == 1 and len(b) <= 2 for b in batches)  # one size per batch
    many = [(i, i % 50) for i in range(200)]  # 50 sizes, never a full batch of 3 early: bounded waiting
    seen, waiting = 0, []
    for b in same_size_batches(iter(many), 3, key=lambda f: f[1]):
        seen += len(b)
        waiting.append(b[-1][0] + 1 - seen)
    assert seen == 200 and max(waiting) <= 4 * 3 + 1
