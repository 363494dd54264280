"""LightningModule for BAPose / DEKR: trains the net on codec targets, validates with bapose.predictor + COCO AP."""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from bapose.checkpoints.io import check_state_dict_compatible
from bapose.checkpoints.schema import CheckpointInfo
from bapose.data.datamodule import datamodule_spec
from bapose.errors import BAPoseError, ConfigError
from bapose.predictor import Predictor, images_to_float
from bapose.training.hparams import codec_spec, from_configs, loss_spec
from bapose.training.schedules import lr_scheduler_configs

log = logging.getLogger("bapose")
# val/test metrics are computed from one gather of every rank's people and are equal on every rank (sync_dist=False on
# purpose): Lightning's advice to reduce them again would only add a collective per metric
warnings.filterwarnings("ignore", message=r"It is recommended to use `self.log\('(val|test)/")


class NonFiniteLossError(BAPoseError, RuntimeError):
    """Training stopped because the loss was NaN/inf for too many optimizer steps in a row."""


def _make_ema(net: nn.Module, decay: float) -> nn.Module:
    """timm's ``ModelEmaV3`` of ``net``: parameters averaged, buffers (BatchNorm statistics, already running averages)
    copied; the decay ramps up as ``1 - (1 + step) ** -0.75`` to ``decay`` (0.999 after ~10k steps), so the random
    init does not dominate a short run. Stored as ``ema.module.*`` (``bapose.load_model`` prefers those weights)."""
    from timm.utils import ModelEmaV3

    if not 0.0 < decay < 1.0:
        raise ConfigError(f"module: field 'ema_decay' is {decay}; expected a float in (0, 1) or null")
    ema = ModelEmaV3(net, decay=float(decay), use_warmup=True, warmup_power=0.75, exclude_buffers=True)
    ema.module.requires_grad_(False)
    # train/eval mode follows the LightningModule (Lightning switches it for validation); the copy never sees a
    # training forward, so its BatchNorm statistics only come from the updates
    return ema.train()


class BAPoseModule(L.LightningModule):
    """Wires an injected net, codec and loss into Lightning; validation/test score COCO (or CrowdPose) AP.

    Args:
        net: ``BAPoseNet`` (or any net with the same contract): ``(B, 3, H, W)`` floats in [0, 1] ->
            heatmaps ``(B, K+1, h, w)``, offsets ``(B, 2K, h, w)``; attribute ``num_keypoints``.
        codec: the ``BAPoseCodec`` the datamodule encodes targets with; ``None`` takes the datamodule's in ``setup``.
        loss: loss module returning ``{"loss", "heatmap", "offset"}``; default :class:`BAPoseLoss` (DEKR units).
        optimizer: ``functools.partial`` of an optimizer class taking the parameters (Hydra ``_partial_: true``).
        scheduler: partial of an LR scheduler taking the optimizer, or ``None``.
        scheduler_interval: ``"epoch"`` (the paper's step schedule) or ``"step"``.
        warmup_steps: linear LR warm-up over the first optimizer steps (``LinearLR`` chained with the scheduler: it
            multiplies the scheduled LR by ``(step + 1) / warmup_steps``; 0 = off). :mod:`bapose.training.schedules`.
        ema_decay: keep an EMA copy of the weights with this decay (timm's ``ModelEmaV3``, decay warmed up over the
            first steps; used for validation/test and saved as ``ema.module.*``); ``None`` = off.
        compile: ``torch.compile`` the net (in place, so checkpoint keys do not change).
        channels_last: run the net in channels-last memory format (faster convs under AMP on GPUs).
        val_flip / val_scales: flip test and scales during validation.
        test_flip / test_scales: the same for ``trainer.test``; ``None`` copies the validation settings.
        max_nonfinite_steps: stop with :class:`NonFiniteLossError` after this many non-finite losses in a row
            (each is skipped: no backward, no optimizer update).
        model_config: the config the net was built from, stored in checkpoints so ``bapose-eval`` rebuilds it;
            with ``net=None`` the net is built from it (``bapose.build.build_net``, never with downloaded weights).
        codec_config / loss_config / optimizer_config / scheduler_config: plain dicts of the codec's fields, the
            loss's, and the optimizer / scheduler ``_partial_`` nodes: used where the object is not given.

    Every argument but the objects is saved as Lightning hyper-parameters (``hparams``, the checkpoint's
    ``hyper_parameters``; the net, codec and loss as their configs), so
    ``BAPoseModule.load_from_checkpoint("checkpoints/best.ckpt")`` rebuilds the module that was trained
    (``bapose.load_model`` stays the one-call loader of a net, its codec and joint set for predicting).

    SyncBatchNorm is a trainer option (``trainer.sync_batchnorm=true``, set by the ``ddp`` presets), and mixed precision
    is ``trainer.precision`` (``bf16-mixed`` / ``16-mixed``): one way to do each.
    """

    def __init__(
        self,
        net: nn.Module | None = None,
        codec: Any = None,
        loss: nn.Module | None = None,
        optimizer: Callable[..., Optimizer] | None = None,
        scheduler: Callable[..., LRScheduler] | None = None,
        scheduler_interval: str = "epoch",
        warmup_steps: int = 0,
        ema_decay: float | None = None,
        compile: bool = False,
        channels_last: bool = False,
        val_flip: bool = False,
        val_scales: Sequence[float] = (1.0,),
        test_flip: bool | None = None,
        test_scales: Sequence[float] | None = None,
        max_nonfinite_steps: int = 20,
        model_config: Mapping[str, Any] | None = None,
        codec_config: Mapping[str, Any] | None = None,
        loss_config: Mapping[str, Any] | None = None,
        optimizer_config: Mapping[str, Any] | None = None,
        scheduler_config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if scheduler_interval not in ("epoch", "step"):
            raise ConfigError(f"module: field 'scheduler_interval' is {scheduler_interval!r}; "
                              f"expected 'epoch' or 'step'")
        if warmup_steps < 0:
            raise ConfigError(f"module: field 'warmup_steps' is {warmup_steps}; expected >= 0 optimizer steps")
        if max_nonfinite_steps < 1:
            raise ConfigError(f"module: field 'max_nonfinite_steps' is {max_nonfinite_steps}; expected >= 1")
        net, codec, loss, optimizer, scheduler = from_configs(net, codec, loss, optimizer, scheduler, model_config,
                                                              codec_config, loss_config, optimizer_config,
                                                              scheduler_config)
        self.save_hyperparameters({
            "model_config": dict(model_config) if model_config is not None else None,
            "codec_config": codec_spec(codec), "loss_config": loss_spec(loss),
            "optimizer_config": dict(optimizer_config) if optimizer_config is not None else None,
            "scheduler_config": dict(scheduler_config) if scheduler_config is not None else None,
            "scheduler_interval": scheduler_interval, "warmup_steps": int(warmup_steps), "ema_decay": ema_decay,
            "compile": bool(compile), "channels_last": bool(channels_last), "val_flip": bool(val_flip),
            "val_scales": [float(v) for v in val_scales], "test_flip": test_flip,
            "test_scales": [float(v) for v in test_scales] if test_scales is not None else None,
            "max_nonfinite_steps": int(max_nonfinite_steps)})
        self.net = net.to(memory_format=torch.channels_last) if channels_last else net
        self.codec = codec
        self.loss = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.warmup_steps = int(warmup_steps)
        self.ema = _make_ema(self.net, ema_decay) if ema_decay else None
        self.compile_net = compile
        self.channels_last = channels_last
        self.val_flip, self.val_scales = bool(val_flip), tuple(float(s) for s in val_scales)
        self.test_flip = self.val_flip if test_flip is None else bool(test_flip)
        self.test_scales = self.val_scales if test_scales is None else tuple(float(s) for s in test_scales)
        self.final_eval = False  # final_evaluation(): validation runs the test protocol too
        self.max_nonfinite_steps = int(max_nonfinite_steps)
        self.model_config = dict(model_config) if model_config is not None else None
        # set in setup() from the datamodule, or by hand when the module runs without one
        self.meta = None
        self.ann_files: dict[str, Any] = {}
        self.eval_mode: str | None = None
        self.keypoints_field = "keypoints"  # the annotation field the dataset reads joints from
        self.evaluator = None
        self.last_metrics: dict[str, dict[str, float]] = {}
        # bapose-eval sets collect_results: the COCO-format results of the last val/test epoch, gathered to rank 0
        self.collect_results = False
        self.results: list[dict[str, Any]] = []
        self.nonfinite_steps = 0  # total skipped steps (also logged)
        self._nonfinite_in_a_row = 0
        self._last_step_finite = True
        self.checkpoint_due = False  # set at an optimizer step for which a rank asked for a checkpoint

    # ------------------------------------------------------------------ wiring
    @property
    def eval_net(self) -> nn.Module:
        """The weights validation/test/prediction use: the EMA copy when enabled."""
        return self.ema.module if self.ema is not None else self.net

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule if self._trainer is not None else None
        if dm is not None:
            self.meta = getattr(dm, "meta", self.meta)
            if self.codec is None:
                self.codec = getattr(dm, "codec", None)
            for split in ("val", "test"):
                ann = getattr(dm, f"{split}_ann_file", None)
                if ann is not None:
                    self.ann_files[split] = ann
            self.eval_mode = getattr(dm, "eval_mode", None) or self.eval_mode
            self.keypoints_field = getattr(dm, "keypoints_field", self.keypoints_field)
        if self.codec is None:
            raise ConfigError("module: no codec given and the datamodule has no attribute 'codec'; "
                              "expected one of them to provide the BAPoseCodec")
        divisor = getattr(self.net, "size_divisor", None)
        size = getattr(dm, "input_size", None) if dm is not None else None
        if divisor and isinstance(size, int) and size % divisor:
            # fail before the first step, not inside the first forward
            raise ConfigError(f"data field 'input_size' is {size}; expected a multiple of {divisor} "
                              f"(the net's size_divisor)")
        k = getattr(self.net, "num_keypoints", None)
        if self.meta is not None and k is not None and k != self.meta.num_keypoints:
            raise ConfigError(f"model: field 'num_keypoints' is {k} but dataset '{self.meta.name}' has "
                              f"{self.meta.num_keypoints} joints; expected them to agree (data.num_keypoints)")
        if self.compile_net and not getattr(self, "_compiled", False):
            # nn.Module.compile() compiles in place: state_dict keys keep their names (no `_orig_mod.` prefix)
            self.net.compile()
            if self.ema is not None:
                self.ema.module.compile()
            self._compiled = True

    def configure_optimizers(self) -> Any:
        if self.optimizer_factory is None:
            raise ConfigError("module: field 'optimizer' is missing; expected a partial optimizer "
                              "(e.g. {_target_: torch.optim.Adam, _partial_: true, lr: 1e-3})")
        # only the trained net: the EMA copy has no gradients and must not be touched by the optimizer
        optimizer = self.optimizer_factory(params=self.net.parameters())
        schedulers = lr_scheduler_configs(optimizer, self.scheduler_factory, self.scheduler_interval, self.warmup_steps)
        if len(schedulers) > 1:  # scheduler + warm-up: Lightning's list form
            return [optimizer], schedulers
        return {"optimizer": optimizer, "lr_scheduler": schedulers[0]} if schedulers else optimizer

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``images`` uint8 or [0, 1] float ``(B, 3, H, W)`` -> ``(heatmaps (B, K+1, h, w), offsets (B, 2K, h, w))``."""
        x = images_to_float(images)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    # ------------------------------------------------------------------ training
    # The non-finite guard costs one all-reduce per optimizer step and none per gradient-accumulation micro-step:
    # each micro-step only adds its loss terms and a non-finite count to device tensors (no host sync); at the
    # optimizer step one all-reduce of [non-finite micro-steps, checkpoint requests] tells every rank whether any
    # rank's loss was non-finite (then no rank updates: the gradients are dropped, Lightning skips the update) and
    # whether a rank asked for a checkpoint (bapose.training.preemption). Step logs are this rank's values, unsynced;
    # epoch logs are reduced over ranks once, at the epoch end.
    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        heatmaps, offsets = self(batch["image"])
        terms = self.loss(heatmaps, offsets, batch["heatmaps"], batch["heatmap_weights"], batch["offsets"],
                          batch["offset_weights"])
        loss = terms["loss"]
        finite = torch.isfinite(loss.detach())
        bs = int(batch["image"].shape[0])
        acc = self.__dict__.get("_step_terms")
        if acc is None:
            acc = self._step_terms = {"nonfinite": torch.zeros((), device=loss.device), "images": 0,
                                      **{k: torch.zeros((), device=loss.device) for k in ("loss", "heatmap", "offset")}}
        acc["nonfinite"] += (~finite).float()
        for k in ("loss", "heatmap", "offset"):
            # a non-finite micro-step makes the whole optimizer step skipped: its terms are never logged
            acc[k] += torch.where(finite, terms[k].detach(), torch.zeros_like(loss.detach())) * bs
        acc["images"] += bs
        # backward runs whatever the value (every DDP rank must join the gradient all-reduce); a non-finite step's
        # gradients are dropped before the update
        return loss

    def request_checkpoint(self, wanted: bool = True) -> None:
        """Ask for a checkpoint right after the next optimizer step, on every rank (``checkpoint_due`` turns true
        there), or withdraw the request (``wanted=False``): it travels in the non-finite guard's all-reduce
        (``bapose.training.preemption``)."""
        self._checkpoint_request = bool(wanted)

    def _agree_step(self) -> tuple[bool, bool]:
        """The one collective of an optimizer step: (every rank's micro-steps finite, some rank asks for a
        checkpoint). One host sync; no collective at all in a single process."""
        acc = self.__dict__.get("_step_terms") or {"nonfinite": torch.zeros((), device=self.device)}
        request = torch.full((), float(self.__dict__.get("_checkpoint_request", False)), device=acc["nonfinite"].device)
        flags = torch.stack([acc["nonfinite"].float(), request])
        if self._trainer is not None and self.trainer.world_size > 1 and torch.distributed.is_initialized():
            # torch's all_reduce itself: Lightning's strategy.reduce puts a barrier before it (two collectives)
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.SUM)
        nonfinite, requested = flags.tolist()
        self._checkpoint_request = False
        return nonfinite == 0, requested > 0

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        decision: dict[str, bool] = {}

        def guarded_closure() -> Any:
            out = optimizer_closure() if optimizer_closure is not None else None  # the last micro-step + backward
            decision["finite"], decision["checkpoint"] = self._agree_step()
            if decision["finite"]:
                return out
            optimizer.zero_grad(set_to_none=True)  # no update: the optimizer sees no gradient at all
            return None  # Lightning's "backward skipped" (the AMP scaler neither steps nor updates)

        super().optimizer_step(epoch, batch_idx, optimizer, guarded_closure)
        finite = decision.get("finite", True)
        self._last_step_finite = finite
        self.checkpoint_due = decision.get("checkpoint", False)
        self._log_step(finite)
        # the step number drives the EMA's decay warm-up, so a resumed run continues the same ramp
        if self.ema is not None and finite:
            self.ema.update(self.net, step=self.global_step + 1)

    def _log_step(self, finite: bool) -> None:
        acc = self.__dict__.pop("_step_terms", None)
        if not finite:
            self.nonfinite_steps += 1
            self._nonfinite_in_a_row += 1
            self.log("train/nonfinite_steps", float(self.nonfinite_steps), on_step=True, on_epoch=False)
            if self._nonfinite_in_a_row >= self.max_nonfinite_steps:
                raise NonFiniteLossError(
                    f"training stopped: the loss was non-finite for {self._nonfinite_in_a_row} optimizer steps in a "
                    f"row (module.max_nonfinite_steps={self.max_nonfinite_steps}; epoch {self.current_epoch}, "
                    f"global step {self.global_step}). The weights were not updated by those steps and no "
                    f"checkpoint was written from them. Try a lower optimizer.lr, module.warmup_steps, "
                    f"trainer.gradient_clip_val, trainer.precision=32, or check the data.")
            return
        self._nonfinite_in_a_row = 0
        if acc is None or not acc["images"]:
            return
        n = acc["images"]
        means = {k: acc[k] / n for k in ("loss", "heatmap", "offset")}
        # step values: this rank's, unsynced (no collective); epoch values: weighted by images, reduced at epoch end
        self.log("train/loss_step", means["loss"], on_step=True, on_epoch=False, prog_bar=True, batch_size=n)
        for k, v in means.items():
            self.log(f"train/{k}_epoch", v, on_step=False, on_epoch=True, batch_size=n, sync_dist=True)
            if k != "loss":
                self.log(f"train/{k}_step", v, on_step=True, on_epoch=False, batch_size=n)
        if self.nonfinite_steps:
            self.log("train/nonfinite_steps", float(self.nonfinite_steps), on_step=True, on_epoch=False)

    # ------------------------------------------------------------------ validation / test
    def _make_evaluator(self, split: str) -> Any:
        from bapose.evaluation import KeypointEvaluator

        ann = self.ann_files.get(split) or self.ann_files.get("val")
        if ann is None or self.meta is None:
            raise ConfigError(f"module: no '{split}' annotation file or dataset meta; expected the datamodule to "
                              f"expose 'meta' and '{split}_ann_file'")
        mode = self.eval_mode or ("crowdpose" if self.meta.name == "crowdpose" else "coco")
        return KeypointEvaluator(ann, self.meta, mode=mode, only_seen_images=self._partial_eval(split),
                                 keypoints_field=self.keypoints_field)

    def _partial_eval(self, split: str) -> bool:
        """Whether this loop sees only part of the split (sanity check, fast_dev_run, limit_*_batches): then score
        only the images seen, instead of counting every unseen ground-truth person as missed."""
        if self._trainer is None:
            return False
        t = self.trainer
        if t.sanity_checking or t.fast_dev_run:
            return True
        limit = t.limit_val_batches if split == "val" else t.limit_test_batches
        return not (isinstance(limit, float) and limit == 1.0)

    def protocol(self, split: str) -> dict[str, Any]:
        """``{"flip", "scales"}`` of ``split``'s evaluation: ``trainer.test`` and the final evaluation of a run
        (:meth:`final_evaluation`) run the test protocol (``test_flip`` / ``test_scales``); validation during fit
        the cheaper ``val_flip`` / ``val_scales``."""
        if split == "test" or self.final_eval:
            return {"flip": self.test_flip, "scales": list(self.test_scales)}
        return {"flip": self.val_flip, "scales": list(self.val_scales)}

    @contextlib.contextmanager
    def final_evaluation(self) -> Iterator[None]:
        """Within: ``trainer.validate`` runs the test protocol, so a run's final ``val/*`` are measured as its
        ``test/*`` (the row's flip and scales) and as ``bapose-eval`` measures them."""
        before, self.final_eval = self.final_eval, True
        try:
            yield
        finally:
            self.final_eval = before

    def _eval_forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.eval_net(images)

    def predictor(self, flip: bool = False, scales: Sequence[float] = (1.0,)) -> Predictor:
        """The :class:`~bapose.predictor.Predictor` of the weights validation uses (:attr:`eval_net`), its codec and
        the dataset's flip permutation, under this flip / scales."""
        flip_index = self.meta.flip_index if self.meta is not None else None
        return Predictor(self._eval_forward, self.codec, flip_index, flip, scales,
                         int(getattr(self.net, "size_divisor", 32)))

    @torch.no_grad()
    def predict_poses(self, images: Tensor, flip: bool = False, scales: Sequence[float] = (1.0,)) -> list[Any]:
        """People in a batch of images of one size: uint8/float ``(B, 3, H, W)`` -> one ``Poses`` per image
        (``poses (M, K, 3)`` in input-image pixels, ``scores (M,)``)."""
        return self.predictor(flip, scales)(images)

    def _eval_predict(self, batch: Mapping[str, Any], flip: bool, scales: Sequence[float]) -> list[Any]:
        """People of a val/test batch, each image at its own padded size (:meth:`Predictor.by_size`)."""
        return self.predictor(flip, scales).by_size(batch["image"], batch.get("valid_size"))

    def _eval_step(self, batch: Mapping[str, Any], split: str) -> None:
        protocol = self.protocol(split)
        people = self.predictor(protocol["flip"], protocol["scales"]).in_original(batch)
        ids = [int(i) for i in torch.as_tensor(batch["image_id"]).reshape(-1).tolist()]
        self.evaluator.update(ids, [p for p, _ in people], [s for _, s in people])

    # Lightning's hooks, val and test side by side: one evaluator per epoch, one step, one score
    def on_validation_epoch_start(self) -> None:
        self.evaluator = self._make_evaluator("val")

    def on_test_epoch_start(self) -> None:
        self.evaluator = self._make_evaluator("test")

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self._finish_eval("val")

    def on_test_epoch_end(self) -> None:
        self._finish_eval("test")

    def _finish_eval(self, split: str) -> None:
        # compute() gathers every rank's results to rank 0 once, drops the repeated image ids of DistributedSampler's
        # padding and scores there; every rank gets the same numbers, so no further reduction (sync_dist=False)
        stats = {k: float(v) for k, v in self.evaluator.compute().items()}
        stats = {k: (v if math.isfinite(v) else -1.0) for k, v in stats.items()}
        self.last_metrics[split] = stats
        if self.collect_results:
            # the same gather's people, on rank 0 (empty elsewhere): what val_results.json / results.json hold
            self.results = [r for people in self.evaluator.gathered.values() for r in people]
        self.log_dict({f"{split}/{k}": v for k, v in stats.items()}, sync_dist=False)

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_metadata(self) -> dict[str, Any]:
        """What a checkpoint says about itself: the plain ``bapose`` entry of :meth:`checkpoint_info`."""
        return self.checkpoint_info().entry()

    def checkpoint_info(self) -> CheckpointInfo:
        """What a checkpoint says about itself (:class:`bapose.checkpoints.schema.CheckpointInfo`)."""
        return CheckpointInfo(
            model=self.model_config,
            num_keypoints=getattr(self.net, "num_keypoints", None),
            meta=self.meta.name if self.meta is not None else None,
            # the whole joint set (plain lists, loadable with weights_only=True): predict/export rebuild custom K
            meta_spec=self.meta.spec() if self.meta is not None else None,
            codec=codec_spec(self.codec),
            input_size=getattr(self.codec, "input_size", None),
            ema=self.ema is not None,
            # the dataset (joint set, rule set, files): bapose-eval scores on it when no data= is given
            data=datamodule_spec(self._trainer),
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.checkpoint_info().write(checkpoint)
        checkpoint["bapose_counters"] = {"nonfinite_steps": self.nonfinite_steps}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Lightning calls this before it loads the weights: a checkpoint of another architecture or K fails here
        # with a CheckpointError naming the file, the config fields and keys that differ (not torch's key dump)
        source = str(self._trainer.ckpt_path) if self._trainer is not None and self._trainer.ckpt_path \
            else "checkpoint"
        stored = CheckpointInfo.of(checkpoint, source)
        # checkpoints of bapose <= 0.1 (hand-written EMA) carry its update counter; timm's EMA takes the step instead
        checkpoint.get("state_dict", {}).pop("ema.num_updates", None)
        check_state_dict_compatible(
            self.state_dict(), checkpoint.get("state_dict", {}), source=source,
            expected_meta={"num_keypoints": getattr(self.net, "num_keypoints", None), "model": self.model_config},
            found_meta={"num_keypoints": stored.num_keypoints, "model": stored.model})
        self.nonfinite_steps = int(checkpoint.get("bapose_counters", {}).get("nonfinite_steps", 0))
        if self.meta is None:  # load_from_checkpoint: the joint set it was trained on (setup() replaces it)
            self.meta = stored.joint_set()

    def on_train_start(self) -> None:
        if not self.trainer.ckpt_path or not self.trainer.is_global_zero:
            return
        # one line that shows a resumed run continues where the checkpoint left off (step, LR, scheduler position)
        lr = self.trainer.optimizers[0].param_groups[0]["lr"] if self.trainer.optimizers else float("nan")
        schedulers = self.trainer.lr_scheduler_configs
        last_epoch = schedulers[0].scheduler.last_epoch if schedulers else None
        log.info("resumed from '%s': epoch %d, global step %d, lr %.6g, scheduler last_epoch %s, %d non-finite "
                 "steps so far", self.trainer.ckpt_path, self.current_epoch, self.global_step, lr, last_epoch,
                 self.nonfinite_steps)
