"""COCO records: one rendered image's jpg and annotations (visible-mask box, area, polygons or RLE, CrowdPose's
crowd index), a split's keypoint json, and a summary of such a json."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from bapose.data.synthetic.scene import render_scene
from bapose.data.synthetic.spec import SynthSpec
from bapose.errors import DataError
from bapose.io import read_json_object

# the split is part of every image's seed: SeedSequence([seed, split, index])
_SPLITS = {"train": 0, "val": 1}


def _polygons(mask: np.ndarray) -> list[list[float]]:
    """COCO polygons of a mask that pycocotools rasterises back to (nearly) the same pixels.

    pycocotools' polygon space has pixel ``x`` spanning ``[x, x + 1]``. Contours of the 2x nearest-upsampled mask
    (sub-pixel ``u`` centred at ``u / 2 + 0.25``) run a quarter pixel inside the rim, so rim pixels survive; contours
    through rim pixel centres would lose about half of them (a quarter of a thin limb's area).
    """
    up = cv2.resize(mask.astype(np.uint8), None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(up, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polys = [(c.reshape(-1) / 2.0 + 0.25).round(2).tolist() for c in contours if len(c) >= 3]
    if not polys:  # slivers: fall back to the box so the segmentation is a valid polygon
        ys, xs = np.nonzero(mask)
        x0, y0, x1, y1 = float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)
        polys = [[x0, y0, x1, y0, x1, y1, x0, y1]]
    return polys


def _rle(mask: np.ndarray) -> dict:
    """Uncompressed COCO RLE (what COCO's json uses for ``iscrowd=1``): column-major run lengths, zeros first."""
    flat = mask.reshape(-1, order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts = [0] + counts
    return {"counts": counts, "size": [int(mask.shape[0]), int(mask.shape[1])]}


def _segmentation(mask: np.ndarray) -> list[list[float]] | dict:
    """Polygons (COCO's form for people) when they rasterise back to the mask; RLE otherwise — a nearer person's
    limb across the body leaves a hole that COCO polygons (a union) cannot represent."""
    polys = _polygons(mask)
    back = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polys, *mask.shape))).astype(bool)
    if (back ^ mask).sum() <= 0.02 * mask.sum():
        return polys
    return _rle(mask)


def _crowd_index(kps: list[np.ndarray], boxes: list[list[float]]) -> float:
    """CrowdPose crowd index: mean over people of (others' joints inside my box) / (my joints)."""
    ratios = []
    for i, (k, (x, y, bw, bh)) in enumerate(zip(kps, boxes)):
        own = int((k[:, 2] > 0).sum())
        if own == 0:
            continue
        others = [o[o[:, 2] > 0, :2] for j, o in enumerate(kps) if j != i]
        pts = np.concatenate(others) if others else np.zeros((0, 2))
        inside = (pts[:, 0] >= x) & (pts[:, 0] <= x + bw) & (pts[:, 1] >= y) & (pts[:, 1] <= y + bh)
        ratios.append(inside.sum() / own)
    return float(np.mean(ratios)) if ratios else 0.0


def _r(x: float) -> float:
    return round(float(x), 2)


def _write_jpeg(image: np.ndarray, path: Path, quality: int) -> None:
    ok, buf = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise DataError(f"file '{path}': cv2 could not encode the image as JPEG")
    path.write_bytes(buf.tobytes())


def _annotation(person: dict, image_id: int) -> dict:
    """The COCO record (without its id) of one region :func:`render_scene` returns: box, area and segmentation of
    its visible mask, joints rounded to 0.01 px."""
    mask, kps = person["mask"], person["keypoints"]
    ys, xs = np.nonzero(mask)
    bbox = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
    return {
        "image_id": image_id, "category_id": 1,
        "keypoints": [v for row in kps for v in (_r(row[0]), _r(row[1]), int(row[2]))],
        "num_keypoints": int((kps[:, 2] > 0).sum()), "bbox": bbox, "area": float(mask.sum()),
        "iscrowd": int(person["iscrowd"]),
        "segmentation": _rle(mask) if person["iscrowd"] else _segmentation(mask),
    }


def render_image(args: tuple[SynthSpec, str, int, str]) -> tuple[dict, list[dict]]:
    """Render image ``index`` of ``split``, write its jpg into ``image_dir``; return image and annotation dicts.

    One tuple argument, so a process pool can map it over the images of a split.
    """
    spec, split, index, image_dir = args
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, _SPLITS[split], index]))
    image, people = render_scene(spec, rng)
    image_id = index + 1
    file_name = f"{image_id:06d}.jpg"
    _write_jpeg(image, Path(image_dir) / file_name, spec.jpeg_quality)
    anns = [_annotation(person, image_id) for person in people]
    info = {"id": image_id, "file_name": file_name, "width": int(image.shape[1]), "height": int(image.shape[0])}
    if spec.keypoint_set == "crowdpose":
        labelled = [(person["keypoints"], ann["bbox"]) for person, ann in zip(people, anns) if ann["num_keypoints"]]
        info["crowdIndex"] = round(_crowd_index([k for k, _ in labelled], [box for _, box in labelled]), 4)
    return info, anns


def coco_json(spec: SynthSpec, split: str, results: list[tuple[dict, list[dict]]]) -> dict:
    """A split's COCO keypoint json from its images' :func:`render_image` results, annotation ids 1..N in order."""
    meta = spec.meta
    images, annotations = [], []
    for info, anns in results:
        images.append(info)
        for ann in anns:
            annotations.append({"id": len(annotations) + 1, **ann})
    return {
        "info": {"description": f"bapose synthetic crowd poses ({split})", "version": str(spec.version),
                 "params": spec.to_dict()},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "person", "supercategory": "person", "keypoints": list(meta.keypoints),
                        "skeleton": [[a + 1, b + 1] for a, b in meta.skeleton]}],
    }


def dataset_stats(ann: Path | dict) -> dict[str, float]:
    """Summary of a COCO keypoint json: images, labelled people, people per image, joint visibility fractions."""
    data = read_json_object(ann) if not isinstance(ann, dict) else ann
    n_img = len(data["images"])
    per_image = np.zeros(max(n_img, 1))
    index = {img["id"]: i for i, img in enumerate(data["images"])}
    vis = []
    heights = []
    unlabelled = crowd = 0
    for a in data["annotations"]:
        if a.get("iscrowd"):
            crowd += 1
            continue
        if a["num_keypoints"] == 0:
            unlabelled += 1
            continue
        per_image[index[a["image_id"]]] += 1
        vis.append(np.asarray(a["keypoints"]).reshape(-1, 3)[:, 2])
        heights.append(a["bbox"][3] / data["images"][index[a["image_id"]]]["height"])
    v = np.concatenate(vis) if vis else np.zeros(0)
    frac = (lambda m: float(m.mean()) if v.size else 0.0)  # noqa: E731
    return {
        "images": n_img, "people": int(per_image.sum()), "people_per_image": float(per_image.mean()),
        "max_people_per_image": int(per_image.max()), "unlabelled_people": unlabelled, "crowd_regions": crowd,
        "visible_joints": frac(v == 2), "occluded_joints": frac(v == 1), "outside_joints": frac(v == 0),
        "median_box_height": float(np.median(heights)) if heights else 0.0,
    }
