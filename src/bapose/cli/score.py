"""``bapose-score GT.json RESULTS.json``: keypoint AP of a COCO-format results file (COCO or CrowdPose rules)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from bapose.data.metadata import DatasetMeta, keypoint_categories, rule_set
from bapose.errors import BAPoseError, DataError
from bapose.evaluation import KeypointEvaluator


def resolve_dataset(gt: dict, dataset: str = "auto", file: object = None, keypoints_field: str = "keypoints",
                    sigmas: Sequence[float] | None = None) -> tuple[DatasetMeta, str]:
    """Metadata and scoring mode for a ground-truth dict.

    ``auto``: CrowdPose rules for CrowdPose-format files (the CrowdPose joint set, images with ``crowdIndex``, or no
    annotation with ``area``: ``bapose.data.metadata.rule_set``), else COCO. The joint set comes from the json's
    keypoint category (any custom K; ``keypoints_field`` picks the joints of files with several sets), else from the
    named preset; ``sigmas`` replaces its OKS sigmas.
    """
    cats = [c for c in gt.get("categories", []) or [] if isinstance(c, dict) and "keypoints" in c]
    if dataset not in ("auto", "coco", "crowdpose"):
        raise DataError(f"--dataset '{dataset}'; expected coco, crowdpose or auto")
    if cats:
        category = keypoint_categories(gt, file, keypoints_field)[0]
        names = category.get(keypoints_field) or category["keypoints"]
    else:
        names = DatasetMeta.preset("coco" if dataset == "auto" else dataset).keypoints
    if sigmas is not None and len(sigmas) != len(names):
        raise DataError(f"--sigmas: {len(sigmas)} values; expected {len(names)} (one per joint: "
                        f"{', '.join(map(str, names[:6]))}{', ...' if len(names) > 6 else ''})")
    if cats:
        meta = DatasetMeta.from_coco_category(category, sigmas=sigmas, file=file, keypoints_field=keypoints_field)
    else:
        meta = DatasetMeta.build("coco" if dataset == "auto" else dataset, sigmas=sigmas)
    mode = rule_set(gt, meta.name) if dataset == "auto" else dataset
    return meta, mode


def parse_sigmas(text: str | None) -> list[float] | None:
    """``"0.079,0.079,..."`` or ``"[0.079, ...]"`` -> floats (None stays None)."""
    if text is None:
        return None
    try:
        return [float(v) for v in text.strip().strip("[]").replace(",", " ").split()]
    except ValueError:
        raise DataError(f"--sigmas '{text}': expected comma-separated numbers, one OKS sigma per joint") from None


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
                        help="scoring rules (auto: CrowdPose for CrowdPose-format files: images with crowdIndex, "
                             "the CrowdPose joint set, or no 'area' in any annotation)")
    parser.add_argument("--area-from", choices=("area", "bbox"), default="area",
                        help="COCO rules' OKS scale: the json's 'area' (default) or the box w*h (files without area)")
    parser.add_argument("--keypoints-field", default="keypoints",
                        help="annotation field holding the joints, e.g. keypoints_21 (files with several joint sets)")
    parser.add_argument("--sigmas", default=None,
                        help="OKS sigmas, one per joint, comma-separated (default: the preset's, else a documented "
                             "guess with a warning)")
    parser.add_argument("--backend", choices=("pycocotools", "faster"), default=None,
                        help="evaluator (default: pycocotools for COCO, faster-coco-eval for CrowdPose)")
    parser.add_argument("--json", action="store_true", help="print the stats as json")
    args = parser.parse_args(argv)
    try:
        gt, results = (_read(args.gt), _read(args.results))
        if not isinstance(results, list):
            raise DataError(f"file '{args.results}': expected a json list of results, got {type(results).__name__}")
        meta, mode = resolve_dataset(gt, args.dataset, args.gt, args.keypoints_field, parse_sigmas(args.sigmas))
        evaluator = KeypointEvaluator(gt, meta, mode=mode, backend=args.backend, file=args.gt,
                                      area_from=args.area_from, keypoints_field=args.keypoints_field)
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
