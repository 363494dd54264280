"""Codec speed: encode and decode per image at 512 (grid 128) for 1 / 5 / 20 people and a tight crowd, one thread.

    python scripts/bench_codec.py                                   # writes benchmarks/codec.md
    python scripts/bench_codec.py --baseline /tmp/decode_base/src   # + decode of this tree against another checkout

DESIGN.md §7 targets: encode 20 people <= 5 ms, decode <= 5 ms per image (DEKR's own: 108.7 ms / 39 ms). The default
crowd rules (nearest-center offset ownership, collision-free centers, OKS pose NMS) are timed against DEKR's rules
(``codec=dekr``) call by call, so the ratio holds even when other jobs share the machine.

``--baseline SRC`` times the decode of the very same maps with this tree's ``bapose`` and with the one under ``SRC``
(e.g. a ``git worktree`` of an older commit), both imported into this process and called in turn, call by call, so
both see the same machine load.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from bapose.codecs import BAPoseCodec
from bapose.data.metadata import DatasetMeta
from bapose.predictor import decode, decode_multiscale
from bapose.utils.bench import machine, write_section

DEKR = {"offset_owner": "smaller", "center_collision": "ignore", "pose_nms": "dekr"}


def people(n: int, size: int, k: int, rng: np.random.Generator, spread: float | None = None) -> np.ndarray:
    """``n`` people of ~100 px at random positions (centres within ``spread`` px of the middle when given), all
    joints labelled: ``(n, k, 3)``."""
    if spread is None:
        centres = rng.uniform(60, size - 60, (n, 1, 2))
    else:
        centres = size / 2 + rng.uniform(-spread / 2, spread / 2, (n, 1, 2))
    xy = centres + rng.normal(0, 35, (n, k, 2))
    return np.concatenate([xy, np.full((n, k, 1), 2.0)], -1)


def interleaved(fns: list, repeat: int = 30, warmup: int = 3) -> list[float]:
    """Median seconds of each of ``fns``, called in turn (so load from other jobs hits all of them alike)."""
    import time

    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for fn, t in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            t.append(time.perf_counter() - t0)
    return [float(np.median(t)) for t in times]


# decode cases of --baseline: (label, decode knobs beyond the input size and sigmas, people, spread, scales)
DECODE_CASES = (("1", {}, 1, None, (1,)), ("5", {}, 5, None, (1,)), ("20", {}, 20, None, (1,)),
                ("20, tight crowd", {}, 20, 96.0, (1,)), ("20, DEKR's pose NMS", {"pose_nms": "dekr"}, 20, None, (1,)),
                ("20, refine_radius 2", {"refine_radius": 2}, 20, None, (1,)),
                ("20, scales (1, 2)", {}, 20, None, (1, 2)))


def _load_tree(src: str) -> dict[str, Any]:
    """``BAPoseCodec``, ``decode`` and ``decode_multiscale`` of the ``bapose`` under ``src``, imported beside this
    process's own (its modules are taken out of ``sys.modules`` again; its functions keep their own globals)."""
    mine = {name: mod for name, mod in sys.modules.items() if name == "bapose" or name.startswith("bapose.")}
    for name in mine:
        del sys.modules[name]
    sys.path.insert(0, src)
    try:
        import bapose.codecs as codecs

        try:
            from bapose.predictor import decode as dec, decode_multiscale as dec_ms
        except ImportError:  # before bapose.predictor: the codec's own methods
            def dec(codec, heatmaps, offsets):  # noqa: ANN001, ANN202
                return codec.decode(heatmaps, offsets)

            def dec_ms(codec, outputs, scales, base_hw):  # noqa: ANN001, ANN202
                return codec.decode_multiscale(outputs, scales, base_hw)
        tree = {"codec": codecs.BAPoseCodec, "decode": dec, "decode_multiscale": dec_ms,
                "file": codecs.__file__}
    finally:
        sys.path.remove(src)
        for name in [n for n in sys.modules if n == "bapose" or n.startswith("bapose.")]:
            del sys.modules[name]
        sys.modules.update(mine)
    return tree


def compare_decode(baseline: str, size: int, k: int, repeat: int = 300) -> list[str]:
    """Rows of the decode table: this tree's decode against ``baseline``'s (a ``src`` folder) on the same maps,
    call by call in this process."""
    trees = [{"codec": BAPoseCodec, "decode": decode, "decode_multiscale": decode_multiscale},
             _load_tree(str(Path(baseline).resolve()))]
    print(f"baseline: {trees[1]['file']}")
    sigmas = DatasetMeta.coco().sigmas
    rng = np.random.default_rng(1)
    rows = []
    for label, kw, n, spread, scales in DECODE_CASES:
        kp = people(n, size, k, rng, spread)
        maps = []
        for s in scales:  # perfect maps; scale s: the people at s x the size
            at = kp.copy()
            at[..., :2] = (at[..., :2] + 0.5) * s - 0.5
            t = BAPoseCodec(input_size=size, oks_sigmas=sigmas, **kw).encode(
                at, np.full(n, 100.0**2 * s * s), image_size=(size * s, size * s))
            maps.append((torch.from_numpy(t["heatmaps"])[None], torch.from_numpy(t["offsets"])[None]))
        fns = []
        for tree in trees:
            codec = tree["codec"](input_size=size, oks_sigmas=sigmas, **kw)
            if len(scales) == 1:
                fns.append(lambda tree=tree, codec=codec: tree["decode"](codec, *maps[0]))
            else:
                fns.append(lambda tree=tree, codec=codec: tree["decode_multiscale"](
                    codec, maps, [(float(s), float(s)) for s in scales], (size, size)))
        this, base = interleaved(fns, repeat=repeat, warmup=10)
        found = [len(fn()[0].scores) for fn in fns]
        rows.append(f"| {label} | {this * 1e3:.2f} | {base * 1e3:.2f} | {this / base:.2f} | {found[0]} / {found[1]} |")
        print(rows[-1])
        if label == "20":  # the noise of this comparison: the baseline against itself, the same way
            again, base = interleaved([fns[1], fns[1]], repeat=repeat, warmup=10)
            rows.append(f"| 20, baseline against itself | {again * 1e3:.2f} | {base * 1e3:.2f} | {again / base:.2f} "
                        f"| {found[1]} / {found[1]} |")
            print(rows[-1])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", help="src folder of another checkout: its decode timed against this tree's")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)  # the ignore-mask downsample; dataloader workers run one thread each too
    size, k = 512, 17
    sigmas = DatasetMeta.coco().sigmas
    ours = BAPoseCodec(input_size=size, oks_sigmas=sigmas)
    dekr = BAPoseCodec(input_size=size, oks_sigmas=sigmas, **DEKR)
    rng = np.random.default_rng(0)
    mask = np.zeros((size, size), bool)
    mask[:64, :64] = True
    load = os.getloadavg()[0]
    rows = []
    for label, n, spread in (("1", 1, None), ("5", 5, None), ("20", 20, None), ("20, tight crowd", 20, 96.0)):
        kp, areas = people(n, size, k, rng, spread), np.full(n, 100.0**2)
        enc, enc_dekr = interleaved([lambda: ours.encode(kp, areas, mask), lambda: dekr.encode(kp, areas, mask)])
        found = []
        decs = []
        for codec in (ours, dekr):
            t = codec.encode(kp, areas, mask)
            hm, off = torch.from_numpy(t["heatmaps"])[None], torch.from_numpy(t["offsets"])[None]
            decs.append(lambda codec=codec, hm=hm, off=off: decode(codec, hm, off))
            found.append(len(decode(codec, hm, off)[0].scores))
        dec, dec_dekr = interleaved(decs)
        moved = int((ours.layout(kp, areas, (size // 4, size // 4)).status != 0).sum())
        rows.append(f"| {label} | {enc * 1e3:.2f} | {enc_dekr * 1e3:.2f} | {enc / enc_dekr:.2f} | {dec * 1e3:.2f} | "
                    f"{dec_dekr * 1e3:.2f} | {moved} | {found[0]} / {found[1]} |")
        print(rows[-1])
    compared = compare_decode(args.baseline, size, k) if args.baseline else []
    commit = ""
    if args.baseline:  # name the baseline's commit when it is a git checkout
        import subprocess

        res = subprocess.run(["git", "-C", args.baseline, "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True)
        commit = f" (commit {res.stdout.strip()})" if res.returncode == 0 else ""
    load = max(load, os.getloadavg()[0])
    md = [
        "## Codec (targets and decoding)",
        "",
        f"`scripts/bench_codec.py`, input {size}x{size} (grid {size // 4}), K={k}, 1 thread, median of 30; the "
        "default rules and DEKR's (`codec=dekr`) timed call by call. People ~100 px at random places; the tight "
        f"crowd has all 20 centres within 96 px. Machine: {machine()}; load average {load:.1f} while it ran.",
        "DESIGN §7 targets: encode 20 people <= 5 ms, decode <= 5 ms (DEKR: 108.7 ms / 39 ms).",
        "",
        "| people | encode ms | encode ms, DEKR rules | ratio | decode ms | decode ms, DEKR rules | centers moved "
        "| people decoded (ours / DEKR rules) |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
    ]
    if compared:
        md += ["", f"Decode (`bapose.predictor.decode` / `decode_multiscale`), this tree against the `bapose` of "
               f"`{args.baseline}`{commit} (`python scripts/bench_codec.py --baseline {args.baseline}`): the same maps "
               "(perfect targets of 20 people unless named, default rules unless named), both trees imported in "
               "this process and called in turn, median of 300 calls each; ratio = this / baseline.",
               "", "| case | decode ms | decode ms, baseline | ratio | people (this / baseline) |",
               "|---|---|---|---|---|", *compared]
    print(f"wrote {write_section('codec', chr(10).join(md))}")


if __name__ == "__main__":
    main()
