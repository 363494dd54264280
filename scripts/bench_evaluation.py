"""Keypoint scoring speed: pycocotools vs faster-coco-eval on 5,000 generated images, and that they agree.

    python scripts/bench_evaluation.py                 # writes benchmarks/evaluation.md (~15 s)
    python scripts/bench_evaluation.py --images 2000 --repeats 3

The ground truth is generated (COCO-17, 1-4 people per image, ~2.5 on average, sizes from small to large, some
joints unlabelled) and the predictions are the ground truth perturbed per person by a random amount in OKS units,
with missed people and false positives, so every AP / AR threshold and area range has work to do. Both backends
run through ``bapose.evaluation.KeypointEvaluator`` exactly as validation does; ``compute()`` is what is timed, then
split into building the backend's COCO objects and COCOeval's evaluate + accumulate + summarize.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time

import numpy as np

from bapose.data.metadata import DatasetMeta
from bapose.evaluation import COCO_KEYS, KeypointEvaluator
from bapose.utils.bench import machine, timeit, write_section

# DESIGN.md §7, measured on this kind of machine: 2,000 images / 9,930 people
REFERENCE = {"images": 2000, "people": 9930, "pycocotools": 4.3, "faster": 1.8}


def make_ground_truth(num_images: int, meta: DatasetMeta, rng: np.random.Generator,
                      width: int = 640, height: int = 480) -> dict:
    """A COCO keypoint ground truth of ``num_images`` images with 1-4 people each (vectorised over people)."""
    k = meta.num_keypoints
    counts = rng.integers(1, 5, num_images)  # 1..4 people, 2.5 on average
    image_of = np.repeat(np.arange(1, num_images + 1), counts)
    n = len(image_of)
    # person height log-uniform in [20, 400] px: small (< 32²), medium and large COCO areas all occur
    h = np.exp(rng.uniform(np.log(20), np.log(400), n))
    w = h * rng.uniform(0.35, 0.7, n)
    x0 = rng.uniform(0, np.maximum(width - w, 1))
    y0 = rng.uniform(0, np.maximum(height - h, 1))
    xy = np.stack((x0[:, None] + rng.uniform(0, 1, (n, k)) * w[:, None],
                   y0[:, None] + rng.uniform(0, 1, (n, k)) * h[:, None]), -1)  # (n, k, 2)
    v = rng.choice([0, 1, 2], size=(n, k), p=[0.15, 0.15, 0.7])
    v[np.arange(n), rng.integers(0, k, n)] = 2  # every person has at least one labelled joint
    kp = np.concatenate((np.where(v[..., None] > 0, xy, 0.0), v[..., None]), -1)  # (n, k, 3), COCO zeros unlabelled
    area = w * h * rng.uniform(0.5, 0.8, n)  # segment area: a share of the box
    images = [{"id": i, "width": width, "height": height, "file_name": f"{i:012d}.jpg"}
              for i in range(1, num_images + 1)]
    annotations = [{"id": j + 1, "image_id": int(image_of[j]), "category_id": 1, "iscrowd": 0,
                    "bbox": [round(float(x0[j]), 2), round(float(y0[j]), 2), round(float(w[j]), 2),
                             round(float(h[j]), 2)],
                    "area": round(float(area[j]), 2), "num_keypoints": int((v[j] > 0).sum()),
                    "keypoints": [round(float(c), 2) for c in kp[j].reshape(-1)]} for j in range(n)]
    return {"images": images, "annotations": annotations,
            "categories": [{"id": 1, "name": "person", "keypoints": list(meta.keypoints)}]}


def make_predictions(gt: dict, meta: DatasetMeta, rng: np.random.Generator,
                     ) -> tuple[list[int], list[np.ndarray], list[np.ndarray]]:
    """Per image ``(M, K, 3)`` poses and ``(M,)`` scores: 90 % of people found with an error of a random number of
    OKS sigmas (so OKS spans 0..1), plus ~0.3 false positives per image; scores follow quality, with noise."""
    k = meta.num_keypoints
    anns = gt["annotations"]
    kp = np.asarray([a["keypoints"] for a in anns], np.float64).reshape(-1, k, 3)
    box = np.asarray([a["bbox"] for a in anns], np.float64)
    area = np.asarray([a["area"] for a in anns], np.float64)
    image_of = np.asarray([a["image_id"] for a in anns])
    n = len(anns)
    found = rng.uniform(size=n) < 0.9
    # OKS of a joint is exp(-d² / (2 s² κ²)) with s² = area, κ = 2σ: an error of `quality` κ·s gives
    # OKS ≈ exp(-quality²/2) per joint
    quality = rng.uniform(0.05, 1.6, n)
    kappa = 2 * np.asarray(meta.sigmas, np.float64)
    err = rng.normal(size=(n, k, 2)) / np.sqrt(2) * (quality[:, None] * np.sqrt(area)[:, None] * kappa)[..., None]
    # unlabelled joints: a guess somewhere in the box
    guess = box[:, None, :2] + rng.uniform(0, 1, (n, k, 2)) * box[:, None, 2:]
    xy = np.where(kp[..., 2:3] > 0, kp[..., :2] + err, guess)
    poses = np.concatenate((xy, rng.uniform(0.1, 1, (n, k, 1))), -1)
    scores = np.clip(np.exp(-quality) + rng.normal(0, 0.1, n), 0.01, 1)
    # false positives: a real person's pose moved elsewhere, low scores
    num_images = len(gt["images"])
    num_fp = rng.poisson(0.3 * num_images)
    fp_src = rng.integers(0, n, num_fp)
    fp_img = rng.integers(1, num_images + 1, num_fp)
    fp_poses = poses[fp_src].copy()
    fp_poses[..., :2] += rng.uniform(-200, 200, (num_fp, 1, 2))
    fp_scores = rng.uniform(0.01, 0.4, num_fp)

    all_img = np.concatenate((image_of[found], fp_img))
    all_poses = np.concatenate((poses[found], fp_poses))
    all_scores = np.concatenate((scores[found], fp_scores))
    order = np.argsort(all_img, kind="stable")
    all_img, all_poses, all_scores = all_img[order], all_poses[order], all_scores[order]
    ids, starts = np.unique(all_img, return_index=True)
    bounds = list(starts[1:]) + [len(all_img)]
    return ([int(i) for i in ids], [all_poses[a:b] for a, b in zip(starts, bounds)],
            [all_scores[a:b] for a, b in zip(starts, bounds)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=2, help="timed compute() calls per backend (median)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    # import both backends before any timing: their import time is not scoring time
    import faster_coco_eval  # noqa: F401
    import pycocotools.cocoeval  # noqa: F401

    meta = DatasetMeta.coco()
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    gt = make_ground_truth(args.images, meta, rng)
    ids, poses, scores = make_predictions(gt, meta, rng)
    num_people, num_dets = len(gt["annotations"]), sum(len(s) for s in scores)
    print(f"generated {args.images} images, {num_people} people, {num_dets} detections "
          f"in {time.perf_counter() - t0:.1f} s", flush=True)

    stats, times, setup, build, run = {}, {}, {}, {}, {}
    for backend in ("pycocotools", "faster"):
        t0 = time.perf_counter()
        evaluator = KeypointEvaluator(gt, meta, mode="coco", backend=backend)
        evaluator.update(ids, poses, scores)
        setup[backend] = time.perf_counter() - t0
        times[backend] = timeit(lambda: stats.__setitem__(backend, evaluator.compute()), repeat=args.repeats,
                                warmup=0)
        # where compute() spends it: building the backend's COCO objects (copies, indexes, loadRes) vs COCOeval's
        # evaluate + accumulate + summarize (what DESIGN's reference times)
        results = [r for res in evaluator._results.values() for r in res]
        t0 = time.perf_counter()
        cocoeval = evaluator._cocoeval(results)
        build[backend] = time.perf_counter() - t0
        run[backend] = timeit(lambda: evaluator._run(cocoeval, sorted(evaluator.image_ids)), repeat=1, warmup=0)
        print(f"{backend}: compute() {times[backend]:.2f} s = build {build[backend]:.2f} s + evaluate "
              f"{run[backend]:.2f} s (setup + update {setup[backend]:.2f} s), AP {stats[backend]['AP']:.6f}",
              flush=True)

    diffs = {key: abs(stats["pycocotools"][key] - stats["faster"][key]) for key in COCO_KEYS}
    max_diff = max(diffs.values())
    identical = max_diff < 1e-9
    per_ref = {b: REFERENCE[b] / REFERENCE["people"] * 1e6 for b in ("pycocotools", "faster")}
    per_ours = {b: run[b] / num_people * 1e6 for b in run}
    rows = [f"| {b} | {times[b]:.2f} | {build[b]:.2f} | {run[b]:.2f} | {setup[b]:.2f} | {per_ours[b]:.0f} | "
            f"{REFERENCE[b]:.1f} | {per_ref[b]:.0f} | {per_ours[b] / per_ref[b]:.2f} |"
            for b in ("pycocotools", "faster")]
    stat_rows = [f"| {key} | {stats['pycocotools'][key]:.6f} | {stats['faster'][key]:.6f} | {diffs[key]:.1e} |"
                 for key in COCO_KEYS]
    speedup, ref_speedup = times["pycocotools"] / times["faster"], REFERENCE["pycocotools"] / REFERENCE["faster"]
    run_speedup = run["pycocotools"] / run["faster"]
    md = "\n".join([
        "## Evaluation: pycocotools vs faster-coco-eval",
        "",
        f"`{shlex.join(['python', 'scripts/bench_evaluation.py', *sys.argv[1:]])}`: {args.images} generated COCO-17 "
        f"images, {num_people} people ({num_people / args.images:.2f} per image), {num_dets} detections (90 % of "
        "people found with random OKS error, ~0.3 false positives per image). Timed: `KeypointEvaluator."
        f"compute()` (median of {args.repeats}) and, once, its two parts; setup = building the evaluator "
        "(ground-truth checks) and `update()`, not part of scoring. "
        f"Machine: {machine()}.",
        "",
        "| backend | compute() s | of it: COCO objects s | of it: evaluate+accumulate+summarize s | "
        "setup + update s | evaluate ms per 1,000 people | reference s (DESIGN §7) | reference ms per 1,000 people | "
        "ours / reference per person |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"faster-coco-eval is {speedup:.2f}x faster than pycocotools in `compute()` and {run_speedup:.2f}x in "
        f"evaluate+accumulate+summarize (reference: {ref_speedup:.1f}x, {REFERENCE['images']:,} images / "
        f"{REFERENCE['people']:,} people). `COCO objects`: the evaluator's copies of ground truth and results, the "
        "index and `loadRes`, rebuilt on every `compute()`.",
        "",
        f"Same numbers: **{'yes' if identical else 'NO'}** (largest difference {max_diff:.1e} over the 10 stats).",
        "",
        "| stat | pycocotools | faster-coco-eval | difference |",
        "|---|---|---|---|",
        *stat_rows,
    ])
    print(f"wrote {write_section('evaluation', md)}")
    if not identical:
        sys.exit(f"pycocotools and faster-coco-eval disagree: largest stat difference {max_diff:.3g}")


if __name__ == "__main__":
    main()
