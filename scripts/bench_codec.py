"""Codec speed: encode and decode per image at 512 (grid 128) for 1 / 5 / 20 people, one thread.

    python scripts/bench_codec.py        # writes benchmarks/codec.md

DESIGN.md §7 targets: encode 20 people <= 5 ms, decode <= 5 ms per image (DEKR's own: 108.7 ms / 39 ms).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from bapose.codecs import BAPoseCodec
from bapose.utils.bench import machine, timeit, write_section


def people(n: int, size: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` people of ~100 px spread at random positions, all joints labelled: ``(n, k, 3)``."""
    centres = rng.uniform(60, size - 60, (n, 1, 2))
    xy = centres + rng.normal(0, 35, (n, k, 2))
    return np.concatenate([xy, np.full((n, k, 1), 2.0)], -1)


def main() -> None:
    torch.set_num_threads(1)
    cv2.setNumThreads(1)  # the ignore-mask downsample; dataloader workers run one thread each too
    size, k = 512, 17
    codec = BAPoseCodec(input_size=size)
    rng = np.random.default_rng(0)
    mask = np.zeros((size, size), bool)
    mask[:64, :64] = True
    rows = []
    for n in (1, 5, 20):
        kp, areas = people(n, size, k, rng), np.full(n, 100.0**2)
        enc = timeit(lambda: codec.encode(kp, areas, mask), repeat=30, warmup=3)
        t = codec.encode(kp, areas, mask)
        hm, off = torch.from_numpy(t["heatmaps"])[None], torch.from_numpy(t["offsets"])[None]
        dec = timeit(lambda: codec.decode(hm, off), repeat=30, warmup=3)
        found = len(codec.decode(hm, off)[0].scores)
        rows.append(f"| {n} | {enc * 1e3:.2f} | {1 / enc:.0f} | {dec * 1e3:.2f} | {1 / dec:.0f} | {found} |")
        print(rows[-1])
    md = "\n".join([
        "## Codec (targets and decoding)",
        "",
        f"`scripts/bench_codec.py`, input {size}x{size} (grid {size // 4}), K={k}, 1 thread, median of 30. "
        f"Machine: {machine()}.",
        "DESIGN §7 targets: encode 20 people <= 5 ms, decode <= 5 ms (DEKR: 108.7 ms / 39 ms).",
        "",
        "| people | encode ms | encode img/s | decode ms | decode img/s | people decoded |",
        "|---|---|---|---|---|---|",
        *rows,
    ])
    print(f"wrote {write_section('codec', md)}")


if __name__ == "__main__":
    main()
