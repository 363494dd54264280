"""Training: the LightningModule, the loss, LR schedules and the run machinery (resume, sweeps, DDP jobs)."""

from bapose.training.loss import BAPoseLoss
from bapose.training.module import BAPoseModule, NonFiniteLossError

__all__ = ["BAPoseLoss", "BAPoseModule", "NonFiniteLossError"]
