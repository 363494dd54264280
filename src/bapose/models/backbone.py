"""HRNet backbone (Wang et al. 2019, through timm): four branches resized to stride 4 and concatenated.

``features_only=True, feature_location=''`` gives the pose-style branch widths (W32: 32/64/128/256); the default
``feature_location`` gives the classification head's widths (128…1024), which is not what DEKR or BAPose use.
"""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bapose.errors import ConfigError

# the four stage-4 branches (index 0 is the stride-2 stem)
OUT_INDICES = (1, 2, 3, 4)


def _block_out_channels(block: nn.Module) -> int:
    """Output channels of a timm ResNet-style block (Bottleneck ends in conv3, BasicBlock in conv2)."""
    for name in ("conv3", "conv2"):
        conv = getattr(block, name, None)
        if isinstance(conv, nn.Conv2d):
            return conv.out_channels
    raise ConfigError(f"field 'model.backbone': cannot read the low-level width from {type(block).__name__}")


class HRNetBackbone(nn.Module):
    """timm HRNet returning the concatenated high-resolution features and the low-level (``layer1``) features.

    Args:
        name: timm model name: ``hrnet_w18_small`` (tests, CPU demo), ``hrnet_w32``, ``hrnet_w48``, …
        pretrained: load timm's ImageNet weights (needs the hub; tests and the offline demo pass False).

    Attributes:
        branch_channels: widths of the four branches, e.g. ``(32, 64, 128, 256)``.
        out_channels: ``C = sum(branch_channels)`` (15·w: 480 for W32, 720 for W48).
        low_level_channels: width of the ``layer1`` output (256 for W32/W48, 128 for W18-small).

    Shapes: ``(B, 3, H, W)`` normalised image -> ``((B, C, H/4, W/4), (B, low_level_channels, H/4, W/4))``.
    """

    def __init__(self, name: str = "hrnet_w32", pretrained: bool = False) -> None:
        super().__init__()
        if not name.startswith("hrnet"):
            raise ConfigError(f"field 'model.backbone': expected a timm HRNet name (hrnet_w18_small, hrnet_w32, "
                              f"hrnet_w48, ...), got {name!r}")
        try:
            self.body = timm.create_model(name, pretrained=pretrained, features_only=True, feature_location="",
                                          out_indices=OUT_INDICES)
        except RuntimeError as err:  # timm: "Unknown model (...)"
            raise ConfigError(f"field 'model.backbone': timm cannot build {name!r}: {err}") from err
        self.name = name
        self.branch_channels = tuple(self.body.feature_info.channels())
        self.out_channels = sum(self.branch_channels)
        self.low_level_channels = _block_out_channels(self.body.layer1[-1])
        # feature_info does not expose layer1 (stride 4, before the branches split): keep its output with a hook
        # rather than re-implementing timm's forward, so the backbone stays timm's code and timm's weights
        self._low_level: list[Tensor] = []
        self.body.layer1.register_forward_hook(self._keep_low_level)

    def _keep_low_level(self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        self._low_level.append(output)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self._low_level.clear()
        branches = self.body(x)
        low_level = self._low_level.pop()
        size = branches[0].shape[-2:]
        # DEKR's fusion: bilinear upsampling of the lower-resolution branches to stride 4, then concat
        up = [branches[0]] + [F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in branches[1:]]
        return torch.cat(up, dim=1), low_level
