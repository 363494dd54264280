"""The BAPose model family: HRNet backbone, D-WASP decoder, DEKR heads with adaptive convs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from bapose.models.adaptive import AdaptiveBlock, deform_conv2d, deform_conv2d_torch
from bapose.models.backbone import HRNetBackbone
from bapose.models.bapose import BAPoseNet, validate_input_size
from bapose.models.dwasp import DWASP
from bapose.models.heads import HeatmapHead, OffsetHead

__all__ = ["AdaptiveBlock", "BAPoseNet", "DWASP", "HRNetBackbone", "HeatmapHead", "OffsetHead", "build_model",
           "deform_conv2d", "deform_conv2d_torch", "validate_input_size"]


def build_model(cfg_model: Mapping[str, Any], **overrides: Any) -> nn.Module:
    """Instantiate a ``conf/model/*.yaml`` node (with ``_target_``), e.g. ``build_model(cfg.model, pretrained=False)``."""
    import hydra.utils  # local: importing bapose.models should not pull in Hydra

    return hydra.utils.instantiate(cfg_model, **overrides)
