"""BAPose (Artacho & Savakis 2022): HRNet -> D-WASP -> DEKR heads; ``decoder=None`` is the DEKR baseline."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from bapose.errors import ConfigError
from bapose.models.adaptive import AdaptiveBasis, AdaptiveBlock, AdaptiveImpl, check_impl
from bapose.models.backbone import HRNetBackbone
from bapose.models.dwasp import DWASP, NORMAL_INIT_STD
from bapose.models.heads import HeatmapHead, OffsetHead

HEAD_INITS = ("dekr", "kaiming")  # BAPoseNet(head_init=...)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def validate_input_size(height: int, width: int, divisor: int = 32) -> None:
    """Raise ConfigError unless both sides are positive multiples of ``divisor`` (HRNet's deepest stride)."""
    if height <= 0 or width <= 0 or height % divisor or width % divisor:
        raise ConfigError(f"BAPoseNet input: image size (H, W) = ({height}, {width}) is not a multiple of "
                          f"{divisor}: expected both sides to be positive multiples of {divisor} "
                          f"(check data.input_size and the resize/pad of the images)")


def input_hw(size: Any) -> tuple[int, int]:
    """``data.input_size`` as ``(H, W)``: an int for a square input or an ``[H, W]`` pair (a list, tuple or OmegaConf
    ListConfig), checked by :func:`validate_input_size`."""
    if isinstance(size, Sequence) and not isinstance(size, str) and len(size) == 2:
        h, w = (int(s) for s in size)
    elif isinstance(size, int) and not isinstance(size, bool):
        h = w = size
    else:
        raise ConfigError(f"field 'data.input_size': expected an int or [H, W], got {size!r}")
    validate_input_size(h, w)
    return h, w


class BAPoseNet(nn.Module):
    """Bottom-up pose net: HRNet backbone, optional D-WASP decoder, heatmap head and disentangled offset head.

    Args:
        backbone: timm HRNet name (``hrnet_w18_small``, ``hrnet_w32``, ``hrnet_w48``).
        pretrained: ImageNet weights for the backbone through timm (needs the hub).
        num_keypoints: K (17 for COCO, 14 for CrowdPose), from ``DatasetMeta`` / ``${data.num_keypoints}``.
        decoder: keyword arguments of :class:`DWASP` except the channel counts (``dilations``, ``planes``,
            ``low_level_planes``, ``conv_type``, ``init``); ``{}`` for the paper's D-WASP; None for the DEKR baseline
            (heads on the raw C-channel concat).
        heatmap_channels: width of the heatmap head (32 for W32, 48 for W48).
        heatmap_blocks: residual BasicBlocks of the heatmap head (1, DEKR's ``HEAD_HEATMAP.NUM_BLOCKS``).
        offset_channels_per_joint: per-joint width of the offset head (15).
        offset_blocks: adaptive blocks per joint (2).
        adaptive_impl: deformable-conv kernel, ``"auto" | "torchvision" | "torch"`` (see ``set_adaptive_impl``).
        adaptive_basis: ``"regular"`` (default) or ``"stored"``: per-joint tap bases saved with the weights
            (:class:`AdaptiveBlock`; ``bapose-convert dekr`` sets it for DEKR files whose ``regular_matrix`` buffers
            are not the regular grid).
        head_init: ``"dekr"`` (default): DEKR's initialisation of the heads (see :meth:`_init_weights`);
            ``"kaiming"``: He normal for the heads' inner convs (their final convs keep Normal(0, 0.001)), whose
            untrained features are O(1) where DEKR's are ~1e-3 (BN's running statistics need some hundred steps to
            follow those): for stand-in nets of tests and few-step runs, not for paper runs.

    The constructor never loads weights other than timm's ``pretrained`` backbone: ``model.init_from`` (start from
    another checkpoint's layers) is applied by the builder, :func:`bapose.build.build_net`.

    Input ``(B, 3, H, W)`` float in [0, 1], H and W multiples of 32 (normalised with ImageNet mean/std inside).
    Output ``(heatmaps (B, K+1, H/4, W/4), offsets (B, 2K, H/4, W/4))``: the center heatmap last, offsets
    ``(x0, y0, x1, y1, …)`` in output-grid pixels.
    """

    stride = 4
    size_divisor = 32

    def __init__(self, backbone: str = "hrnet_w32", pretrained: bool = False, num_keypoints: int = 17,
                 decoder: Mapping[str, Any] | None = None, heatmap_channels: int = 32, heatmap_blocks: int = 1,
                 offset_channels_per_joint: int = 15, offset_blocks: int = 2,
                 adaptive_impl: AdaptiveImpl = "auto", adaptive_basis: AdaptiveBasis = "regular",
                 head_init: str = "dekr") -> None:
        super().__init__()
        if int(num_keypoints) < 1:
            raise ConfigError(f"field 'model.num_keypoints': expected a positive joint count, got {num_keypoints}")
        self.num_keypoints = int(num_keypoints)
        check_impl(adaptive_impl)
        if head_init not in HEAD_INITS:
            raise ConfigError(f"field 'model.head_init': expected one of {list(HEAD_INITS)}, got {head_init!r}")
        self.head_init = head_init
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

        self.backbone = HRNetBackbone(backbone, pretrained=pretrained)
        if decoder is None:
            self.decoder = None
            head_in = self.backbone.out_channels
        else:
            if not isinstance(decoder, Mapping):
                raise ConfigError(f"field 'model.decoder': expected a mapping of D-WASP arguments or null, "
                                  f"got {type(decoder).__name__}")
            self.decoder = DWASP(self.backbone.out_channels, self.backbone.low_level_channels, **dict(decoder))
            head_in = self.decoder.out_channels
        self.heatmap_head = HeatmapHead(head_in, self.num_keypoints, heatmap_channels, heatmap_blocks)
        self.offset_head = OffsetHead(head_in, self.num_keypoints, offset_channels_per_joint, offset_blocks,
                                      adaptive_impl, adaptive_basis)
        self._init_weights()

    @property
    def name(self) -> str:
        """``"BAPose hrnet_w32"`` or ``"DEKR hrnet_w32"``."""
        return f"{'DEKR' if self.decoder is None else 'BAPose'} {self.backbone.name}"

    def _init_weights(self) -> None:
        """DEKR's initialisation of the heads (HRNet/DEKR ``lib/models/hrnet_dekr.py`` ``init_weights``; MMPose's
        ``DEKRHead`` init_cfg): every conv from Normal(0, 0.001) with zero bias, BN weight 1 and bias 0; in each
        adaptive block the transform conv zero (DEKR zeroes ``transform_matrix_conv`` / ``translation_conv``: the
        block starts as a plain 3×3 conv) and the deformable weight as DEKR leaves it, torchvision
        ``DeformConv2d``'s own U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (DEKR's loop only visits ``nn.Conv2d``). The
        backbone keeps timm's (or ImageNet) weights; D-WASP initialises itself (``model.decoder.init``)."""
        he = self.head_init == "kaiming"  # the stand-in choice: He normal for the inner convs
        finals = (self.heatmap_head.final, self.offset_head.final)
        for module in (self.heatmap_head, self.offset_head):
            for m in module.modules():
                if isinstance(m, nn.Conv2d):
                    if he and not any(m is f for f in finals):
                        nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                    else:
                        nn.init.normal_(m.weight, std=NORMAL_INIT_STD)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
        for m in self.offset_head.modules():
            if isinstance(m, AdaptiveBlock):
                if he:
                    nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                else:
                    bound = 1.0 / math.sqrt(m.weight[0].numel())  # fan in of one output channel: channels x 3 x 3
                    nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.transform.weight)
                nn.init.zeros_(m.transform.bias)

    def set_adaptive_impl(self, impl: AdaptiveImpl) -> None:
        """Switch every adaptive block's kernel, e.g. to ``"torch"`` before an ONNX export."""
        check_impl(impl)
        for m in self.modules():
            if isinstance(m, AdaptiveBlock):
                m.impl = impl

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ConfigError(f"BAPoseNet input: expected float images (B, 3, H, W), got shape {tuple(images.shape)}")
        validate_input_size(images.shape[-2], images.shape[-1], self.size_divisor)
        x = (images - self.mean) / self.std
        features, low_level = self.backbone(x)
        if self.decoder is not None:
            features = self.decoder(features, low_level)
        return self.heatmap_head(features), self.offset_head(features)
