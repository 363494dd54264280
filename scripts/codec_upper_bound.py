"""Codec upper bound: AP of decode(encode(GT)) with the real decoder and evaluator (no network, no pixels).

    python scripts/codec_upper_bound.py --ann ../shared/data/coco_sample/test_coco.json --input-size 512

Images are planned as evaluation resizes them: short side = input size, padded to multiples of 32. Prints the AP
table; the last line is ``AP=<value>``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from bapose.cli.score import format_table, resolve_dataset
from bapose.codecs import BAPoseCodec
from bapose.codecs.upper_bound import codec_upper_bound
from bapose.data.metadata import MIN_CENTER_AREA


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ann", type=Path, required=True, help="COCO-format keypoint json")
    parser.add_argument("--dataset", choices=("auto", "coco", "crowdpose"), default="auto")
    parser.add_argument("--input-size", type=int, default=512)
    parser.add_argument("--backend", choices=("pycocotools", "faster"), default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    gt = json.loads(args.ann.read_text())
    meta, mode = resolve_dataset(gt, args.dataset, args.ann)
    codec = BAPoseCodec(input_size=args.input_size, min_center_area=MIN_CENTER_AREA[mode])  # the rule set's rule
    stats = codec_upper_bound(args.ann, meta, mode, args.input_size, codec, backend=args.backend)
    print(f"codec upper bound, {mode} rules, input {args.input_size}: {args.ann}")
    print(format_table(stats))
    print(f"AP={stats['AP']:.4f}")


if __name__ == "__main__":
    main()
