"""Disentangled waterfall atrous spatial pooling, D-WASP (BAPose §3.1; layer spec inferred in DESIGN.md §3)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bapose.errors import ConfigError

ConvType = Literal["standard", "separable"]
# D-WASP's initialisation (``DWASP(init=...)``, ``model.decoder.init``): D-WASP is not in DEKR, whose ``init_weights``
# draws every conv it builds from Normal(0, 0.001); the paper's author initialises the WASP modules of his own
# released code (bmartacho/OmniPose ``models/wasp.py``, ``_AtrousModule._init_weight``) with Kaiming normal
DecoderInit = Literal["kaiming", "normal"]
DECODER_INITS = ("kaiming", "normal")
NORMAL_INIT_STD = 1e-3  # DEKR hrnet_dekr.py init_weights, MMPose DEKRHead init_cfg


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1,
                 conv_type: ConvType = "standard") -> nn.Sequential:
    """Bias-free conv + BN + ReLU, ``same`` padding. ``separable``: depthwise k×k + BN + ReLU, then pointwise 1×1."""
    padding = dilation * (kernel_size - 1) // 2
    if conv_type == "separable" and kernel_size > 1:
        return nn.Sequential(
            nn.Conv2d(in_channels, in_channels, kernel_size, padding=padding, dilation=dilation,
                      groups=in_channels, bias=False),
            nn.BatchNorm2d(in_channels), nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation,
                                   bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class ImagePool(nn.Module):
    """Image-level context: global average pool -> 1×1 conv -> broadcast to the map -> BN -> ReLU.

    BN runs on the broadcast map rather than the 1×1 pooled vector: the statistics are the same (every image
    contributes identical copies), but a training batch of one image (e.g. a short last batch) does not fail.
    Shapes: ``(B, C, h, w) -> (B, P, h, w)``.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(F.adaptive_avg_pool2d(x, 1))
        return F.relu(self.bn(y.expand(-1, -1, *x.shape[-2:])))


class DWASP(nn.Module):
    """D-WASP: a waterfall of atrous convs over the concatenated HRNet features, fused with low-level features.

    1. waterfall: branch i is a conv at ``dilations[i]`` (1 -> 1×1, d > 1 -> 3×3 at dilation d) fed by branch i−1
       (the first by the input, C -> P; the others P -> P);
    2. image pool: global average -> 1×1 C -> P;
    3. concat of all branches ((len(dilations) + 1)·P) -> 1×1 -> P;
    4. low-level 1×1 -> P/8, concat with 3., 3×3 -> P, 3×3 P -> P.

    Args:
        in_channels: C, channels of the concatenated backbone branches (480 for W32).
        low_level_channels: channels of the stride-4 low-level features (256 for HRNet ``layer1``).
        dilations: one per waterfall branch, applied in sequence; the paper's (1, 6, 12, 18).
        planes: P, the output width; default C/4 (120 for W32, 180 for W48).
        low_level_planes: width the low-level features are reduced to; default P/8.
        conv_type: ``"standard"`` or ``"separable"`` (depthwise + pointwise) for the 3×3 convs.
        init: ``"kaiming"`` (default): He normal (fan in, ReLU) for every conv, as the author's own WASP code;
            ``"normal"``: Normal(0, 0.001), what DEKR's ``init_weights`` gives every conv of its net (its heads
            included), for a DEKR-style run. BN: weight 1, bias 0 in both.

    Shapes: ``(B, C, h, w), (B, low_level_channels, h, w) -> (B, P, h, w)``.
    """

    def __init__(self, in_channels: int, low_level_channels: int, dilations: Sequence[int] = (1, 6, 12, 18),
                 planes: int | None = None, low_level_planes: int | None = None,
                 conv_type: ConvType = "standard", init: DecoderInit = "kaiming") -> None:
        super().__init__()
        if init not in DECODER_INITS:
            raise ConfigError(f"field 'model.decoder.init': expected one of {list(DECODER_INITS)}, got {init!r}")
        self.init = init
        self.dilations = tuple(int(d) for d in dilations)
        if not self.dilations or min(self.dilations) < 1:
            raise ConfigError(f"field 'model.decoder.dilations': expected a non-empty list of integers >= 1, "
                              f"got {list(dilations)}")
        if conv_type not in ("standard", "separable"):
            raise ConfigError(f"field 'model.decoder.conv_type': expected 'standard' or 'separable', got {conv_type!r}")
        self.planes = planes = int(planes or in_channels // 4)
        self.low_level_planes = low = int(low_level_planes or max(planes // 8, 1))
        self.conv_type = conv_type

        self.waterfall = nn.ModuleList(
            conv_bn_relu(in_channels if i == 0 else planes, planes, 1 if d == 1 else 3, d, conv_type)
            for i, d in enumerate(self.dilations))
        self.pool = ImagePool(in_channels, planes)
        self.project = conv_bn_relu((len(self.dilations) + 1) * planes, planes, 1)
        self.low_level = conv_bn_relu(low_level_channels, low, 1)
        self.fuse = nn.Sequential(conv_bn_relu(planes + low, planes, 3, conv_type=conv_type),
                                  conv_bn_relu(planes, planes, 3, conv_type=conv_type))
        self.out_channels = planes
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise every conv by ``self.init`` (see the class docstring) and every BN to the identity."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if self.init == "normal":
                    nn.init.normal_(m.weight, std=NORMAL_INIT_STD)
                else:
                    nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor, low_level: Tensor) -> Tensor:
        branches, y = [], x
        for branch in self.waterfall:  # the waterfall: each branch filters the previous one's output
            y = branch(y)
            branches.append(y)
        branches.append(self.pool(x))
        y = self.project(torch.cat(branches, dim=1))
        return self.fuse(torch.cat((y, self.low_level(low_level)), dim=1))

    def extra_repr(self) -> str:
        return f"dilations={self.dilations}, planes={self.planes}, conv_type={self.conv_type!r}, init={self.init!r}"
