"""CocoKeypointDataset on the real sample data: annotations, ignore masks, targets, and every bad-input message."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from bapose.codecs import BAPoseCodec
from bapose.data.dataset import CocoKeypointDataset, read_image
from bapose.data.metadata import DatasetMeta
from bapose.data.transforms import (AffineParams, EvalTransform, TrainTransform, apply_affine, invert_affine,
                                   train_affine_matrix)
from bapose.errors import DataError

SIZE = 128


def _coco(coco_sample: Path) -> tuple[Path, Path]:
    return coco_sample / "test_coco.json", coco_sample


def _copy_sample(src: Path, dst: Path, json_name: str) -> dict:
    for f in src.glob("*.jpg"):
        shutil.copy(f, dst / f.name)
    return json.loads((src / json_name).read_text())


def test_coco_sample_annotations_and_meta(coco_sample: Path) -> None:
    ann, images = _coco(coco_sample)
    ds = CocoKeypointDataset(ann, images, codec=BAPoseCodec(SIZE), train=True, input_size=SIZE)
    assert ds.meta.name == "coco" and ds.meta.num_keypoints == 17
    assert len(ds) == 4  # every sample image shows a person with labelled keypoints
    kp, areas, mask = ds.annotations(40083)
    # 3 annotations: 2 with keypoints, id 1202706 has num_keypoints 0 -> only in the ignore mask
    assert kp.shape == (2, 17, 3) and areas.tolist() == pytest.approx([11025.219, 10171.9544])
    info = next(i for i in json.loads(ann.read_text())["images"] if i["id"] == 40083)
    assert mask is not None and mask.shape == (info["height"], info["width"])
    assert mask.sum() == pytest.approx(491.2669, rel=0.15)  # the polygon's area, rasterised
    ys, xs = np.nonzero(mask)
    assert 275 <= xs.min() and xs.max() <= 286 and 126 <= ys.min() and ys.max() <= 195  # inside its bbox
    kp785, _, mask785 = ds.annotations(785)
    assert kp785.shape == (1, 17, 3) and mask785 is None


def test_crowdpose_json_without_area_uses_bbox_area(crowdpose_sample: Path) -> None:
    ds = CocoKeypointDataset(crowdpose_sample / "test_crowdpose.json", crowdpose_sample,
                             codec=BAPoseCodec(SIZE), train=True, input_size=SIZE)
    assert ds.meta.name == "crowdpose" and ds.meta.num_keypoints == 14
    kp, areas, mask = ds.annotations(106848)
    assert kp.shape == (2, 14, 3)
    assert areas.tolist() == pytest.approx([273.15 * 352.42, 244.5 * 349.72], rel=1e-5)
    assert mask is None  # no segmentation in CrowdPose: nothing to rasterise (as DEKR)
    sample = ds[0]
    assert sample["heatmaps"].shape == (15, SIZE // 4, SIZE // 4)
    assert sample["offsets"].shape == (28, SIZE // 4, SIZE // 4)


def test_training_sample_shapes_and_targets_follow_keypoints(coco_sample: Path) -> None:
    ann, images = _coco(coco_sample)
    codec = BAPoseCodec(SIZE)
    ds = CocoKeypointDataset(ann, images, codec=codec, train=True, input_size=SIZE)
    torch.manual_seed(0)
    s = ds[ds.ids.index(785)]
    assert s["image"].dtype == torch.uint8 and s["image"].shape == (3, SIZE, SIZE)
    assert s["heatmaps"].shape == s["heatmap_weights"].shape == (18, 32, 32)
    assert s["offsets"].shape == (34, 32, 32) and s["offset_weights"].shape[1:] == (32, 32)
    assert all(s[k].dtype == torch.float32 for k in ("heatmaps", "heatmap_weights", "offsets", "offset_weights"))
    assert s["image_id"] == 785
    # a deterministic, unaugmented view: the heatmap peaks sit on the transformed keypoints
    ds.transform = TrainTransform(SIZE, ds.meta.flip_index)
    fixed = AffineParams(scale=1.0, rotation=0.0)
    kp, areas, mask = ds.annotations(785)
    out = ds.transform(read_image(images / "000000000785.jpg"), kp, areas, mask, params=fixed)
    targets = codec.encode(out["keypoints"], out["areas"], out["ignore_mask"])
    vis = (out["keypoints"][0, :, 2] > 0) & (out["keypoints"][0, :, :2] >= 0).all(-1) & \
          (out["keypoints"][0, :, :2] < SIZE).all(-1)
    for k in np.nonzero(vis)[0]:
        hm = targets["heatmaps"][k]
        gy, gx = np.unravel_index(hm.argmax(), hm.shape)
        expected = codec.to_grid(out["keypoints"][0, k, :2])
        assert abs(gx - expected[0]) <= 1 and abs(gy - expected[1]) <= 1


def test_crowd_region_gets_zero_heatmap_weight(coco_sample: Path, tmp_path: Path) -> None:
    """The sample has no iscrowd annotation: add an RLE crowd box and check the encoded weights vanish there."""
    from pycocotools import mask as mask_utils

    data = _copy_sample(coco_sample, tmp_path, "test_coco.json")
    img = next(i for i in data["images"] if i["id"] == 785)
    h, w = img["height"], img["width"]
    crowd = np.zeros((h, w), np.uint8, order="F")
    crowd[50:250, 20:200] = 1
    rle = mask_utils.encode(crowd)
    rle["counts"] = rle["counts"].decode("ascii")
    data["annotations"].append({"id": 9001, "image_id": 785, "category_id": 1, "iscrowd": 1, "area": 36000.0,
                                "bbox": [20, 50, 180, 200], "segmentation": rle, "num_keypoints": 0,
                                "keypoints": [0] * 51})
    ann = tmp_path / "crowd.json"
    ann.write_text(json.dumps(data))
    codec = BAPoseCodec(SIZE)
    ds = CocoKeypointDataset(ann, tmp_path, codec=codec, train=True, input_size=SIZE)
    kp, _, mask = ds.annotations(785)
    assert kp.shape[0] == 1  # the crowd is not a person
    assert mask.sum() == 200 * 180 and mask[50:250, 20:200].all()
    out = ds.transform(read_image(tmp_path / "000000000785.jpg"), kp, np.ones(1), mask,
                       params=AffineParams(scale=1.0, rotation=0.0))
    # crowd box in input pixels: x 20..199 -> zoom SIZE/425, centred crop of the 640-wide image
    m = out["matrix"]
    targets = codec.encode(out["keypoints"], out["areas"], out["ignore_mask"])
    weights = targets["heatmap_weights"]
    inside = np.array([[150.0, 100.0], [180.0, 200.0], [130.0, 230.0]]) @ m[:, :2].T + m[:, 2]
    for x, y in inside:
        gx, gy = round(float(codec.to_grid(x))), round(float(codec.to_grid(y)))
        assert 0 <= gx < SIZE // 4 and 0 <= gy < SIZE // 4
        assert (weights[:, gy, gx] == 0).all()
    assert (weights == 0).mean() > 0.05
    # without the crowd annotation the same view has no zero weights
    plain = codec.encode(out["keypoints"], out["areas"], None)["heatmap_weights"]
    assert (plain == 0).sum() == 0


def test_eval_samples_keep_every_image(coco_sample: Path) -> None:
    ann, images = _coco(coco_sample)
    ds = CocoKeypointDataset(ann, images, train=False, transform=EvalTransform(SIZE))
    assert len(ds) == 4
    s = ds[ds.ids.index(785)]
    assert s["image"].shape == (3, 128, 224)  # 425x640 -> 128x193, padded to 128x224
    assert s["orig_size"].tolist() == [425, 640] and s["valid_size"].tolist() == [128, 193]
    assert s["input_to_orig"].shape == (2, 3)
    assert float(s["input_to_orig"][0, 0]) == pytest.approx(640 / 193, rel=1e-6)


# ------------------------------------------------------------------------------------------------ bad input
def test_missing_images_reported_at_setup(coco_sample: Path, tmp_path: Path) -> None:
    data = _copy_sample(coco_sample, tmp_path, "test_coco.json")
    (tmp_path / "000000000785.jpg").unlink()
    (tmp_path / "000000040083.jpg").unlink()
    ann = tmp_path / "a.json"
    ann.write_text(json.dumps(data))
    with pytest.raises(DataError) as err:
        CocoKeypointDataset(ann, tmp_path, train=False)
    msg = str(err.value)
    assert "2 of 4 images are missing" in msg and "000000000785.jpg" in msg and "000000040083.jpg" in msg
    ds = CocoKeypointDataset(ann, tmp_path, train=False, on_bad_sample="skip")
    assert sorted(ds.ids) == [196141, 197388] and ds.num_skipped == 2


def test_corrupt_and_empty_images_name_the_file(coco_sample: Path, tmp_path: Path) -> None:
    data = _copy_sample(coco_sample, tmp_path, "test_coco.json")
    (tmp_path / "000000000785.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg" * 10)
    (tmp_path / "000000040083.jpg").write_bytes(b"")
    ann = tmp_path / "a.json"
    ann.write_text(json.dumps(data))
    ds = CocoKeypointDataset(ann, tmp_path, train=False, transform=EvalTransform(64))
    with pytest.raises(DataError, match=r"000000000785\.jpg.*corrupt"):
        ds[ds.ids.index(785)]
    with pytest.raises(DataError, match=r"000000040083\.jpg.*empty"):
        ds[ds.ids.index(40083)]
    skip = CocoKeypointDataset(ann, tmp_path, train=True, codec=BAPoseCodec(64), input_size=64,
                               on_bad_sample="skip")
    s = skip[skip.ids.index(785)]  # 785 and 40083 are unreadable: the next good image comes back
    assert s["image_id"] == 196141 and skip.num_skipped == 2


@pytest.mark.parametrize("content,expected", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "top level is a list"),
    (json.dumps({"images": [], "annotations": []}), "field 'categories': missing"),
    (json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "dog"}]}),
     "no category has a 'keypoints' list"),
])
def test_not_a_coco_keypoint_json_says_what_is_wrong(tmp_path: Path, content: str, expected: str) -> None:
    ann = tmp_path / "bad.json"
    ann.write_text(content)
    with pytest.raises(DataError, match=expected) as err:
        CocoKeypointDataset(ann, tmp_path, train=False)
    assert "bad.json" in str(err.value)


def test_wrong_keypoint_count_names_the_annotation(coco_sample: Path, tmp_path: Path) -> None:
    data = json.loads((coco_sample / "test_coco.json").read_text())
    data["annotations"][3]["keypoints"] = data["annotations"][3]["keypoints"][:-3]
    ann = tmp_path / "short.json"
    ann.write_text(json.dumps(data))
    bad_id = data["annotations"][3]["id"]
    with pytest.raises(DataError, match=rf"annotation id {bad_id}, field 'keypoints': 48 numbers; expected 51"):
        CocoKeypointDataset(ann, coco_sample, train=False)
    # a meta that disagrees with the json's joint list is caught too
    with pytest.raises(DataError, match="17 joint names; expected 14"):
        CocoKeypointDataset(coco_sample / "test_coco.json", coco_sample, meta=DatasetMeta.crowdpose(), train=False)


def test_custom_keypoint_set_from_category(coco_sample: Path, tmp_path: Path) -> None:
    """A 3-joint dataset: K and flips come from the json category."""
    data = _copy_sample(coco_sample, tmp_path, "test_coco.json")
    keep = [0, 9, 10]  # nose, left_wrist, right_wrist
    data["categories"][0]["keypoints"] = ["nose", "left_wrist", "right_wrist"]
    data["categories"][0]["skeleton"] = [[2, 3]]
    for a in data["annotations"]:
        a["keypoints"] = np.asarray(a["keypoints"]).reshape(17, 3)[keep].ravel().tolist()
    ann = tmp_path / "three.json"
    ann.write_text(json.dumps(data))
    ds = CocoKeypointDataset(ann, tmp_path, codec=BAPoseCodec(64), train=True, input_size=64)
    assert ds.meta.num_keypoints == 3 and ds.meta.flip_index == (0, 2, 1)
    s = ds[0]
    assert s["heatmaps"].shape == (4, 16, 16) and s["offsets"].shape == (6, 16, 16)


def test_prepare_crowdpose_merges_and_rejects_id_clashes(crowdpose_sample: Path, tmp_path: Path) -> None:
    import runpy

    script = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" / "prepare_crowdpose.py"))
    data = json.loads((crowdpose_sample / "test_crowdpose.json").read_text())
    (tmp_path / "json").mkdir()
    for name, img in zip(("crowdpose_train.json", "crowdpose_val.json"), data["images"], strict=True):
        part = dict(data, images=[img], annotations=[a for a in data["annotations"] if a["image_id"] == img["id"]])
        (tmp_path / "json" / name).write_text(json.dumps(part))
    out = script["main"](["--root", str(tmp_path)])
    merged = json.loads(out.read_text())
    assert len(merged["images"]) == 2 and len(merged["annotations"]) == 5
    assert merged["categories"] == data["categories"]
    with pytest.raises(DataError, match=r"annotation id \d+: also in an earlier part"):
        script["main"](["--root", str(tmp_path), "--parts", "crowdpose_train.json", "crowdpose_train.json"])


def _one_image_json(tmp_path: Path, size: tuple[int, int], people: list[tuple[np.ndarray, float]],
                    crowd_box: tuple[int, int, int, int] | None = None) -> Path:
    """A ``size`` (h, w) grey image with COCO-17 people ``(keypoints (17, 3), area)`` and optionally a crowd box."""
    h, w = size
    anns = [{"id": i + 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": float(area),
             "num_keypoints": int((kp[:, 2] > 0).sum()), "bbox": [0, 0, 1, 1],
             "keypoints": np.asarray(kp, float).reshape(-1).round(2).tolist()} for i, (kp, area) in enumerate(people)]
    if crowd_box is not None:
        x, y, bw, bh = crowd_box
        anns.append({"id": 99, "image_id": 1, "category_id": 1, "iscrowd": 1, "area": float(bw * bh),
                     "num_keypoints": 0, "bbox": [x, y, bw, bh], "keypoints": [0] * 51,
                     "segmentation": [[x, y, x + bw, y, x + bw, y + bh, x, y + bh]]})
    data = {"images": [{"id": 1, "file_name": "a.jpg", "width": w, "height": h}], "annotations": anns,
            "categories": [{"id": 1, "name": "person", "keypoints": list(DatasetMeta.coco().keypoints),
                            "skeleton": []}]}
    (tmp_path / "a.json").write_text(json.dumps(data))
    import cv2

    cv2.imwrite(str(tmp_path / "a.jpg"), np.full((h, w, 3), 127, np.uint8))
    return tmp_path / "a.json"


def _figure(cx: float, cy: float, half: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    xy = np.stack([rng.uniform(cx - half, cx + half, 17), rng.uniform(cy - 2 * half, cy + 2 * half, 17)], 1)
    return np.concatenate([xy, np.full((17, 1), 2.0)], 1)


def _fixed(scale: float) -> TrainTransform:
    return TrainTransform(SIZE, DatasetMeta.coco().flip_index, min_scale=scale, max_scale=scale, max_rotation=0.0,
                          max_translate=0.0, flip_prob=0.0)


@pytest.mark.parametrize("crowd", [False, True], ids=["no_crowd", "crowd"])
def test_padding_outside_the_source_image_gets_no_heatmap_weight_and_no_offsets(tmp_path: Path, crowd: bool) -> None:
    """Zoomed out (scale 1.5) the 64-px-wide image fills 2/3 of the 128 crop's width; DEKR and MMPose warp a *valid*
    mask with border 0, so the padding gets weight 0 in the heatmap loss, crowd annotation or not, and (issue 19)
    no offsets: the person at the image's left edge keeps their offsets inside the image only."""
    h, w = 128, 64
    ann = _one_image_json(tmp_path, (h, w), [(_figure(8.0, 64.0, 6.0), 4000.0)],
                          crowd_box=(40, 10, 20, 20) if crowd else None)
    codec = BAPoseCodec(SIZE, min_center_area=0)
    ds = CocoKeypointDataset(ann, tmp_path, codec=codec, train=True, input_size=SIZE, transform=_fixed(1.5))
    s = ds[0]
    weights, off_w = s["heatmap_weights"].numpy(), s["offset_weights"].numpy()
    # a grid cell is padding when most of its 4 x 4 input pixels map outside the source (computed here directly)
    matrix = train_affine_matrix(h, w, SIZE, AffineParams(1.5, 0.0, (0.0, 0.0), False))[0]
    ys, xs = np.mgrid[0:SIZE, 0:SIZE]
    src = apply_affine(np.stack([xs, ys], -1).astype(float), invert_affine(matrix))
    outside = ~((src >= -0.5) & (src < [w - 0.5, h - 0.5])).all(-1)
    padding = outside.reshape(32, 4, 32, 4).mean((1, 3)) > 0.5
    assert 0.25 < padding.mean() < 0.45
    assert (weights[:, padding] == 0).all() and (off_w[:, padding] == 0).all()
    assert not s["offsets"].numpy()[:, padding].any()
    inside = ~padding
    if crowd:
        assert (weights[:, inside] == 0).any()  # the crowd box, inside the image
    else:
        assert (weights[:, inside] > 0).all()  # background 0.1 and Gaussians: every source pixel trains
    # the person's square straddles the image's left border: offsets on its inner part, none on the padding
    square = off_w.max(0) > 0
    assert square.sum() > 0 and (square & inside).sum() == square.sum()
    # a zoomed-in view lies inside the source: no padding, no valid mask to pay for
    ds_in = CocoKeypointDataset(ann, tmp_path, codec=codec, train=True, input_size=SIZE, transform=_fixed(0.75))
    out = ds_in.transform(read_image(tmp_path / "a.jpg"), *ds_in.annotations(1)[:2], None,
                          params=AffineParams(0.75, 0.0, (0.0, 0.0), False))
    assert out["valid_mask"] is None


def test_small_person_rule_reads_the_original_annotation_area(tmp_path: Path) -> None:
    """DEKR's COCO rule, ``obj['area'] < 32**2`` on the json's area (issue 19 item 8), whatever the augmentation's
    zoom: zoomed out 2x a 1,500 px^2 person is 375 px^2 in the input and keeps its center; zoomed in 1.5x a 900 px^2
    person is 2,025 px^2 and still gets none."""
    ann = _one_image_json(tmp_path, (128, 128), [(_figure(40.0, 64.0, 10.0, 1), 1500.0),
                                                 (_figure(90.0, 64.0, 10.0, 2), 900.0)])
    codec = BAPoseCodec(SIZE, min_center_area=32.0**2)
    for scale in (2.0, 1.0 / 1.5):
        ds = CocoKeypointDataset(ann, tmp_path, codec=codec, train=True, input_size=SIZE, transform=_fixed(scale))
        out = ds.transform(read_image(tmp_path / "a.jpg"), *ds.annotations(1)[:2], None,
                           params=AffineParams(scale, 0.0, (0.0, 0.0), False))
        lay = codec.layout(out["keypoints"], ds.annotations(1)[1], (32, 32))
        assert lay.has_center.tolist() == [True, False], scale
        # what the augmented area would have decided instead
        assert (out["areas"] >= 32.0**2).tolist() == ([False, False] if scale == 2.0 else [True, True])
        s = ds[0]
        assert float(s["heatmaps"][-1].max()) > 0.9  # the 1,500 px^2 person's center


def test_min_center_diagonal_drops_people_below_mmposes_cutoff() -> None:
    """MMPose SPR ``minimal_diagonal_length`` (sqrt(32) grid px in its DEKR configs): no center, no offsets below it;
    the joints still get heatmaps, and no person weighs more than 1/sqrt(32) in the offset loss."""
    cut = 32**0.5
    codec = BAPoseCodec(SIZE, min_center_area=0, min_center_diagonal=cut)
    kp = np.zeros((3, 17, 3))
    kp[..., 2] = 2
    for p, (cx, side) in enumerate(((20.0, 4 * 5.0), (64.0, 4 * 6.0), (105.0, 0.0))):  # diagonal 5*sqrt2, 6*sqrt2, 0
        kp[p, :, 0] = cx + np.linspace(-side / 2, side / 2, 17) / np.sqrt(2)
        kp[p, :, 1] = 64 + np.linspace(-side / 2, side / 2, 17) / np.sqrt(2)
    lay = codec.layout(kp, np.full(3, 1e4), (32, 32))
    np.testing.assert_allclose(lay.diag[:2], [5.0, 6.0], rtol=1e-6)
    assert lay.has_center.tolist() == [False, True, False]
    t = codec.encode(kp, np.full(3, 1e4))
    assert t["offset_weights"].max() == pytest.approx(1 / 6.0, rel=1e-5) and 1 / 6.0 <= 1 / cut
    g0 = np.round(codec.to_grid(kp[0, :, :2].mean(0))).astype(int)
    assert t["heatmaps"][:-1, g0[1], g0[0]].max() > 0.5  # its joints are drawn (around its center) ...
    assert t["heatmaps"][-1, g0[1], g0[0]] < 0.05 and t["heatmaps"][-1].max() > 0.99  # ... its center is not
    # without the cutoff the one-joint-wide person weighs 1 (the clamp), 6x a 6-px person
    assert BAPoseCodec(SIZE, min_center_area=0).encode(kp, np.full(3, 1e4))["offset_weights"].max() == 1.0


def _with_orientation(path: Path, stored: np.ndarray, tag: int) -> Path:
    """Write ``stored`` (RGB) with the EXIF Orientation ``tag`` (PIL writes the tag; the pixels stay as given)."""
    from PIL import Image

    im = Image.fromarray(stored)
    exif = im.getexif()
    exif[0x0112] = tag
    im.save(path, exif=exif.tobytes(), **({"quality": 95} if path.suffix == ".jpg" else {}))
    return path


@pytest.mark.parametrize("tag", range(2, 9))
def test_exif_orientation_is_applied_exactly_as_opencv_applies_it(tmp_path: Path, tag: int) -> None:
    import cv2

    from bapose.data.inputs import try_read_image as predict_read_image

    stored = np.random.default_rng(tag).integers(0, 255, (40, 80, 3), dtype=np.uint8)
    path = _with_orientation(tmp_path / f"o{tag}.png", stored, tag)  # PNG: lossless, so exact
    shown = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)  # OpenCV's own EXIF handling
    np.testing.assert_array_equal(read_image(path), stored)  # no declared size: the stored frame (DEKR)
    np.testing.assert_array_equal(read_image(path, default="exif"), shown)
    np.testing.assert_array_equal(read_image(path, size=stored.shape[:2]), stored)  # the json's frame wins
    if shown.shape != stored.shape:  # a 90-degree tag: the declared size tells the frames apart
        np.testing.assert_array_equal(read_image(path, size=shown.shape[:2]), shown)
    # bapose-predict: the same rule with ann_file's size, the image as shown without one
    np.testing.assert_array_equal(predict_read_image(path), shown)
    np.testing.assert_array_equal(predict_read_image(path, size=stored.shape[:2]), stored)


@pytest.mark.parametrize("frame", ["stored", "shown"])
def test_exif_rotated_jpeg_with_a_crowd_mask_trains_in_its_annotations_frame(tmp_path: Path, frame: str) -> None:
    """A phone photo: a 128 x 64 JPEG stored sideways with Orientation 6. Its json declares either the stored size
    (COCO's frame) or the shown one; image, crowd mask and keypoints come out in that frame and the run goes on
    under on_bad_sample=raise (issue 19 item 10: it used to end with a DataError). A declared size that fits
    neither frame is still an error naming the file."""
    import cv2

    stored = np.full((64, 128, 3), 40, np.uint8)
    stored[8:28, 90:120] = 230  # the crowd region, bright, in the stored frame
    path = _with_orientation(tmp_path / "a.jpg", stored, 6)
    shown = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    assert shown.shape == (128, 64, 3)
    if frame == "stored":
        (h, w), box, person = (64, 128), (90, 8, 30, 20), (30.0, 40.0)
    else:  # the same region and person, rotated 90 degrees clockwise: (x, y) -> (h - 1 - y, x)
        (h, w), box, person = (128, 64), (64 - 28, 90, 20, 30), (64 - 1 - 40.0, 30.0)
    ann = _one_image_json(tmp_path, (h, w), [(_figure(*person, 4.0), 2000.0)], crowd_box=box)
    _with_orientation(tmp_path / "a.jpg", stored, 6)  # _one_image_json wrote a plain image; put the photo back
    ds = CocoKeypointDataset(ann, tmp_path, codec=BAPoseCodec(SIZE, min_center_area=0), train=True,
                             input_size=SIZE, transform=_fixed(1.0), on_bad_sample="raise")
    image = read_image(tmp_path / "a.jpg", ds._declared_size(1))
    assert image.shape[:2] == (h, w)
    s = ds[0]  # no DataError: mask and image agree
    ignored = (s["heatmap_weights"].numpy() == 0).all(0)  # the crowd cells
    bright = s["image"].numpy().mean(0).reshape(32, 4, 32, 4).mean((1, 3)) > 135
    assert ignored.sum() >= 10 and (ignored <= bright).all()  # the masked cells are the bright region's
    ev = CocoKeypointDataset(ann, tmp_path, train=False, input_size=SIZE)
    assert tuple(ev[0]["orig_size"].tolist()) == (h, w)  # evaluation reads the same frame
    # a declared size that is neither frame: the mask cannot be placed, the error names the file
    data = json.loads(ann.read_text())
    data["images"][0].update(width=50, height=50)
    data["annotations"][-1]["segmentation"] = [[10, 10, 20, 10, 20, 20, 10, 20]]
    ann.write_text(json.dumps(data))
    with pytest.raises(DataError, match="a.jpg"):
        CocoKeypointDataset(ann, tmp_path, codec=BAPoseCodec(SIZE, min_center_area=0), train=True,
                            input_size=SIZE, transform=_fixed(1.0))[0]
