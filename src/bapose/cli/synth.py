"""``bapose-synth``: render the generated crowd dataset (``data=synthetic``) into a folder and summarise it.

    bapose-synth --out data/synth --num-train 1000 --num-val 200 --image-size 256 --seed 0 --keypoints coco \
        --sheet /tmp/synth.png

Dense crowds (10-16 people, heavy overlap, centers that share grid pixels; for ``scripts/codec_upper_bound.py``):

    bapose-synth --out data/dense --num-train 0 --num-val 200 --image-size 384 --people 10 16 \
        --min-center-gap 0 --stack-prob 0.5 --min-visible 0.15 --min-area 600 --height-range 0.3 0.7

Re-running with the same arguments is a no-op (the folder's marker matches); other arguments on an existing folder
are an error rather than a silent overwrite.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from bapose.data.metadata import DatasetMeta
from bapose.data.synthetic import dataset_stats, ensure_dataset
from bapose.errors import BAPoseError
from bapose.io import read_json


def contact_sheet(ann_file: Path, image_dir: Path, out_png: Path, count: int = 12, columns: int = 4,
                  tile: int = 384) -> Path:
    """Draw the ground truth of the first ``count`` images of a COCO keypoint json into one PNG.

    Left joints green, right joints magenta, others yellow; filled = visible (v=2), ring = occluded (v=1); skeleton
    lines white; crowd / unlabelled regions tinted red.
    """
    data = read_json(ann_file)
    meta = DatasetMeta.from_coco_category(data["categories"][0])
    by_image: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    colours = np.array([(0, 220, 0) if n.startswith("left") else (255, 0, 255) if n.startswith("right")
                        else (255, 230, 0) for n in meta.keypoints], dtype=np.int32)
    tiles = []
    for info in data["images"][:count]:
        path = Path(image_dir) / info["file_name"]
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise FileNotFoundError(f"file '{path}': cannot be read as an image")
        scale = tile / max(bgr.shape[:2])
        img = cv2.resize(bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)[..., ::-1].copy()
        for ann in by_image.get(info["id"], []):
            if ann["num_keypoints"] == 0:  # ignore regions: outline their boxes
                x, y, w, h = (np.asarray(ann["bbox"]) * scale).astype(int)
                cv2.rectangle(img, (x, y), (x + w, y + h), (255, 40, 40) if ann["iscrowd"] else (255, 150, 150), 1)
                continue
            kps = np.asarray(ann["keypoints"], dtype=np.float64).reshape(-1, 3)
            xy = np.round(kps[:, :2] * scale).astype(int)
            for a, b in meta.skeleton:
                if kps[a, 2] > 0 and kps[b, 2] > 0:
                    cv2.line(img, tuple(xy[a]), tuple(xy[b]), (255, 255, 255), 1, cv2.LINE_AA)
            for j in np.flatnonzero(kps[:, 2] > 0):
                cv2.circle(img, tuple(xy[j]), 3, tuple(int(c) for c in colours[j]), -1 if kps[j, 2] == 2 else 1,
                           cv2.LINE_AA)
        canvas = np.zeros((tile, tile, 3), np.uint8)
        canvas[:img.shape[0], :img.shape[1]] = img
        tiles.append(canvas)
    while len(tiles) % columns:
        tiles.append(np.zeros((tile, tile, 3), np.uint8))
    rows = [np.concatenate(tiles[i:i + columns], axis=1) for i in range(0, len(tiles), columns)]
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out_png), np.concatenate(rows, axis=0)[..., ::-1])
    return out_png


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bapose-synth", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=None,
                   help="dataset folder (default: the hashed cache folder under $BAPOSE_CACHE/synthetic)")
    p.add_argument("--num-train", type=int, default=1000)
    p.add_argument("--num-val", type=int, default=200)
    p.add_argument("--image-size", type=int, default=256, help="long image side in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keypoints", choices=("coco", "crowdpose"), default="coco", help="joint set written")
    p.add_argument("--people", type=int, nargs=2, default=(1, 6), metavar=("MIN", "MAX"),
                   help="labelled people per image (inclusive)")
    # scene options (bapose.data.synthetic.SynthSpec); unset = the SynthSpec default
    p.add_argument("--height-range", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                   help="labelled body height as a fraction of the image height (log-uniform)")
    p.add_argument("--min-visible", type=float, default=None,
                   help="least visible fraction of a labelled person's body (default 0.35)")
    p.add_argument("--min-center-gap", type=float, default=None,
                   help="least distance between two centers, fraction of the long side (default 0.0625; 0: any)")
    p.add_argument("--stack-prob", type=float, default=None,
                   help="chance a person stands right behind / in front of another, centers nearly equal (default 0)")
    p.add_argument("--stack-spread", type=float, default=None,
                   help="stacked centers differ by up to this fraction of the long side per axis (default 0.01)")
    p.add_argument("--min-area", type=float, default=None,
                   help="least visible body area (pixels) of a labelled person (default 0)")
    p.add_argument("--background-people", type=int, nargs=2, default=None, metavar=("MIN", "MAX"),
                   help="tiny unlabelled people per image (default 0 2)")
    p.add_argument("--crowd-prob", type=float, default=None, help="chance of an iscrowd region (default 0.1)")
    p.add_argument("--workers", type=int, default=1, help="rendering processes (same bytes for any count)")
    p.add_argument("--sheet", type=Path, default=None, help="also write a contact sheet PNG of val images")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    scene = {name: getattr(args, name) for name in ("height_range", "min_visible", "min_center_gap", "stack_prob",
                                                    "stack_spread", "min_area", "background_people", "crowd_prob")}
    scene = {k: tuple(v) if isinstance(v, list) else v for k, v in scene.items() if v is not None}
    try:
        paths = ensure_dataset(args.out, num_train=args.num_train, num_val=args.num_val,
                               image_size=args.image_size, seed=args.seed, keypoint_set=args.keypoints,
                               people=tuple(args.people), workers=args.workers, **scene)
    except BAPoseError as e:
        print(f"bapose-synth: error: {e}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    print(f"wrote {paths['train_ann'].parent.parent} in {seconds:.1f} s")
    for key, path in paths.items():
        print(f"  {key:13s} {path}")
    for split in ("train", "val"):
        s = dataset_stats(paths[f"{split}_ann"])
        print(f"  {split}: {s['images']} images, {s['people']} people, {s['people_per_image']:.2f} people/image "
              f"(max {s['max_people_per_image']}), joints visible {s['visible_joints']:.1%} / occluded "
              f"{s['occluded_joints']:.1%} / outside {s['outside_joints']:.1%}, {s['unlabelled_people']} "
              f"unlabelled people, {s['crowd_regions']} crowd regions")
    if args.sheet is not None:
        split = "val" if args.num_val > 0 else "train"
        print(f"contact sheet: {contact_sheet(paths[f'{split}_ann'], paths[f'{split}_images'], args.sheet)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
