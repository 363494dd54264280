"""The stages rank 0 runs alone while the other DDP ranks wait in a collective: against the process-group timeout.

    python scripts/bench_rank0.py                        # writes benchmarks/rank0.md (~3 min on 2 cores)
    python scripts/bench_rank0.py --train-images 20000 --val-images 2000

After fit, ``bapose-train`` gathers every rank's people and rank 0 alone (1) scores the final evaluation
(``KeypointEvaluator.compute`` on the gathered people, the backend validation uses) and, with ``rescore.enabled``,
(2) fits the rescoring net on the training-set predictions (``bapose.training.rescoring.fit_rescore_net``: the OKS
targets, DEKR's 20 epochs of the MLP, the file); the other ranks wait in a broadcast meanwhile, and a wait longer
than the process group's ``timeout`` (``trainer.strategy.timeout``, torch's default 30 min) ends the run. Both stages
run here on generated data of COCO's size: the scored set is COCO val's 5,000 images with up to 20 people per image
(what the decoder keeps: ``codec.max_people``), the rescoring set 150,000 predictions (COCO train's 64,115 images
with people, ~2.3 kept predictions each). The people come from ``scripts/bench_evaluation.py``'s generator (ground
truth, then predictions perturbed by a random number of OKS sigmas, missed people, false positives).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bapose.data.metadata import DatasetMeta
from bapose.evaluation import KeypointEvaluator
from bapose.training.rescoring import Predictions, RescoreOptions, fit_rescore_net
from bapose.utils.bench import machine, write_section

sys.path.insert(0, str(Path(__file__).parent))
from bench_evaluation import make_ground_truth, make_predictions  # noqa: E402 - the scoring benchmark's people

TIMEOUT_MIN = 30  # conf/trainer/ddp.yaml's strategy.timeout (torch's default)


def pad_to(ids, poses, scores, per_image: int, rng: np.random.Generator):
    """Add low-score false positives until every image has ``per_image`` people (the decoder's ``max_people``)."""
    out_p, out_s = [], []
    for p, s in zip(poses, scores, strict=True):
        extra = per_image - len(p)
        if extra > 0:
            src = p[rng.integers(0, len(p), extra)].copy()
            src[..., :2] += rng.uniform(-150, 150, (extra, 1, 2))
            p, s = np.concatenate((p, src)), np.concatenate((s, rng.uniform(0.01, 0.2, extra)))
        out_p.append(p)
        out_s.append(s)
    return ids, out_p, out_s


def time_scoring(images: int, per_image: int, meta: DatasetMeta, rng: np.random.Generator) -> dict:
    gt = make_ground_truth(images, meta, rng)
    ids, poses, scores = make_predictions(gt, meta, rng)
    if per_image:
        ids, poses, scores = pad_to(ids, poses, scores, per_image, rng)
    evaluator = KeypointEvaluator(gt, meta, mode="coco")
    evaluator.update(ids, poses, scores)
    t0 = time.perf_counter()
    stats = evaluator.compute()
    return {"images": images, "people": len(gt["annotations"]), "detections": sum(len(s) for s in scores),
            "seconds": time.perf_counter() - t0, "AP": stats["AP"]}


def time_rescoring(images: int, meta: DatasetMeta, rng: np.random.Generator, epochs: int) -> dict:
    gt = make_ground_truth(images, meta, rng)
    ids, poses, scores = make_predictions(gt, meta, rng)
    preds = Predictions(np.concatenate([np.full(len(p), i, np.int64) for i, p in zip(ids, poses, strict=True)]),
                        np.concatenate(poses).astype(np.float32), np.concatenate(scores).astype(np.float32))
    opts = RescoreOptions(enabled=True, epochs=epochs)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        stats = fit_rescore_net(gt, preds, meta, "coco", opts, Path(tmp) / "rescore.pt")
        seconds = time.perf_counter() - t0
    return {"images": images, "predictions": len(preds), "fitted": stats.get("rescore/predictions", 0),
            "seconds": seconds, "epochs": epochs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--val-images", type=int, default=5000, help="scored images (COCO val: 5,000)")
    parser.add_argument("--per-image", type=int, default=20, help="people kept per image (codec.max_people)")
    parser.add_argument("--train-images", type=int, default=20000,
                        help="training images predicted on for the rescoring fit (~2.5 predictions each)")
    parser.add_argument("--coco-predictions", type=int, default=150_000)
    parser.add_argument("--epochs", type=int, default=20, help="rescore.epochs (DEKR RESCORE.END_EPOCH)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    meta = DatasetMeta.coco()
    rng = np.random.default_rng(args.seed)
    t_all = time.perf_counter()
    plain = time_scoring(args.val_images, 0, meta, rng)
    full = time_scoring(args.val_images, args.per_image, meta, rng)
    print(f"scoring: {plain} / {full}", flush=True)
    fit = time_rescoring(args.train_images, meta, rng, args.epochs)
    print(f"rescoring fit: {fit}", flush=True)
    per_pred = fit["seconds"] / fit["predictions"]
    coco_fit = per_pred * args.coco_predictions
    worst = full["seconds"] * 2 + coco_fit  # val scored twice (plain, rescored) + the fit; run_test doubles it
    cmd = "python scripts/bench_rank0.py" + ("" if len(sys.argv) == 1 else " " + shlex.join(sys.argv[1:]))
    md = [
        "## Rank-0 stages: final scoring and the rescoring fit, against the process-group timeout",
        "",
        f"`{cmd}`: what rank 0 computes alone after fit while the other DDP ranks wait in a collective "
        f"(`bapose.training.rescoring`, `KeypointEvaluator.compute`), on generated people of COCO's size "
        f"(`scripts/bench_evaluation.py`'s generator); one run each, wall time. Machine: {machine()}. This run took "
        f"{time.perf_counter() - t_all:.0f} s.",
        "",
        "| stage | data | rank-0 seconds |",
        "|---|---|---|",
        f"| final scoring | {plain['images']:,} images, {plain['people']:,} people, {plain['detections']:,} "
        f"detections | {plain['seconds']:.1f} |",
        f"| final scoring | {full['images']:,} images, {full['detections']:,} detections ({args.per_image} per "
        f"image) | {full['seconds']:.1f} |",
        f"| rescoring fit (OKS targets + {fit['epochs']} epochs + save) | {fit['predictions']:,} predictions on "
        f"{fit['images']:,} images | {fit['seconds']:.1f} |",
        f"| rescoring fit, COCO estimate | {args.coco_predictions:,} predictions (x {per_pred * 1e3:.3f} ms each, "
        f"linear in the predictions) | {coco_fit:.1f} |",
        "",
        f"COCO estimate: the longest single wait is the fit, {coco_fit:.0f} s = {coco_fit / 60:.1f} min on this "
        f"machine; even the fit and the final scoring of val twice (plain and rescored, {args.per_image} people per "
        f"image) back to back take {worst:.0f} s = {worst / 60:.1f} min, {TIMEOUT_MIN * 60 / worst:.0f}x below the "
        f"{TIMEOUT_MIN} min `trainer.strategy.timeout` of the DDP presets (torch's default, a config value there). "
        f"A slower host, a larger set or more `rescore.epochs` scale it linearly: raise "
        f"`trainer.strategy.timeout.minutes` with them. (This machine is shared by other jobs: the times are upper "
        f"bounds for it.)",
    ]
    print(write_section("rank0", "\n".join(md)))


if __name__ == "__main__":
    main()
