"""The best checkpoint under a stable name: ``checkpoints/best.ckpt`` (as ultralytics' ``weights/best.pt``), beside
``checkpoints/last.ckpt``; which epoch it holds is inside the file (Lightning's ``epoch`` / ``global_step``) and in a
log line at every new best."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from bapose.errors import ConfigError
from bapose.training.callbacks import log_past_bar

log = logging.getLogger("bapose")

__all__ = ["BestCheckpoint"]


class BestCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` keeping the one best checkpoint by ``monitor`` as ``<dirpath>/<filename>.ckpt``
    (default ``best.ckpt``, replaced in place when a better epoch comes: ``save_top_k=1``, no ``-v1`` suffixes), and
    saying so in one log line on rank 0: ``new best val/AP 0.4123 at epoch 7 (step 840): .../best.ckpt``."""

    def __init__(self, dirpath: str | None = None, filename: str = "best", monitor: str = "val/AP",
                 mode: str = "max", **kwargs: Any) -> None:
        kwargs.setdefault("save_top_k", 1)
        if kwargs["save_top_k"] != 1:
            raise ConfigError(f"callbacks.model_checkpoint: field 'save_top_k' is {kwargs['save_top_k']}; expected 1 "
                              f"(one best checkpoint under the stable name '{filename}.ckpt')")
        kwargs.setdefault("auto_insert_metric_name", False)
        kwargs.setdefault("enable_version_counter", False)
        super().__init__(dirpath=dirpath, filename=filename, monitor=monitor, mode=mode, **kwargs)

    # Lightning saves at the train epoch end or at validation end, whichever its validation cadence says: both
    # hooks look whether the best score changed
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        before = self.best_model_score
        super().on_train_epoch_end(trainer, pl_module)
        self._say_new_best(trainer, before)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        before = self.best_model_score
        super().on_validation_end(trainer, pl_module)
        self._say_new_best(trainer, before)

    def _say_new_best(self, trainer: L.Trainer, before: Any) -> None:
        after = self.best_model_score
        if after is None or not self.best_model_path or not trainer.is_global_zero:
            return
        if before is None or bool(after != before):
            log_past_bar("new best %s %.4f at epoch %d (step %d): %s", self.monitor, float(after),
                         trainer.current_epoch, trainer.global_step, self.best_model_path)
