"""Codec speed: encode and decode per image at 512 (grid 128) for 1 / 5 / 20 people and a tight crowd, one thread.

    python scripts/bench_codec.py        # writes benchmarks/codec.md

DESIGN.md §7 targets: encode 20 people <= 5 ms, decode <= 5 ms per image (DEKR's own: 108.7 ms / 39 ms). The default
crowd rules (nearest-center offset ownership, collision-free centers, OKS pose NMS) are timed against DEKR's rules
(``codec=dekr``) call by call, so the ratio holds even when other jobs share the machine.
"""

from __future__ import annotations

import os

import cv2
import numpy as np
import torch

from bapose.codecs import BAPoseCodec
from bapose.data.metadata import DatasetMeta
from bapose.utils.bench import machine, write_section

# conf/codec/dekr.yaml
DEKR = {"offset_owner": "smaller", "center_collision": "ignore", "pose_nms": "dekr", "heatmap_window": "dekr"}


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


def main() -> None:
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
            decs.append(lambda codec=codec, hm=hm, off=off: codec.decode(hm, off))
            found.append(len(codec.decode(hm, off)[0].scores))
        dec, dec_dekr = interleaved(decs)
        moved = int((ours.layout(kp, areas, (size // 4, size // 4)).status != 0).sum())
        rows.append(f"| {label} | {enc * 1e3:.2f} | {enc_dekr * 1e3:.2f} | {enc / enc_dekr:.2f} | {dec * 1e3:.2f} | "
                    f"{dec_dekr * 1e3:.2f} | {moved} | {found[0]} / {found[1]} |")
        print(rows[-1])
    load = max(load, os.getloadavg()[0])
    md = "\n".join([
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
    ])
    print(f"wrote {write_section('codec', md)}")


if __name__ == "__main__":
    main()
