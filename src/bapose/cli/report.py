"""``bapose-report``: a sweep (or several) -> ``report.md``, ``report.csv``, ``report.png``.

    bapose-report outputs/train/multiruns/2026-05-01_12-00-00
    bapose-report outputs/train/multiruns/A outputs/train/multiruns/B --metric test/AP --sort input_size -o reports/ab
    bapose-report outputs/train/runs/run_a outputs/train/runs/run_b         # single runs, as one sweep
    bapose-report wandb:ENTITY/bapose/groups/train-2026-05-01_12-00-00      # a W&B group (online, wandb.Api)

One row per configuration (the swept keys that vary), seeds folded into mean ± std with n, the best row marked,
failed / unfinished jobs listed with their error line. Run folders are read from the files bapose-train writes
(metrics.json, status.json, .hydra/), with or without W&B. See :mod:`bapose.report`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bapose.errors import exit_on_error


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bapose-report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", nargs="+", metavar="SWEEP_DIR",
                        help="sweep folders, run folders, wandb:ENTITY/PROJECT/groups/NAME or "
                             "wandb:ENTITY/PROJECT/sweeps/ID")
    parser.add_argument("-o", "--out", default=None,
                        help="folder for report.md/.csv/.png (default: the first SWEEP_DIR, or . for W&B sources)")
    parser.add_argument("--metric", default="val/AP", help="ranks the rows and marks the best (default val/AP)")
    parser.add_argument("--sort", default="metric",
                        help="'metric', a swept key (e.g. input_size) or a column (AP50, n, params, GFLOPs, time)")
    order = parser.add_mutually_exclusive_group()
    order.add_argument("--ascending", dest="descending", action="store_false", default=None)
    order.add_argument("--descending", dest="descending", action="store_true", default=None)
    parser.add_argument("--fold", nargs="*", default=["seed"],
                        help="keys folded into mean ± std (repeats of one configuration; default: seed)")
    parser.add_argument("--lower-is-better", action="store_true", help="the metric is minimised")
    parser.add_argument("--no-cost", action="store_true", help="skip counting params / GFLOPs")
    parser.add_argument("-q", "--quiet", action="store_true", help="do not print the table")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    from bapose.report import is_wandb_spec, sweep_report

    out = args.out
    if out is None:
        first = args.sources[0]
        out = "." if is_wandb_spec(first) or not Path(first).is_dir() else first
    report = sweep_report(args.sources, out_dir=out, metric=args.metric, sort=args.sort,
                          descending=args.descending, fold=tuple(args.fold), higher_is_better=not args.lower_is_better,
                          cost=not args.no_cost)
    if not args.quiet:
        print(report.markdown())
    print(f"wrote {', '.join(str(p) for p in report.files.values())}")
    return 0


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    sys.exit(exit_on_error("bapose-report", lambda: run(args)))


if __name__ == "__main__":
    main()
