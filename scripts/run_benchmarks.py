"""`make bench`: run every scripts/bench_*.py, then assemble BENCHMARKS.md from their sections.

Each bench script writes `benchmarks/<name>.md` (see bapose.utils.bench.write_section); a script that fails leaves
its previous section in place and the failure is reported here, so one broken benchmark never hides the others.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from bapose.utils.bench import SECTIONS_DIR, machine

REPO = Path(__file__).resolve().parents[1]
# order of sections in BENCHMARKS.md
ORDER = ["model", "adaptive", "codec", "data", "evaluation", "layout", "training", "rank0", "wandb_media", "convert", "gpu"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="*", help="bench names to run (default: all scripts/bench_*.py)")
    parser.add_argument("--skip-run", action="store_true", help="only reassemble BENCHMARKS.md from sections")
    args = parser.parse_args()

    scripts = sorted((REPO / "scripts").glob("bench_*.py"))
    if args.only:
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in args.only]
    failures = []
    started = time.perf_counter()
    if not args.skip_run:
        for script in scripts:
            t0 = time.perf_counter()
            print(f"== {script.name}", flush=True)
            proc = subprocess.run([sys.executable, str(script)], cwd=REPO)
            print(f"   {script.name}: exit {proc.returncode} in {time.perf_counter() - t0:.0f} s", flush=True)
            if proc.returncode != 0:
                failures.append(script.name)

    sections = {p.stem: p.read_text() for p in SECTIONS_DIR.glob("*.md")}
    names = [n for n in ORDER if n in sections] + sorted(n for n in sections if n not in ORDER)
    body = "\n\n".join(sections[n].rstrip() for n in names)
    header = (
        "# bapose benchmarks\n\n"
        "Every figure is measured by a script in `scripts/bench_*.py`, run by `make bench` "
        "(`python scripts/run_benchmarks.py`), which rewrites this file from the sections in `benchmarks/`. "
        "Each row is compared side by side with its reference, measured in the same process; ratios are quoted.\n\n"
        f"Assembled on: {machine()}\n"
    )
    if not args.skip_run:
        which = "all of `scripts/bench_*.py`" if not args.only else ", ".join(f"`bench_{n}`" for n in args.only)
        header += f"\nThis run ({which}) took {time.perf_counter() - started:.0f} s in all.\n"
    (REPO / "BENCHMARKS.md").write_text(header + "\n" + body + "\n")
    if failures:
        print(f"benchmarks that failed: {', '.join(failures)}", file=sys.stderr)
        return 1
    print(f"wrote {REPO / 'BENCHMARKS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
