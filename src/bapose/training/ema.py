"""Exponential moving average of a network's weights (a frozen shadow copy, used for validation and saved)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEMA(nn.Module):
    """Shadow copy of ``net`` whose parameters track ``decay * ema + (1 - decay) * net`` after each optimizer step.

    Buffers (BatchNorm running statistics) are copied, not averaged: they are already running averages.
    The effective decay ramps up as ``min(decay, (1 + n) / (10 + n))`` over the first updates, so early weights
    (random init) do not dominate the average of a short run.

    Args:
        net: the network being trained (deep-copied; the copy never gets gradients).
        decay: asymptotic EMA decay per update, e.g. 0.999.
    """

    def __init__(self, net: nn.Module, decay: float = 0.999) -> None:
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ModelEMA: field 'decay' is {decay}; expected a float in (0, 1)")
        # train/eval mode follows the LightningModule (Lightning switches it for validation); it never sees a
        # training forward, so its BatchNorm statistics only come from `update`
        self.module = copy.deepcopy(net)
        self.module.requires_grad_(False)
        self.decay = float(decay)
        # a buffer, so resuming from a checkpoint restores the ramp position
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def current_decay(self) -> float:
        n = int(self.num_updates)
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        d = self.current_decay()
        ema_p = [p for p in self.module.parameters()]
        net_p = [p.detach().to(q.dtype) for p, q in zip(net.parameters(), ema_p, strict=True)]
        torch._foreach_lerp_(ema_p, net_p, 1.0 - d)
        for b_ema, b in zip(self.module.buffers(), net.buffers(), strict=True):
            b_ema.copy_(b)
        self.num_updates += 1

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)
