"""DEKR's heads (Geng et al. 2021): a keypoint + center heatmap head and a disentangled per-joint offset head."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from bapose.models.adaptive import AdaptiveBasis, AdaptiveBlock, AdaptiveImpl
from bapose.models.dwasp import conv_bn_relu


class BasicBlock(nn.Module):
    """Residual block of two 3×3 conv + BN (ResNet's basic block), ``(B, C, h, w) -> (B, C, h, w)``."""

    def __init__(self, channels: int, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + x)


class HeatmapHead(nn.Module):
    """1×1 -> ``channels`` + BN + ReLU, ``num_blocks`` BasicBlocks, 1×1 -> K+1 maps (K joints, the center last).

    Shapes: ``(B, in_channels, h, w) -> (B, K+1, h, w)``.
    """

    def __init__(self, in_channels: int, num_keypoints: int, channels: int = 32, num_blocks: int = 1) -> None:
        super().__init__()
        self.transition = conv_bn_relu(in_channels, channels, 1)
        self.blocks = nn.Sequential(*(BasicBlock(channels) for _ in range(num_blocks)))
        self.final = nn.Conv2d(channels, num_keypoints + 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.final(self.blocks(self.transition(x)))


class OffsetHead(nn.Module):
    """Disentangled adaptive regression: each joint regresses its offset from its own ``channels_per_joint`` maps.

    1×1 -> K·c + BN + ReLU; ``num_blocks`` adaptive blocks grouped by joint; grouped 1×1 -> 2 per joint.
    Groups = K everywhere, so joint k's offsets depend only on its c channels after the shared transition.

    Shapes: ``(B, in_channels, h, w) -> (B, 2K, h, w)``, channels ``(x0, y0, x1, y1, …)``.
    """

    def __init__(self, in_channels: int, num_keypoints: int, channels_per_joint: int = 15, num_blocks: int = 2,
                 impl: AdaptiveImpl = "auto", basis: AdaptiveBasis = "regular") -> None:
        super().__init__()
        k, c = num_keypoints, channels_per_joint
        self.transition = conv_bn_relu(in_channels, k * c, 1)
        self.blocks = nn.Sequential(*(AdaptiveBlock(c, groups=k, impl=impl, basis=basis) for _ in range(num_blocks)))
        self.final = nn.Conv2d(k * c, 2 * k, 1, groups=k)

    def forward(self, x: Tensor) -> Tensor:
        return self.final(self.blocks(self.transition(x)))
