"""Lightning callbacks of the training CLI: the progress bar (by whether stdout is a terminal), the per-epoch summary
line and what a W&B run carries (images, tables)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from tqdm.contrib.logging import logging_redirect_tqdm

from bapose.errors import ConfigError
from bapose.utils.naming import task_overrides
from bapose.utils.tables import metric_order
from bapose.utils.wandb import find_wandb_logger

log = logging.getLogger("bapose")


def progress_bar(refresh_rate: int | None = None, tty_refresh_rate: int = 1,
                 log_refresh_rate: int = 200) -> TQDMProgressBar:
    """Lightning's ``TQDMProgressBar`` at a refresh rate (in batches) that suits where stdout goes.

    On a terminal the bar redraws in place, so every batch is cheap to show; in a file (a SLURM log, ``| tee``,
    ``> log``) every redraw is kept, so the bar is refreshed every ``log_refresh_rate`` batches and at the end of
    each epoch and validation: a handful of updates per epoch instead of one per batch.

    Args:
        refresh_rate: forces the rate whatever stdout is (``callbacks.progress_bar.refresh_rate=1``); 0: no bar.
            None: ``tty_refresh_rate`` when stdout is a terminal, else ``log_refresh_rate``.
    """
    for field, value in (("refresh_rate", refresh_rate), ("tty_refresh_rate", tty_refresh_rate),
                         ("log_refresh_rate", log_refresh_rate)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ConfigError(f"callbacks.progress_bar: field '{field}' is {value!r}; expected an integer >= 0 "
                              f"(batches between refreshes, 0 = no bar)")
    if refresh_rate is None:
        isatty = getattr(sys.stdout, "isatty", None)
        refresh_rate = tty_refresh_rate if callable(isatty) and isatty() else log_refresh_rate
    return TQDMProgressBar(refresh_rate=refresh_rate)


def log_past_bar(message: str, *args: Any) -> None:
    """``log.info`` written past tqdm's progress bar (cleared, the line written, redrawn): on a line of its own."""
    with logging_redirect_tqdm():
        log.info(message, *args)


class EpochSummary(L.Callback):
    """Log one line per validation epoch on rank 0: epoch, step, mean train loss and the main AP numbers.

    The progress bar shows the running loss; this line is what stays in the log (and the terminal scroll-back). It
    goes through the ``bapose`` logger only (Hydra's console handler and the run's log file show it), written past
    the progress bar as tqdm writes (the bar is cleared, the line written, the bar drawn again), so it never lands
    on the bar's own line.
    """

    def __init__(self, keys: tuple[str, ...] = ("AP", "AP50", "AP75", "AR")) -> None:
        self.keys = keys
        self._validated: int | None = None  # the epoch whose validation ran last

    # Validation at an epoch's end runs inside the training epoch, before Lightning reduces the epoch's train/*
    # values: at on_validation_end the train loss is still the previous epoch's. The line is written at the train
    # epoch end instead (this epoch's loss, this epoch's validation), for epochs that validated.
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self._validated = trainer.current_epoch

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._validated != trainer.current_epoch:
            return
        # read on every rank: the first read after the epoch's end reduces its synced train/* values (a collective)
        m = trainer.callback_metrics
        if not trainer.is_global_zero:
            return
        parts = [f"epoch {trainer.current_epoch}", f"step {trainer.global_step}"]
        loss = m.get("train/loss_epoch", m.get("train/loss"))
        if loss is not None:
            parts.append(f"train/loss {float(loss):.5f}")
        parts += [f"val/{k} {float(m[f'val/{k}']):.4f}" for k in self.keys if f"val/{k}" in m]
        log_past_bar(" | ".join(parts))

    def state_dict(self) -> dict[str, Any]:
        return {}


@torch.no_grad()
def draw_predictions(module: Any, dataset: Any, count: int) -> list[tuple[int, np.ndarray]]:
    """Draw the module's predictions on the first ``count`` images of ``dataset`` (a validation dataset).

    The one drawing of validation predictions: ``train()``'s ``val_predictions.png`` and the W&B images of
    :class:`WandbMedia` both come from here. Uses the module's validation flip / scales; small inputs (the 128-px
    demo) are drawn at >= 256 px so skeletons stay readable.

    Returns:
        ``[(image_id, RGB uint8 (H, W, 3)), ...]``; empty when ``dataset`` is None or empty or ``count`` <= 0.
    """
    import cv2

    from bapose.vis import draw_poses

    if dataset is None or count <= 0 or len(dataset) == 0:
        return []
    was_training = module.training
    module.eval()
    out = []
    try:
        for i in range(min(count, len(dataset))):
            sample = dataset[i]
            image = sample["image"]
            result = module.predict_poses(image[None].to(module.device), flip=module.val_flip,
                                          scales=module.val_scales)[0]
            rgb = image.permute(1, 2, 0).cpu().numpy()
            if "valid_size" in sample:  # crop the eval padding
                h, w = (int(v) for v in sample["valid_size"])
                rgb = rgb[:h, :w]
            poses = result.poses.cpu().numpy().astype(np.float64)
            zoom = max(1, -(-256 // min(rgb.shape[:2])))
            if zoom > 1:
                rgb = cv2.resize(rgb, (rgb.shape[1] * zoom, rgb.shape[0] * zoom), interpolation=cv2.INTER_LINEAR)
                poses[..., :2] = (poses[..., :2] + 0.5) * zoom - 0.5
            drawn = draw_poses(np.ascontiguousarray(rgb), poses, result.scores.cpu().numpy(), module.meta)
            out.append((int(sample.get("image_id", i)), drawn))
    finally:
        module.train(was_training)
    return out


class WandbMedia(L.Callback):
    """What a W&B run carries besides numbers; does nothing without a W&B logger, and only on rank 0.

    * ``val/predictions``: the predictions drawn (:func:`draw_predictions`) on the same first ``num_images``
      validation images after every validation of fit, so runs compare step by step;
    * ``final/AP_table``: a ``wandb.Table`` of the final evaluation (``trainer.validate`` / ``trainer.test`` after
      fit: split, checkpoint, flip, scales, AP, AP50, ...), one row per split, re-logged as rows arrive;
    * ``hydra_overrides`` in the run config (the resolved config itself is logged by ``train()``), so
      ``bapose-report`` finds the swept keys of a W&B run as it does in a run folder;
    * the best checkpoint as a ``model`` artifact at the end of fit when the logger's ``log_model`` is set
      (:class:`bapose.utils.wandb.WandbLogger`).

    Args:
        num_images: validation images to draw (``draw_images`` of the train config; 0 = no images).
        every_n_validations: draw at every n-th validation of fit (1 = each).
    """

    def __init__(self, num_images: int = 4, every_n_validations: int = 1) -> None:
        if every_n_validations < 1:
            raise ConfigError(f"callbacks.wandb_media: field 'every_n_validations' is {every_n_validations}; "
                              f"expected >= 1")
        self.num_images = int(num_images or 0)
        self.every_n_validations = int(every_n_validations)
        self.table_rows: list[list[Any]] = []
        self._validations = 0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        logger = find_wandb_logger(trainer)
        if stage != "fit" or logger is None or not trainer.is_global_zero:
            return
        overrides = _hydra_overrides()
        if overrides is not None:
            logger.experiment.config.update({"hydra_overrides": overrides}, allow_val_change=True)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        logger = find_wandb_logger(trainer)
        if logger is None:
            return
        fn = str(getattr(trainer.state.fn, "value", trainer.state.fn))
        if fn == "fit":
            self._validations += 1
            if self.num_images > 0 and (self._validations - 1) % self.every_n_validations == 0:
                self.log_images(logger, trainer, pl_module)
        elif fn == "validate":
            self.log_table(logger, trainer, pl_module, "val")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        logger = find_wandb_logger(trainer)
        if logger is not None and trainer.is_global_zero:
            self.log_table(logger, trainer, pl_module, "test")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        logger = find_wandb_logger(trainer)
        if logger is not None and trainer.is_global_zero and getattr(logger, "log_best_model", False):
            self.log_best_checkpoint(logger, trainer)

    # ------------------------------------------------------------------------------------------------ parts
    def log_images(self, logger: Any, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dataset = getattr(trainer.datamodule, "val_dataset", None) if trainer.datamodule is not None else None
        drawn = draw_predictions(pl_module, dataset, self.num_images)
        if drawn:
            logger.log_image("val/predictions", [im for _, im in drawn], step=trainer.global_step,
                             caption=[f"image {image_id}" for image_id, _ in drawn])

    def log_table(self, logger: Any, trainer: L.Trainer, pl_module: L.LightningModule, split: str) -> None:
        stats = (getattr(pl_module, "last_metrics", {}) or {}).get(split)
        if stats is None:  # a module without last_metrics: what it logged under <split>/
            stats = {k.split("/", 1)[1]: float(v) for k, v in trainer.callback_metrics.items()
                     if k.startswith(f"{split}/")}
        if not stats:
            return
        # the protocol this evaluation ran (the final one: the test's, for val too)
        protocol = pl_module.protocol(split) if hasattr(pl_module, "protocol") else {}
        flip, scales = protocol.get("flip"), protocol.get("scales")
        ckpt = Path(trainer.ckpt_path).name if trainer.ckpt_path else "final weights"
        keys = metric_order(stats)
        row = [split, ckpt, flip, str(list(scales)) if scales is not None else None,
               *(float(stats[k]) for k in keys)]
        columns = ["split", "checkpoint", "flip", "scales", *keys]
        # one table with a row per split: a row of another key set (a re-run with other metrics) starts a new one
        if self.table_rows and len(self.table_rows[0]) != len(row):
            self.table_rows = []
        self.table_rows = [r for r in self.table_rows if r[0] != split] + [row]
        logger.log_table("final/AP_table", columns=columns, data=self.table_rows, step=trainer.global_step)

    def log_best_checkpoint(self, logger: Any, trainer: L.Trainer) -> None:
        import wandb

        from bapose.training.selection import monitored_checkpoint

        cb = monitored_checkpoint(trainer)
        best = cb.best_model_path if cb is not None else ""
        if not best or not Path(best).is_file():
            log.warning("logger.wandb.log_model: no best checkpoint to log (no validation ran, or no "
                        "ModelCheckpoint with a monitor)")
            return
        score = getattr(cb, "best_model_score", None)
        run = logger.experiment
        metadata = {"monitor": getattr(cb, "monitor", None), "score": None if score is None else float(score),
                    "original_filename": Path(best).name, "epoch": int(trainer.current_epoch),
                    "global_step": int(trainer.global_step)}
        artifact = wandb.Artifact(name=f"model-{run.id}", type="model", metadata=metadata)
        artifact.add_file(best, name="model.ckpt")
        run.log_artifact(artifact, aliases=["best", "latest"])
        log.info("logged the best checkpoint '%s' as W&B artifact model-%s:best", best, run.id)

    def state_dict(self) -> dict[str, Any]:
        return {"validations": self._validations}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._validations = int(state_dict.get("validations", 0))


def _hydra_overrides() -> list[str] | None:
    try:
        from hydra.core.hydra_config import HydraConfig

        # the job's overrides also in the processes a multirun job starts for itself (BAPOSE_TASK_OVERRIDES)
        return task_overrides() if HydraConfig.initialized() else None
    except Exception:  # noqa: BLE001 - Hydra half-initialised (a plain train(cfg) call): nothing to record
        return None
