"""``bapose-convert dekr`` speed on DEKR's released layouts (W32 / W48, K = 17), next to the file I/O it cannot avoid.

    python scripts/bench_convert.py        # writes benchmarks/convert.md

The weights are the reference rule's (``../shared/data/dekr_reference/dekr_state_dict.py``) on the official key
layouts; the floor is ``torch.load`` of the DEKR file + ``torch.save`` of the same tensors (what any conversion
reads and writes). ``bapose.load_model`` of the result is timed too (what eval / predict / export pay).
"""

from __future__ import annotations

import importlib.util
import json
import os
import tempfile
from pathlib import Path

import torch

import bapose
from bapose.checkpoints.convert import convert_dekr
from bapose.utils.bench import machine, timeit, write_section

REPO = Path(__file__).resolve().parents[1]


def reference_dir() -> Path:
    root = Path(os.environ.get("BAPOSE_SHARED", REPO.parent / "shared"))
    return root / "data" / "dekr_reference"


def main() -> None:
    torch.set_num_threads(2)
    ref = reference_dir()
    spec = importlib.util.spec_from_file_location("dekr_state_dict", ref / "dekr_state_dict.py")
    rule = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rule)
    rows = []
    load_avg = os.getloadavg()[0]  # other work on the machine inflates every figure: say how much there was
    with tempfile.TemporaryDirectory() as tmp:
        for keys_json in sorted(ref.glob("dekr_w*_k17_*.keys.json")):
            width = json.loads(keys_json.read_text())["width"]
            if width not in ("w32", "w48"):
                continue
            state = rule.dekr_state_dict(keys_json)
            src, dst = Path(tmp) / f"{width}.pth", Path(tmp) / f"{width}.ckpt"
            torch.save(state, src)
            mb = src.stat().st_size / 1e6
            floor = timeit(lambda: torch.save(torch.load(src, weights_only=True), Path(tmp) / "copy.pth"), repeat=3)
            conv = timeit(lambda: convert_dekr(src, dst), repeat=3)
            load = timeit(lambda: bapose.load_model(dst), repeat=3)
            rows.append(f"| DEKR HRNet-{width.upper()} | {len(state)} | {mb:.0f} | {conv:.2f} | {floor:.2f} | "
                        f"{conv / floor:.1f}x | {load:.2f} |")
            print(rows[-1], flush=True)
    md = "\n".join([
        "## DEKR checkpoint conversion",
        "",
        f"`scripts/bench_convert.py`: `convert_dekr` on DEKR's official layouts (K=17), median of 3, 2 torch threads. "
        f"Machine: {machine()}; 1-min load average {load_avg:.1f} when it started.",
        "Floor: `torch.load` of the DEKR file + `torch.save` of its tensors, the I/O any conversion does.",
        "",
        "| file | DEKR tensors | MB | convert s | floor s | convert / floor | `bapose.load_model` s |",
        "|---|---|---|---|---|---|---|",
        *rows,
    ])
    print(f"wrote {write_section('convert', md)}")


if __name__ == "__main__":
    main()
