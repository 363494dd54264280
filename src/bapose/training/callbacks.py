"""Small Lightning callbacks of the training CLI."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L

log = logging.getLogger("bapose")


class EpochSummary(L.Callback):
    """Print one line per validation epoch on rank 0: epoch, step, mean train loss and the main AP numbers.

    The progress bar shows the running loss; this line is what stays in the log (and the terminal scroll-back).
    """

    def __init__(self, keys: tuple[str, ...] = ("AP", "AP50", "AP75", "AR")) -> None:
        self.keys = keys

    # on_validation_end, not on_validation_epoch_end: callbacks' epoch-end hooks run before the LightningModule's,
    # which is where val/AP is computed and logged, so the epoch-end hook would print the previous epoch's AP
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or trainer.state.fn != "fit":
            return
        m = trainer.callback_metrics
        parts = [f"epoch {trainer.current_epoch}", f"step {trainer.global_step}"]
        loss = m.get("train/loss_epoch", m.get("train/loss"))
        if loss is not None:
            parts.append(f"train/loss {float(loss):.5f}")
        parts += [f"val/{k} {float(m[f'val/{k}']):.4f}" for k in self.keys if f"val/{k}" in m]
        msg = " | ".join(parts)
        log.info(msg)
        # a plain print too: Hydra's log file catches the logger, a tqdm bar would hide a log-only line
        print(msg, flush=True)

    def state_dict(self) -> dict[str, Any]:
        return {}
