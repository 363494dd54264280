"""``bapose-score GT.json RESULTS.json``: keypoint AP of a COCO-format results file (COCO or CrowdPose rules)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from bapose.io import read_json, read_json_object
from bapose.errors import BAPoseError, DataError
from bapose.evaluation import KeypointEvaluator
from bapose.evaluation.scoring import format_table, parse_sigmas, resolve_dataset


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
        gt = read_json_object(args.gt)
        results = read_json(args.results, expected="a json list of results")
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


if __name__ == "__main__":
    sys.exit(main())
