"""``bapose-score GT.json RESULTS.json``: keypoint AP of a COCO-format results file (COCO or CrowdPose rules)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from bapose.data.metadata import DatasetMeta
from bapose.errors import BAPoseError, DataError
from bapose.evaluation import KeypointEvaluator


def resolve_dataset(gt: dict, dataset: str = "auto") -> tuple[DatasetMeta, str]:
    """Metadata and scoring mode for a ground-truth dict.

    ``auto``: CrowdPose rules when the joint names are CrowdPose's or the images carry ``crowdIndex``, else COCO.
    The joint set comes from the json's keypoint category (any custom K), else from the named preset.
    """
    cats = [c for c in gt.get("categories", []) or [] if isinstance(c, dict) and "keypoints" in c]
    if dataset == "auto":
        crowd = any("crowdIndex" in img for img in gt.get("images", []) if isinstance(img, dict))
        meta = DatasetMeta.from_coco_category(cats[0]) if cats else DatasetMeta.coco()
        mode = "crowdpose" if crowd or meta.name == "crowdpose" else "coco"
        return meta, mode
    if dataset not in ("coco", "crowdpose"):
        raise DataError(f"--dataset '{dataset}'; expected coco, crowdpose or auto")
    meta = DatasetMeta.from_coco_category(cats[0]) if cats else DatasetMeta.preset(dataset)
    return meta, dataset


def format_table(stats: dict[str, float]) -> str:
    """A two-row markdown table of the stats, 4 decimals (NaN: no ground truth in that subset)."""
    keys = list(stats)
    cells = ["nan" if math.isnan(stats[k]) else f"{stats[k]:.4f}" for k in keys]
    return "| " + " | ".join(keys) + " |\n|" + "---|" * len(keys) + "\n| " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bapose-score", description=__doc__)
    parser.add_argument("gt", type=Path, help="ground-truth COCO-format keypoint json")
    parser.add_argument("results", type=Path, help="COCO results json: [{image_id, keypoints, score}, ...]")
    parser.add_argument("--dataset", choices=("auto", "coco", "crowdpose"), default="auto",
                        help="scoring rules (auto: CrowdPose when images carry crowdIndex)")
    parser.add_argument("--backend", choices=("pycocotools", "faster"), default=None,
                        help="evaluator (default: pycocotools for COCO, faster-coco-eval for CrowdPose)")
    parser.add_argument("--json", action="store_true", help="print the stats as json")
    args = parser.parse_args(argv)
    try:
        gt, results = (_read(args.gt), _read(args.results))
        if not isinstance(results, list):
            raise DataError(f"file '{args.results}': expected a json list of results, got {type(results).__name__}")
        meta, mode = resolve_dataset(gt, args.dataset)
        evaluator = KeypointEvaluator(gt, meta, mode=mode, backend=args.backend)
        evaluator.file = str(args.gt)
        evaluator.add_results(results)
        stats = evaluator.compute()
    except BAPoseError as e:
        print(f"bapose-score: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        # strict json: NaN (no ground truth in that subset) becomes null
        print(json.dumps({k: None if math.isnan(v) else v for k, v in stats.items()}))
    else:
        print(f"{mode} keypoint AP ({meta.name}, K={meta.num_keypoints}, {evaluator.backend}): {args.results}")
        print(format_table(stats))
    return 0


def _read(path: Path) -> object:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataError(f"file '{path}': not found") from None
    except json.JSONDecodeError as e:
        raise DataError(f"file '{path}': not valid json ({e})") from None


if __name__ == "__main__":
    sys.exit(main())
