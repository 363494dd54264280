"""``bapose-convert``: published checkpoints of other codebases as bapose checkpoints.

    bapose-convert dekr pose_dekr_hrnetw32_coco.pth dekr_w32_coco.ckpt                 # K, width, joint set inferred
    bapose-convert dekr pose_dekr_hrnetw32_crowdpose.pth dekr_w32_crowdpose.ckpt
    bapose-convert dekr my_dekr_k17.pth out.ckpt --meta crowdpose|coco / --ann-file my_keypoints.json
    bapose-convert dekr-rescore final_rescore_coco_kpt.pth dekr_rescore_coco.pt        # -> codec.rescore_path=

The checkpoint it writes goes to ``bapose-eval ckpt_path=``, ``bapose-predict ckpt_path=``,
``bapose-export ckpt_path=`` and ``bapose-train model.init_from=`` as any bapose checkpoint does.
"""

from __future__ import annotations

import argparse
import sys

from bapose.errors import exit_on_error


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bapose-convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="format", required=True, metavar="{dekr,dekr-rescore}")
    dekr = sub.add_parser("dekr", help="a DEKR hrnet_dekr state_dict (HRNet/DEKR release) -> bapose checkpoint")
    dekr.add_argument("src", help="DEKR weights, e.g. pose_dekr_hrnetw32_coco.pth")
    dekr.add_argument("dst", help="bapose checkpoint to write, e.g. dekr_w32_coco.ckpt")
    dekr.add_argument("--meta", choices=("coco", "crowdpose"), default=None,
                      help="joint set (default from K: 17 coco, 14 crowdpose)")
    dekr.add_argument("--ann-file", default=None, help="COCO keypoint json whose category gives a custom joint set")
    dekr.add_argument("--input-size", type=int, default=None,
                      help="test short side stored in the checkpoint (default DEKR's: W32 512, W48 640, else 512)")
    rescore = sub.add_parser("dekr-rescore", help="DEKR's pose rescoring net -> a codec.rescore_path file")
    rescore.add_argument("src", help="e.g. final_rescore_coco_kpt.pth")
    rescore.add_argument("dst", help="file to write, e.g. dekr_rescore_coco.pt")
    rescore.add_argument("--meta", choices=("coco", "crowdpose"), default=None,
                         help="DEKR link set (default from the net's input width)")
    args = parser.parse_args(argv)

    def run() -> None:
        from bapose.checkpoints.convert import convert_dekr, convert_dekr_rescore, describe

        if args.format == "dekr":
            summary = convert_dekr(args.src, args.dst, meta=args.meta, ann_file=args.ann_file,
                                   input_size=args.input_size)
        else:
            summary = convert_dekr_rescore(args.src, args.dst, meta=args.meta)
        print(describe(summary), flush=True)

    exit_on_error("bapose-convert", run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
