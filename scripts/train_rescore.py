"""Train the optional pose-rescoring MLP (DESIGN.md §4) from a checkpoint's predictions on the training set.

    python scripts/train_rescore.py --gt person_keypoints_train2017.json --results train_results.json \\
        --out rescore.pt [--dataset coco|crowdpose] [--epochs 200] [--holdout 0.1]

``--results`` is a COCO results json as ``bapose-eval`` / ``bapose-predict`` write it (``image_id``, ``keypoints``
3K, ``score``). Targets are each prediction's OKS with its best-matching ground-truth person; sigmas and skeleton
come from ``DatasetMeta``. Prints the Pearson correlation of the raw score and of the rescored values with OKS
(on held-out images too with ``--holdout``), then saves the net; use it with ``codec.rescore_path=rescore.pt``.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from bapose.codecs.rescore import pearson, save_rescore, train_rescore, training_set
from bapose.data.metadata import DatasetMeta
from bapose.errors import BAPoseError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gt", required=True, help="COCO keypoint ground truth json of the images the results are on")
    ap.add_argument("--results", required=True, help="COCO results json (image_id, keypoints 3K, score)")
    ap.add_argument("--out", required=True, help="where to write the rescoring net (.pt)")
    ap.add_argument("--dataset", default="coco", choices=["coco", "crowdpose"],
                    help="joint set (sigmas, skeleton) and OKS scale rule")
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--holdout", type=float, default=0.0,
                    help="fraction of images kept out of training to report an honest correlation (then refit on all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    meta = DatasetMeta.preset(args.dataset)
    try:
        feats, targets, scores, ids = training_set(args.gt, args.results, meta.sigmas, meta.skeleton, args.dataset)
    except (BAPoseError, OSError, KeyError, ValueError) as e:
        print(f"train_rescore: {e}", file=sys.stderr)
        return 1
    fit = dict(epochs=args.epochs, lr=args.lr, hidden=args.hidden, batch_size=args.batch_size, seed=args.seed,
               skeleton=meta.skeleton, num_keypoints=meta.num_keypoints)
    print(f"{len(targets)} predictions on {len(np.unique(ids))} images, {feats.shape[1]} features, "
          f"mean OKS {targets.mean():.3f}")

    if args.holdout > 0:
        # split by image: predictions of one image share a crowd and a scale, so a random row split would leak
        images = np.unique(ids)
        rng = np.random.default_rng(args.seed)
        held = rng.choice(images, max(1, int(round(args.holdout * len(images)))), replace=False)
        test = torch.from_numpy(np.isin(ids, held))
        net = train_rescore(feats[~test], targets[~test], **fit)
        with torch.no_grad():
            pred = net(feats[test])
        print(f"held-out ({int(test.sum())} predictions, {len(held)} images): corr(score, OKS) "
              f"{pearson(scores[test], targets[test]):.4f}  corr(predicted, OKS) {pearson(pred, targets[test]):.4f}  "
              f"corr(score x predicted, OKS) {pearson(scores[test] * pred, targets[test]):.4f}")

    t0 = time.perf_counter()
    net = train_rescore(feats, targets, **fit)
    with torch.no_grad():
        pred = net(feats)
    print(f"training set: corr(score, OKS) {pearson(scores, targets):.4f}  corr(predicted, OKS) "
          f"{pearson(pred, targets):.4f}  corr(score x predicted, OKS) {pearson(scores * pred, targets):.4f}  "
          f"({time.perf_counter() - t0:.1f} s)")
    save_rescore(net, args.out)
    print(f"saved {args.out} (use codec.rescore_path={args.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
