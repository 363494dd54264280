"""Training: the LightningModule, the loss, EMA and drawing of validation predictions."""

from bapose.training.ema import ModelEMA
from bapose.training.loss import BAPoseLoss
from bapose.training.module import BAPoseModule, NonFiniteLossError

__all__ = ["BAPoseLoss", "BAPoseModule", "ModelEMA", "NonFiniteLossError"]
