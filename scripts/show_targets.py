"""Draw augmented training samples and their codec targets as one PNG grid, to eyeball the data pipeline.

    python scripts/show_targets.py --ann ../shared/data/coco_sample/test_coco.json \
        --images ../shared/data/coco_sample --n 8 --out grid.png --input-size 256

One row per sample: (1) the augmented image with labelled keypoints (left joints orange, right blue, others green)
and the skeleton, ignore regions tinted red; (2) the joint heatmaps (max over joints, yellow) and the center map
(magenta) over the image, zero-weight pixels dark red; (3) offset arrows from each person's center pixel to its joints.

Offset ownership in crowds, DEKR's rules against the default ones (the most crowded images of the json, as
evaluation resizes them):

    python scripts/show_targets.py --ownership --ann data/dense/annotations/val.json --images data/dense/val \
        --input-size 512 --n 2 --out ownership.png

One row per image: the ground truth, then per rule set every grid pixel tinted with the colour of the person whose
offsets it carries, each person's center pixel as a white-ringed dot in their colour, and the people that set loses
crossed out in red with the cause (``bapose.evaluation.upper_bound``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import torch

from bapose.evaluation.scoring import resolve_dataset
from bapose.codecs import BAPoseCodec
from bapose.io import read_json_object
from bapose.evaluation.upper_bound import outcomes
from bapose.data.dataset import CocoKeypointDataset, read_image
from bapose.data.transforms import EvalTransform, apply_affine, invert_affine
from bapose.vis import draw_ownership, draw_poses

LEFT, RIGHT, MID = (255, 140, 0), (40, 120, 255), (60, 220, 60)  # RGB


def _joint_colours(names: tuple[str, ...]) -> list[tuple[int, int, int]]:
    return [LEFT if n.lower().startswith(("left", "l_")) else RIGHT if n.lower().startswith(("right", "r_"))
            else MID for n in names]


def draw_keypoints(image: np.ndarray, keypoints: np.ndarray, skeleton, colours) -> np.ndarray:
    """Labelled (v > 0) joints of ``(N, K, 3)`` keypoints and skeleton links on an (H, W, 3) RGB copy."""
    out = image.copy()
    for person in keypoints:
        for a, b in skeleton:
            if person[a, 2] > 0 and person[b, 2] > 0:
                cv2.line(out, tuple(int(round(v)) for v in person[a, :2]), tuple(int(round(v)) for v in person[b, :2]),
                         (255, 255, 255), 1, cv2.LINE_AA)
        for k, (x, y, v) in enumerate(person):
            if v > 0:
                cv2.circle(out, (int(round(x)), int(round(y))), 3, colours[k], -1, cv2.LINE_AA)
    return out


def draw_heatmaps(image: np.ndarray, targets: dict, size: int) -> np.ndarray:
    """Joint maps (yellow), center map (magenta) and zero-weight pixels (dark red) blended over the image."""
    up = lambda m: cv2.resize(m, (size, size), interpolation=cv2.INTER_LINEAR)  # noqa: E731
    joints = up(targets["heatmaps"][:-1].max(axis=0))[..., None]
    center = up(targets["heatmaps"][-1])[..., None]
    ignored = up((targets["heatmap_weights"].min(axis=0) == 0).astype(np.float32))[..., None]
    out = image.astype(np.float32) * 0.45
    out = out * (1 - joints) + joints * np.array([255, 230, 0])
    out = out * (1 - center) + center * np.array([255, 0, 255])
    out = out * (1 - 0.6 * ignored) + 0.6 * ignored * np.array([140, 0, 0])
    return out.clip(0, 255).astype(np.uint8)


def draw_offsets(image: np.ndarray, targets: dict, codec: BAPoseCodec, colours, max_people: int = 6) -> np.ndarray:
    """Arrows from the strongest center pixels (one per person) to where their offsets put each joint."""
    out = (image.astype(np.float32) * 0.6).astype(np.uint8)
    center = targets["heatmaps"][-1]
    valid = targets["offset_weights"].max(axis=0) > 0
    # a person's center pixel is a local maximum of the center map that also carries offsets
    pooled = cv2.dilate(center, np.ones((3, 3), np.uint8))
    peaks = np.argwhere((center == pooled) & (center > 0.5) & valid)
    order = np.argsort(-center[peaks[:, 0], peaks[:, 1]])[:max_people]
    k = targets["offsets"].shape[0] // 2
    for gy, gx in peaks[order]:
        off = targets["offsets"][:, gy, gx].reshape(k, 2)
        start = codec.to_input(np.array([gx, gy], dtype=np.float64))
        ends = codec.to_input(np.array([gx, gy], dtype=np.float64) + off)
        for j in range(k):
            if np.abs(off[j]).sum() > 0:
                cv2.arrowedLine(out, tuple(int(round(v)) for v in start), tuple(int(round(v)) for v in ends[j]),
                                colours[j], 1, cv2.LINE_AA, tipLength=0.08)
        cv2.circle(out, tuple(int(round(v)) for v in start), 3, (255, 0, 255), -1)
    return out


RULES = {"DEKR rules": {"offset_owner": "smaller", "center_collision": "ignore", "pose_nms": "dekr",
                        "heatmap_window": "dekr"},
         "default rules": {}}
_SHORT = {"center_collision": "collision", "offsets_owned": "offsets", "pose_nms": "pose NMS", "no_center": "no center",
          "max_people": "top-k", "low_oks": "OKS"}


def ownership_panel(image: np.ndarray, outcome, codec: BAPoseCodec, title: str, origin: tuple[int, int] = (0, 0),
                    zoom: int = 1) -> np.ndarray:
    """:func:`bapose.vis.draw_ownership` of one rule set's outcome, titled with who it loses and why."""
    lay = outcome.layout
    lost = outcome.causes != "found"
    out = draw_ownership(image, lay.owner, lay.pixel, lay.center, lost, codec.stride, origin, zoom)
    counts: dict[str, int] = {}
    for cause in outcome.causes[lost]:
        counts[_SHORT[cause]] = counts.get(_SHORT[cause], 0) + 1
    why = ", ".join(f"{v} {k}" for k, v in counts.items())
    _label(out, f"{title}: lost {int(lost.sum())} of {len(lost)}" + (f" ({why})" if why else ""))
    return out


def _label(img: np.ndarray, text: str) -> None:
    cv2.rectangle(img, (0, 0), (img.shape[1], 20), (0, 0, 0), -1)
    cv2.putText(img, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)


def render_ownership(ann: Path, images: Path, n: int, input_size: int, crop: int = 40, zoom: int = 3) -> np.ndarray:
    """RGB rows for the ``n`` images with the most people: the ground truth, then the ownership under each rule set
    of :data:`RULES`, on the ``crop`` x ``crop`` grid pixels around where DEKR's rules lose the most people,
    magnified ``zoom`` times."""
    data = read_json_object(ann)
    meta, mode = resolve_dataset(data)
    per: dict[int, list[dict]] = {}
    for a in data["annotations"]:
        if not a.get("iscrowd") and a.get("num_keypoints", 1) > 0:
            per.setdefault(a["image_id"], []).append(a)
    infos = sorted(data["images"], key=lambda im: -len(per.get(im["id"], [])))[:n]
    rows = []
    for info in infos:
        anns = per[info["id"]]
        sample = EvalTransform(input_size)(read_image(Path(images) / info["file_name"]))
        image, to_orig = sample["image"], sample["input_to_orig"]
        orig = np.asarray([a["keypoints"] for a in anns], np.float64).reshape(len(anns), meta.num_keypoints, 3)
        kp = orig.copy()
        kp[..., :2] = apply_affine(orig[..., :2], invert_affine(to_orig))
        (rh, rw), (h, w) = sample["valid_size"], (info["height"], info["width"])
        areas = np.asarray([a["area"] if "area" in a else a["bbox"][2] * a["bbox"][3] for a in anns]) * rh / h * rw / w
        scales = np.asarray([a["bbox"][2] * a["bbox"][3] * 0.53 if mode == "crowdpose" else a.get("area", 1.0)
                             for a in anns])
        results = {}
        for title, rules in RULES.items():
            codec = BAPoseCodec(input_size=input_size, oks_sigmas=meta.sigmas, **rules)
            results[title] = (codec, outcomes(codec, kp, areas, image.shape[:2], meta.sigmas, scales, 0.95, orig,
                                              to_orig))
        # the crop: the window holding the most centers of people the first rule set loses (then of anyone)
        first = next(iter(results.values()))[1]
        gh, gw = image.shape[0] // codec.stride, image.shape[1] // codec.stride
        size = min(crop, gh, gw)
        centers = np.nan_to_num(first.layout.center, nan=-1e9)
        weight = np.where(first.causes != "found", 100.0, 1.0)
        best, ox, oy = -np.inf, 0, 0
        for y in range(0, gh - size + 1, 2):
            for x in range(0, gw - size + 1, 2):
                inside = ((centers >= [x + 2, y + 2]) & (centers < [x + size - 2, y + size - 2])).all(1)
                # most weight inside, then the lost people nearest the middle
                score = weight[inside].sum() - 0.01 * np.abs(centers[inside] - [x + size / 2, y + size / 2]).sum()
                if score > best:
                    best, ox, oy = score, x, y
        s = codec.stride
        patch = image[oy * s:(oy + size) * s, ox * s:(ox + size) * s]
        patch = cv2.resize(patch, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_CUBIC)
        shifted = kp.copy()
        shifted[..., :2] = (kp[..., :2] - np.array([ox * s, oy * s]) + 0.5) * zoom - 0.5
        panel = draw_poses(patch, shifted, None, meta, show_scores=False)
        _label(panel, f"image {info['id']}: {len(anns)} people (crop, x{zoom})")
        panels = [panel] + [ownership_panel(patch, out, c, title, (ox, oy), zoom) for title, (c, out) in results.items()]
        rows.append(np.concatenate(panels, axis=1))
    return np.concatenate(rows, axis=0)


def render(ann: Path, images: Path, n: int, input_size: int, seed: int) -> np.ndarray:
    """The (n * S, 3 * S, 3) RGB grid."""
    codec = BAPoseCodec(input_size)
    ds = CocoKeypointDataset(ann, images, codec=codec, train=True, input_size=input_size)
    colours = _joint_colours(ds.meta.keypoints)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        image_id = ds.ids[i % len(ds)]
        kp, areas, mask = ds.annotations(image_id)
        out = ds.transform(read_image(ds.image_dir / ds._images[image_id]["file_name"]), kp, areas, mask, rng=rng)
        targets = codec.encode(out["keypoints"], out["areas"], out["ignore_mask"])
        img = out["image"]
        if out["ignore_mask"] is not None:
            img = np.where(out["ignore_mask"][..., None], (img * 0.5 + np.array([127, 0, 0])).astype(np.uint8), img)
        panels = [draw_keypoints(img, out["keypoints"], ds.meta.skeleton, colours),
                  draw_heatmaps(out["image"], targets, input_size),
                  draw_offsets(out["image"], targets, codec, colours)]
        p = out["params"]
        cv2.putText(panels[0], f"id {image_id} s{p.scale:.2f} r{p.rotation:+.0f}{' flip' if p.flip else ''}",
                    (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
        rows.append(np.concatenate(panels, axis=1))
    return np.concatenate(rows, axis=0)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ann", type=Path, required=True, help="COCO keypoint json")
    parser.add_argument("--images", type=Path, required=True, help="image folder of the json")
    parser.add_argument("--n", type=int, default=8, help="samples (rows)")
    parser.add_argument("--out", type=Path, default=Path("grid.png"))
    parser.add_argument("--input-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ownership", action="store_true",
                        help="offset ownership and lost people, DEKR's rules against the default ones")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.ownership:
        grid = render_ownership(args.ann, args.images, args.n, args.input_size)
    else:
        grid = render(args.ann, args.images, args.n, args.input_size, args.seed)
    cv2.imwrite(str(args.out), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    print(f"wrote {args.out} ({grid.shape[1]}x{grid.shape[0]})")
    return args.out


if __name__ == "__main__":
    main()
