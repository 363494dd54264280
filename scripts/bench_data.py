"""Per-worker speed of the training data pipeline at 512, split into read / augment / encode, next to the floor.

    python scripts/bench_data.py [--input-size 512] [--repeat 30]

The floor is what no pipeline can beat: ``cv2.imread`` of the JPEG plus one ``warpAffine`` to 512². The pipeline is
``CocoKeypointDataset.__getitem__`` exactly as a DataLoader worker runs it (read + RGB, annotations and ignore mask,
one warpAffine for image and mask, keypoint math, codec encode, tensors). Measured single-threaded on the real COCO
sample images (../shared/data/coco_sample: 4 images, 1-5 people each); writes ``benchmarks/data.md``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from bapose.codecs import BAPoseCodec
from bapose.data.dataset import (
    CocoKeypointDataset,
    configure_worker_process,
    limit_cv2_threads_before_fork,
    read_image,
)
from bapose.utils.bench import machine, write_section

REPO = Path(__file__).resolve().parents[1]


def _median_ms(fn, items, repeat: int, warmup: bool = True) -> float:
    """Median over ``repeat`` passes of the mean per-item time of ``fn(item)``, in ms."""
    for item in items if warmup else ():  # warm-up (page cache, lazy imports)
        fn(item)
    passes = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for item in items:
            fn(item)
        passes.append((time.perf_counter() - t0) / len(items))
    return 1000 * statistics.median(passes)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input-size", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("BAPOSE_SHARED", REPO.parent / "shared"))
                        / "data" / "coco_sample")
    args = parser.parse_args(argv)
    limit_cv2_threads_before_fork()
    configure_worker_process()  # what BAPoseDataModule's worker_init_fn does: 1 torch thread, malloc tuned
    size = args.input_size
    codec = BAPoseCodec(size)
    ds = CocoKeypointDataset(args.data / "test_coco.json", args.data, codec=codec, train=True, input_size=size)
    paths = [str(ds.image_dir / ds._images[i]["file_name"]) for i in ds.ids]
    people = [len(ds.annotations(i)[0]) for i in ds.ids]
    rng = np.random.default_rng(0)

    warp = cv2.getRotationMatrix2D((size / 2, size / 2), 15.0, 1.1)

    def floor_sample(path: str) -> np.ndarray:  # decode + one warp to the input size: the least any pipeline does
        return cv2.warpAffine(cv2.imread(path, cv2.IMREAD_COLOR), warp, (size, size))

    def staged_sample(index: int) -> np.ndarray:
        """``__getitem__``'s steps one after the other, each timed: (read, annotations, augment, encode, tensors)."""
        image_id = ds.ids[index]
        t = [time.perf_counter()]
        image = read_image(paths[index])
        t.append(time.perf_counter())
        kp, areas, mask = ds.annotations(image_id)
        t.append(time.perf_counter())
        out = ds.transform(image, kp, areas, mask, rng=rng)
        t.append(time.perf_counter())
        targets = codec.encode(out["keypoints"], out["areas"], out["ignore_mask"])
        t.append(time.perf_counter())
        _ = [torch.from_numpy(out["image"]).permute(2, 0, 1)] + [torch.from_numpy(v) for v in targets.values()]
        t.append(time.perf_counter())
        return np.diff(t)

    for i in range(len(ds)):  # warm-up: page cache, lazy imports, allocator
        floor_sample(paths[i]), staged_sample(i), ds[i]
    # interleaved passes (floor, stages, whole, floor, ...): other load on the machine hits all three alike
    floors, stages, wholes, ratios = [], [], [], []
    for _ in range(args.repeat):
        f = _median_ms(floor_sample, paths, 1, warmup=False)
        stages.append(np.mean([staged_sample(i) for i in range(len(ds))], axis=0) * 1000)
        w = _median_ms(ds.__getitem__, range(len(ds)), 1, warmup=False)
        floors.append(f), wholes.append(w), ratios.append(w / f)
    floor, total, ratio = statistics.median(floors), statistics.median(wholes), statistics.median(ratios)
    read, annots, augment, encode, tensors = np.median(np.asarray(stages), axis=0)
    floor_read = _median_ms(lambda p: cv2.imread(p, cv2.IMREAD_COLOR), paths, args.repeat)

    rows = [
        ("read (cv2.imread, RGB)", read), ("annotations + ignore mask", annots),
        ("augment (one warpAffine + keypoints)", augment), ("encode (BAPoseCodec)", encode),
        ("tensor views", tensors), ("**whole sample (`__getitem__`)**", total),
        ("floor: cv2.imread", floor_read), ("**floor: cv2.imread + one warpAffine**", floor),
    ]
    lines = [
        "## Data pipeline (training sample, per worker)",
        "",
        f"Input {size}², one worker process as the datamodule sets it up (`configure_worker_process`: 1 thread for "
        "torch and cv2, glibc malloc keeping large blocks; without the malloc tuning a sample costs ~1 ms more), "
        "real COCO sample images "
        f"({len(ds)} images, {min(people)}-{max(people)} labelled people each), median of {args.repeat} passes; "
        "the stages are timed one after the other inside the same sample, as a worker runs them. "
        f"Machine: {machine()}.",
        "",
        "| stage | ms / sample | samples / s |",
        "|---|---|---|",
        *[f"| {name} | {ms:.2f} | {1000 / ms:.0f} |" for name, ms in rows],
        "",
        f"Whole training sample = **{ratio:.2f}x the read+warp floor** (target <= 2x; median ratio of "
        f"{args.repeat} interleaved floor/pipeline passes, robust to other load on the machine).",
    ]
    md = "\n".join(lines)
    out = write_section("data", md)
    print(md)
    print(f"\nwrote {out}")
    return md


if __name__ == "__main__":
    main()
