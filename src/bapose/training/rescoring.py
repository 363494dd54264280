"""Pose rescoring as a stage of ``bapose-train`` (DEKR's scoring net, trained on the run's own predictions).

Every DEKR result uses a rescoring net: an MLP that predicts each pose's OKS from its shape and joint scores, trained
on the model's predictions on the training set (DEKR ``tools/valid.py`` with ``rescore_*.yaml``, then
``tools/train_scorenet.py``). After ``fit`` this stage does the same with the selected weights:

1. predict people on (a seeded subset of) the training images with the protocol the net is then applied with (the
   final evaluation's: the test's flip and scales, :func:`check_protocol`), decoded without rescoring; every rank
   predicts its share (``trainer.predict``), the results are gathered;
2. the target of each prediction is its OKS with the best-matching ground-truth person of its image
   (``bapose.codecs.rescore.training_set``; COCO ``area`` or CrowdPose's bbox w*h*0.53 as the scale); predictions on
   images without a usable ground-truth person are left out, as DEKR's ``COCORescoreEval`` leaves them out;
3. rank 0 fits :class:`bapose.codecs.rescore.RescoreNet` and writes ``<run dir>/rescore.pt``;
4. the final evaluation runs again with ``codec.rescore_path`` set, so the same file gives ``bapose-eval`` the same
   numbers: ``metrics.json`` gets ``val_rescored/*`` (and ``test_rescored/*``) beside the plain ``val/*``.

Where our net and features differ from DEKR's ``lib/utils/rescore.py`` is written in README "Paper protocol".
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Subset

from bapose.codecs.rescore import pearson, save_rescore, train_rescore, training_set
from bapose.data.datamodule import collate_eval, worker_init_fn
from bapose.data.dataset import CocoKeypointDataset, limit_cv2_threads_before_fork
from bapose.errors import ConfigError
from bapose.io import read_json
from bapose.io import write_json
from bapose.utils.tables import format_metrics_table

log = logging.getLogger("bapose")

RESCORE_FILE = "rescore.pt"


@dataclasses.dataclass(frozen=True)
class RescoreOptions:
    """The ``rescore`` group of ``conf/train.yaml``.

    Args:
        enabled: run the stage after fit.
        max_images: predict on a seeded random subset of this many training images (those with a labelled person);
            None = all of them (DEKR).
        flip, scales: test-time augmentation of those predictions: the final evaluation's (``test.flip``,
            ``test.scales``), which the rescored numbers are measured with (:func:`check_protocol`).
        epochs, lr, hidden, batch_size: the MLP fit (DEKR ``RESCORE``: 20, 1e-3, 256, 1024).
        seed: subset draw and MLP initialisation / shuffling.
    """

    enabled: bool = False
    max_images: int | None = None
    flip: bool = False
    scales: tuple[float, ...] = (1.0,)
    epochs: int = 20
    lr: float = 1e-3
    hidden: int = 256
    batch_size: int = 1024
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))
        checks = (("max_images", self.max_images is None or self.max_images >= 1, ">= 1 or null (all)"),
                  ("scales", bool(self.scales) and all(s > 0 for s in self.scales), "positive numbers"),
                  ("epochs", self.epochs >= 1, ">= 1"), ("lr", self.lr > 0, "> 0"),
                  ("hidden", self.hidden >= 1, ">= 1"), ("batch_size", self.batch_size >= 1, ">= 1"))
        for name, ok, expected in checks:
            if not ok:
                raise ConfigError(f"rescore: field '{name}' is {getattr(self, name)!r}; expected {expected}")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | DictConfig | None) -> RescoreOptions:
        """From the ``rescore`` config node (None: disabled); unknown keys are a ConfigError naming them."""
        if cfg is None:
            return cls()
        values = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"rescore: unknown field(s) {unknown}; expected some of {sorted(known)}")
        return cls(**values)


def check_protocol(opts: RescoreOptions, module: Any) -> None:
    """The rescoring net must be fit on predictions made as the ones it rescores: the final evaluation's protocol
    (``module.protocol("test")``: ``test.flip`` / ``test.scales``). Checked before fit.

    Raises:
        ConfigError: ``rescore.flip`` / ``rescore.scales`` differ from it.
    """
    want = module.protocol("test")
    if opts.enabled and (opts.flip != want["flip"] or list(opts.scales) != list(want["scales"])):
        raise ConfigError(f"rescore: fields 'flip' {opts.flip} / 'scales' {list(opts.scales)} differ from the final "
                          f"evaluation's test.flip {want['flip']} / test.scales {want['scales']}; expected the "
                          "rescoring net to be fit with the protocol it is applied with (leave rescore.flip / "
                          "rescore.scales at their defaults ${test.flip} / ${test.scales})")


def usable_images(gt: Mapping[str, Any]) -> set:
    """Image ids with at least one non-crowd person with a labelled joint: the images an OKS target exists on."""
    out = set()
    for ann in gt.get("annotations", []):
        kp = ann.get("keypoints") or []
        if not ann.get("iscrowd", 0) and any(v > 0 for v in kp[2::3]):
            out.add(ann["image_id"])
    return out


def choose_images(candidates: Sequence[Any], max_images: int | None, seed: int) -> list:
    """``candidates`` in their order, or a seeded random subset of ``max_images`` of them (kept in that order)."""
    ids = list(candidates)
    if max_images is None or max_images >= len(ids):
        return ids
    pick = np.random.default_rng(seed).choice(len(ids), size=int(max_images), replace=False)
    return [ids[i] for i in sorted(pick)]


def scoring_gt(gt: Mapping[str, Any], keypoints_field: str = "keypoints") -> dict[str, Any]:
    """The training ground truth as the OKS targets read it: each annotation's joints under ``keypoints`` (taken
    from the dataset's ``keypoints_field``) and its OKS ``area`` filled the way the dataset reads it (a custom json
    may lack the field: polygon area, else bbox w*h)."""
    anns = []
    for a in gt.get("annotations", []):
        a = dict(a)
        if keypoints_field != "keypoints" and keypoints_field in a:
            a["keypoints"] = a[keypoints_field]
        if "area" not in a:
            a["area"] = CocoKeypointDataset._area(a)
        anns.append(a)
    return {**gt, "annotations": anns}


@dataclasses.dataclass  # not frozen: Lightning walks predict outputs with apply_to_collection, which sets fields
class Predictions:
    """People predicted on training images, in original pixels: ``image_ids (M,)`` int64, ``poses (M, K, 3)``
    float32 (x, y, joint score), ``scores (M,)`` float32. Arrays, not COCO dicts: they cross ranks compactly."""

    image_ids: np.ndarray
    poses: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.image_ids)

    def select(self, mask: np.ndarray) -> Predictions:
        return Predictions(self.image_ids[mask], self.poses[mask], self.scores[mask])

    def as_results(self) -> list[dict[str, Any]]:
        """COCO keypoint results (``image_id``, ``category_id``, ``keypoints`` 3K, ``score``)."""
        return [{"image_id": int(i), "category_id": 1, "keypoints": p.reshape(-1).tolist(), "score": float(s)}
                for i, p, s in zip(self.image_ids, self.poses, self.scores)]

    @classmethod
    def concat(cls, parts: Sequence[Predictions], k: int) -> Predictions:
        """One set from several (``k`` joints: the shape of an empty result)."""
        if not parts:
            return cls(np.zeros(0, np.int64), np.zeros((0, k, 3), np.float32), np.zeros(0, np.float32))
        return cls(np.concatenate([p.image_ids for p in parts]), np.concatenate([p.poses for p in parts]),
                   np.concatenate([p.scores for p in parts]))


class _Predictor(L.LightningModule):
    """``trainer.predict`` adapter (the stage's predictions are sharded over ranks): people of an eval-style batch in
    original pixels, as :class:`Predictions`, made by the module's :class:`~bapose.predictor.Predictor` (its weights
    and codec as they stand, no ``rescore_path`` here) under ``flip`` / ``scales``."""

    def __init__(self, module: L.LightningModule, flip: bool, scales: Sequence[float]) -> None:
        super().__init__()
        self.module = module
        self.flip, self.scales = bool(flip), tuple(scales)

    def predict_step(self, batch: Mapping[str, Any], batch_idx: int) -> Predictions:
        people = self.module.predictor(self.flip, self.scales).in_original(batch)
        ids = [int(i) for i in torch.as_tensor(batch["image_id"]).reshape(-1).tolist()]
        parts = [Predictions(np.full(len(poses), image_id, np.int64), poses.astype(np.float32),
                             scores.astype(np.float32)) for image_id, (poses, scores) in zip(ids, people, strict=True)]
        return Predictions.concat(parts, self.module.meta.num_keypoints)


def _all_gather(mine: Predictions) -> Predictions:
    """Every rank's predictions, one copy per image id (Lightning's predict sampler splits without repeats; a sampler
    that pads ranks with repeated images would otherwise count them twice)."""
    parts = [mine]
    if torch.distributed.is_available() and torch.distributed.is_initialized() \
            and torch.distributed.get_world_size() > 1:
        parts = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(parts, mine)
    owner: dict[int, int] = {}
    keep = []
    for rank, part in enumerate(parts):
        for image_id in np.unique(part.image_ids):
            owner.setdefault(int(image_id), rank)
        keep.append(part.select(np.array([owner[int(i)] == rank for i in part.image_ids], bool)))
    return Predictions.concat(keep, mine.poses.shape[1])


def predict_training_images(trainer: L.Trainer, module: Any, datamodule: Any, image_ids: Sequence[Any],
                            opts: RescoreOptions) -> Predictions:
    """People predicted by ``module`` (its current weights and codec) on ``image_ids`` of the training json, resized
    as evaluation images (short side = input size), gathered over ranks."""
    # the training split read as val/test are (resize rule, joint field, bad-sample policy: the datamodule's own)
    dataset = datamodule._dataset("train", train=False)
    index = {image_id: i for i, image_id in enumerate(dataset.ids)}
    subset = Subset(dataset, [index[i] for i in image_ids if i in index])
    if datamodule.num_workers > 0:
        limit_cv2_threads_before_fork()
    loader = DataLoader(subset, batch_size=datamodule.val_batch_size, shuffle=False,
                        num_workers=datamodule.num_workers, collate_fn=collate_eval,
                        worker_init_fn=worker_init_fn if datamodule.num_workers > 0 else None)
    batches = trainer.predict(_Predictor(module, opts.flip, opts.scales), dataloaders=loader,
                              return_predictions=True) or []
    k = datamodule.meta.num_keypoints
    return _all_gather(Predictions.concat([b for b in batches if len(b)], k))


def fit_rescore_net(gt: Mapping[str, Any], predictions: Predictions, meta: Any, mode: str, opts: RescoreOptions,
                    path: Path) -> dict[str, Any]:
    """Fit the rescoring net to the OKS of ``predictions`` with ``gt`` (as :func:`scoring_gt` returns it), save it
    to ``path``; returns fit statistics (``{}`` when nothing could be fitted).

    Predictions on images without a usable ground-truth person carry no target and are dropped (DEKR).
    """
    usable = usable_images(gt)
    on_usable = np.array([int(i) in usable for i in predictions.image_ids], bool)
    kept = predictions.select(on_usable).as_results()
    if not kept:
        return {}
    feats, targets, scores, ids = training_set(gt, kept, meta.sigmas, meta.skeleton, mode)
    net = train_rescore(feats, targets, epochs=opts.epochs, lr=opts.lr, hidden=opts.hidden,
                        batch_size=opts.batch_size, seed=opts.seed, skeleton=meta.skeleton,
                        num_keypoints=meta.num_keypoints)
    with torch.no_grad():
        pred = net(feats)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_rescore(net, path)
    # in-sample: how well the raw score and the rescored value rank the training predictions by OKS
    return {"rescore/results": len(predictions), "rescore/predictions": len(kept), "rescore/images": len(np.unique(ids)),
            "rescore/mean_oks": float(targets.mean()), "rescore/corr_score_oks": pearson(scores, targets),
            "rescore/corr_rescored_oks": pearson(scores * pred, targets)}


def run_rescoring_stage(opts: RescoreOptions, trainer: L.Trainer, module: Any, datamodule: Any,
                        ckpt_path: str | None, out_dir: Path, run_test: bool) -> dict[str, Any]:
    """Train the rescoring net on the training set and score the selected weights with it (module docstring).

    Call it right after the plain final evaluation, inside ``module.final_evaluation()``
    (:func:`bapose.training.final.evaluate_selected`): ``module`` then holds the weights of ``ckpt_path`` and both
    the fit and the rescored evaluation run the test protocol.

    Returns:
        ``{"rescore_path", "val_rescored/<stat>", ["test_rescored/<stat>"], "rescore/<fit stat>", "rescore_seconds"}``
        on every rank; ``{}`` when no training image had a prediction.
    """
    t0 = time.perf_counter()
    strategy = trainer.strategy
    path = Path(out_dir) / RESCORE_FILE
    gt, image_ids = None, None
    if trainer.is_global_zero:
        gt = scoring_gt(read_json(datamodule.train_dataset.ann_file),
                        getattr(datamodule, "keypoints_field", "keypoints"))
        usable = usable_images(gt)
        image_ids = choose_images([i for i in datamodule.train_dataset.ids if i in usable], opts.max_images,
                                  opts.seed)
    image_ids = strategy.broadcast(image_ids, src=0)
    results = predict_training_images(trainer, module, datamodule, image_ids, opts)
    mode = module.eval_mode or ("crowdpose" if module.meta.name == "crowdpose" else "coco")
    stats: dict[str, Any] = {}
    if trainer.is_global_zero and len(results):
        # rank 0 alone; the other ranks wait in the broadcast below, up to the process group's timeout
        # (trainer.strategy.timeout; BENCHMARKS.md "Rank-0 stages" times this fit for COCO's size)
        t_fit = time.perf_counter()
        fitted = fit_rescore_net(gt, results, module.meta, mode, opts, path)
        stats = {"rescore/images_predicted": len(image_ids), **fitted,
                 "rescore/fit_seconds": round(time.perf_counter() - t_fit, 1)} if fitted else {}
    if stats:
        log.info("rescoring net: %d predictions on %d training images, corr(score, OKS) %.3f -> %.3f; saved %s "
                 "(rank 0 alone for %.1f s)", stats["rescore/predictions"], stats["rescore/images"],
                 stats["rescore/corr_score_oks"], stats["rescore/corr_rescored_oks"], path,
                 stats["rescore/fit_seconds"])
    stats = strategy.broadcast(stats, src=0)
    if not stats:
        log.warning("rescoring stage: no prediction on the %d training images; no rescoring net", len(image_ids))
        return {}

    # the same evaluation as without, through the codec's rescore_path: what bapose-eval computes with that file
    # the plain evaluation's state is put back afterwards: train() prints and writes it
    plain = module.codec, trainer.loggers, dict(module.last_metrics), module.results
    module.codec = dataclasses.replace(plain[0], rescore_path=str(path))
    trainer.loggers = []  # these passes would log over val/* of the plain evaluation; logged below as *_rescored
    metrics: dict[str, Any] = {"rescore_path": str(path)}
    try:
        trainer.validate(module, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)
        metrics.update({f"val_rescored/{k}": v for k, v in module.last_metrics.get("val", {}).items()})
        results_val = module.results
        if run_test:
            trainer.test(module, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)
            metrics.update({f"test_rescored/{k}": v for k, v in module.last_metrics.get("test", {}).items()})
    finally:
        module.codec, trainer.loggers, module.last_metrics, module.results = plain
    loggers = plain[1]
    metrics.update(stats)
    metrics["rescore_seconds"] = round(time.perf_counter() - t0, 1)
    numeric = {k: float(v) for k, v in metrics.items() if k.startswith(("val_", "test_")) or k.startswith("rescore/")}
    for lg in loggers:
        lg.log_metrics(numeric, step=trainer.global_step)
    if trainer.is_global_zero and module.collect_results:
        write_json(Path(out_dir) / "val_results_rescored.json", results_val)
    return metrics


def rescored_tables(metrics: Mapping[str, Any]) -> list[str]:
    """The AP tables of the rescored evaluation in ``metrics`` (empty when the stage did not run)."""
    tables = []
    for split in ("val", "test"):
        stats = {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith(f"{split}_rescored/")}
        if stats:
            tables.append(format_metrics_table(stats, f"{split} AP with rescoring ({metrics.get('rescore_path')})"))
    return tables
