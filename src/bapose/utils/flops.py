"""Parameter and multiply-add counts the way the paper's Table 2 reports them (GFLOPs = G multiply-adds).

``torch.utils.flop_counter.FlopCounterMode`` is the source of truth for conv / linear / matmul layers; it counts
2 FLOPs per multiply-add, so we halve it. It has no formula for ``torchvision::deform_conv2d``: we register one
that counts a deformable conv as the conv it is (the bilinear sampling is not counted, as for any conv's
padding). The pure-PyTorch adaptive path is seen through its matmul and counts the same.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

# pass the ops to the counter only when torchvision's ops are registered
try:
    import torchvision.ops  # noqa: F401  (registers torch.ops.torchvision.*)

    _DEFORM_OP = torch.ops.torchvision.deform_conv2d
except (ImportError, AttributeError, RuntimeError):  # pragma: no cover
    _DEFORM_OP = None


def deform_conv2d_flops(input_shape: Sequence[int], weight_shape: Sequence[int], *args: object,
                        out_shape: Sequence[int] | None = None, **kwargs: object) -> int:
    """FLOPs (2 per multiply-add) of ``torchvision::deform_conv2d``: those of a conv with the same weight.

    ``input (B, C, H, W)``, ``weight (O, C/groups, kh, kw)``, output ``(B, O, Ho, Wo)``.
    """
    assert out_shape is not None
    return 2 * math.prod(out_shape) * math.prod(weight_shape[1:])


def flop_counter(display: bool = False) -> FlopCounterMode:
    """A ``FlopCounterMode`` that also counts torchvision's deformable conv."""
    mapping = {_DEFORM_OP: deform_conv2d_flops} if _DEFORM_OP is not None else {}
    return FlopCounterMode(display=display, custom_mapping=mapping)


@dataclass(frozen=True)
class ModelCost:
    """Size and compute of a model at one input size."""

    params: int
    macs: int  # multiply-adds of one forward pass over the whole batch

    @property
    def params_m(self) -> float:
        return self.params / 1e6

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9


def count_params(model: nn.Module) -> int:
    """Number of parameters (buffers such as BN statistics excluded), as papers report them."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-adds of one forward pass of ``model`` on a zero input of ``input_shape`` (e.g. ``(1, 3, 512, 512)``).

    Runs on the model's device; a model built under ``torch.device("meta")`` counts a W48 at 640 in about a
    second, since meta tensors carry shapes and no data.
    """
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.zeros(*input_shape, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), flop_counter() as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def model_cost(model: nn.Module, input_shape: Sequence[int]) -> ModelCost:
    """Parameters and multiply-adds of ``model`` on ``input_shape`` ``(B, 3, H, W)``."""
    return ModelCost(params=count_params(model), macs=count_macs(model, input_shape))
