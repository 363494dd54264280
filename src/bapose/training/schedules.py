"""Learning-rate schedules of ``BAPoseModule``: the configured scheduler plus a linear warm-up, both torch schedulers.

The warm-up is ``torch.optim.lr_scheduler.LinearLR`` stepped every optimizer step, *chained* with the configured
scheduler (which keeps its own interval, e.g. per epoch): torch's schedulers update the optimizer's LR
multiplicatively, so at optimizer step ``s`` the LR is ``scheduled_lr * min(1, (s + 1) / warmup_steps)``. The LR in the
optimizer is the LR that is used, so Lightning's ``LearningRateMonitor`` (the one LR curve, ``lr-<Optimizer>``) and
a resumed run see the same number, and the warm-up position is saved and restored with the other scheduler states.
(``SequentialLR`` would run the warm-up *before* the schedule and needs both on the same interval; the paper rows
step their schedule per epoch and warm up per step.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import (
    CosineAnnealingWarmRestarts,
    CyclicLR,
    LambdaLR,
    LinearLR,
    LRScheduler,
    OneCycleLR,
)

from bapose.errors import ConfigError

# schedulers that set the LR from their own base LR instead of scaling the current one: chained after a warm-up
# they would overwrite it
_NOT_CHAINABLE = (LambdaLR, CyclicLR, OneCycleLR, CosineAnnealingWarmRestarts)


def lr_scheduler_configs(optimizer: Optimizer, scheduler_factory: Callable[..., LRScheduler] | None,
                         interval: str = "epoch", warmup_steps: int = 0) -> list[dict[str, Any]]:
    """Lightning ``lr_scheduler`` configs for ``configure_optimizers``: the configured scheduler first (its position
    is what a resumed run logs), then the warm-up.

    Args:
        optimizer: the optimizer whose LR the schedulers drive.
        scheduler_factory: partial taking ``optimizer=`` (Hydra ``_partial_: true``), or None (constant LR).
        interval: ``"epoch"`` or ``"step"``, the configured scheduler's interval.
        warmup_steps: optimizer steps of linear warm-up from ``1 / warmup_steps`` of the LR to the full LR;
            0 or 1 = none.

    Both configs carry the name ``lr-<Optimizer>``: the LR monitor logs the one LR of the optimizer once.
    """
    name = f"lr-{type(optimizer).__name__}"
    configs: list[dict[str, Any]] = []
    if scheduler_factory is not None:
        scheduler = scheduler_factory(optimizer=optimizer)
        if warmup_steps > 1 and isinstance(scheduler, _NOT_CHAINABLE):
            raise ConfigError(f"module: field 'warmup_steps' is {warmup_steps} but scheduler "
                              f"{type(scheduler).__name__} sets the LR from its own base LR and would undo the "
                              f"warm-up; expected a scheduler that scales the current LR (MultiStepLR, StepLR, "
                              f"CosineAnnealingLR, ExponentialLR, PolynomialLR, ...) or module.warmup_steps=0")
        configs.append({"scheduler": scheduler, "interval": interval, "frequency": 1, "name": name})
    if warmup_steps > 1:
        # factor (s + 1) / W at optimizer step s: LinearLR's start_factor at its step 0, 1.0 from step W - 1 on
        warmup = LinearLR(optimizer, start_factor=1.0 / warmup_steps, end_factor=1.0, total_iters=warmup_steps - 1)
        configs.append({"scheduler": warmup, "interval": "step", "frequency": 1, "name": name})
    return configs
