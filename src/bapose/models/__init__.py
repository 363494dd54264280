"""The BAPose model family: HRNet backbone, D-WASP decoder, DEKR heads with adaptive convs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from bapose.models.adaptive import AdaptiveBlock, deform_conv2d, deform_conv2d_torch
from bapose.models.backbone import HRNetBackbone
from bapose.models.bapose import BAPoseNet, input_hw, validate_input_size
from bapose.models.dwasp import DWASP
from bapose.models.heads import HeatmapHead, OffsetHead
from bapose.utils.flops import ModelCost, model_cost

__all__ = ["BUILDER_KEYS", "AdaptiveBlock", "BAPoseNet", "DWASP", "HRNetBackbone", "HeatmapHead", "OffsetHead", "build_model",
           "config_cost", "deform_conv2d", "deform_conv2d_torch", "validate_input_size"]


# model config keys that are not constructor arguments: what the builder does after construction
BUILDER_KEYS = ("init_from",)


def build_model(cfg_model: Mapping[str, Any], **overrides: Any) -> nn.Module:
    """Instantiate a ``conf/model/*.yaml`` node (with ``_target_``), e.g. ``build_model(cfg.model, pretrained=False)``.

    The net only: ``init_from`` (start from another checkpoint's layers) is the builder's,
    :func:`bapose.build.build_net`."""
    import hydra.utils  # local: importing bapose.models should not pull in Hydra
    from omegaconf import OmegaConf

    node = OmegaConf.to_container(cfg_model, resolve=True) if OmegaConf.is_config(cfg_model) else dict(cfg_model)
    for key in BUILDER_KEYS:
        node.pop(key, None)
        overrides.pop(key, None)
    return hydra.utils.instantiate(node, **overrides)


def config_cost(cfg_model: Mapping[str, Any], input_size: Any) -> ModelCost:
    """Params and multiply-adds of the net ``cfg_model`` builds, on one image of ``input_size`` (``data.input_size``:
    an int or ``[H, W]``), as ``bapose-profile`` and the report's columns count it: built without pretrained
    weights (no download; ``init_from`` is the builder's, not read) on the meta device (shapes only: no memory, no
    init time; a W48 at 640 in about a second)."""
    h, w = input_hw(input_size)
    with torch.device("meta"):
        return model_cost(build_model(cfg_model, pretrained=False), (1, 3, h, w))
