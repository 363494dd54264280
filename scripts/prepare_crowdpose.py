"""Merge CrowdPose's train and val jsons into the trainval json DEKR and MMPose train on (BAPose names no split).

    python scripts/prepare_crowdpose.py --root /data/crowdpose
reads ``<root>/json/crowdpose_train.json`` and ``crowdpose_val.json`` and writes ``crowdpose_trainval.json`` beside
them. Image ids and annotation ids must stay unique across the two files (checked: a clash is an error naming the
id, never a silent overwrite); an image listed in both with the same file name is kept once.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from bapose.data.dataset import load_coco_keypoint_json
from bapose.errors import DataError


def merge(parts: list[Path]) -> dict:
    """Concatenate COCO keypoint jsons, checking that image and annotation ids are unique."""
    datas = [load_coco_keypoint_json(p) for p in parts]
    merged = {k: v for k, v in datas[0].items() if k not in ("images", "annotations")}
    images: dict = {}
    annotations: dict = {}
    for path, data in zip(parts, datas, strict=True):
        if data["categories"] != datas[0]["categories"]:
            raise DataError(f"file '{path}', field 'categories': differs from '{parts[0]}'; expected the same "
                            "keypoint category in every part")
        for img in data["images"]:
            seen = images.get(img["id"])
            if seen is not None and seen["file_name"] != img["file_name"]:
                raise DataError(f"file '{path}', field 'images': image id {img['id']} is '{img['file_name']}' but "
                                f"'{seen['file_name']}' in an earlier part; expected unique image ids")
            images.setdefault(img["id"], img)
        for ann in data["annotations"]:
            if ann["id"] in annotations:
                raise DataError(f"file '{path}', annotation id {ann['id']}: also in an earlier part; expected "
                                "unique annotation ids")
            annotations[ann["id"]] = ann
    missing = {a["image_id"] for a in annotations.values()} - set(images)
    if missing:
        raise DataError(f"files {[str(p) for p in parts]}: annotations refer to {len(missing)} unknown image ids "
                        f"(e.g. {sorted(missing)[:5]}); expected every image_id in 'images'")
    merged["images"] = list(images.values())
    merged["annotations"] = list(annotations.values())
    return merged


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True, help="CrowdPose folder holding json/ and images/")
    parser.add_argument("--parts", nargs="+", default=["crowdpose_train.json", "crowdpose_val.json"])
    parser.add_argument("--out", default="crowdpose_trainval.json")
    args = parser.parse_args(argv)
    folder = args.root / "json"
    merged = merge([folder / p for p in args.parts])
    out = folder / args.out
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(merged))
    os.replace(tmp, out)  # never leave a half-written trainval json
    print(f"wrote {out}: {len(merged['images'])} images, {len(merged['annotations'])} annotations")
    return out


if __name__ == "__main__":
    main()
