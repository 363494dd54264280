"""Adaptive convolution (DEKR §3.2, BAPose §3.1.1): a 3×3 conv whose taps move by a per-pixel affine transform.

The 9 taps of a 3×3 kernel, at regular offsets ``g`` around output pixel ``p``, sample the input at
``p + g + A(p)·g + t(p)`` where the 2×2 matrix ``A`` and translation ``t`` are predicted by a plain 3×3 conv.
Both start at zero, so a fresh block is an ordinary 3×3 conv. Offsets are ``(dy, dx)`` pairs, the order
``torchvision.ops.deform_conv2d`` reads them in; ``A`` acts on ``(dy, dx)`` column vectors.

Two interchangeable kernels compute the deformable conv:
- ``"torchvision"``: ``torchvision.ops.deform_conv2d`` (CPU, CUDA, meta);
- ``"torch"``: bilinear ``grid_sample`` of the taps + one matmul, plain PyTorch ops, so it runs on any device and
  exports to ONNX without a custom op. It matches torchvision numerically, borders included (both read zeros
  outside the image and interpolate bilinearly between the in-image corners).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bapose.errors import ConfigError

AdaptiveImpl = Literal["auto", "torchvision", "torch"]
IMPLS = ("auto", "torchvision", "torch")
AdaptiveBasis = Literal["regular", "stored"]
BASES = ("regular", "stored")

try:  # torchvision is a dependency, but the pure-PyTorch path must keep working where its ops are not built
    from torchvision.ops import deform_conv2d as _tv_deform_conv2d
except ImportError:  # pragma: no cover - exercised only without torchvision
    _tv_deform_conv2d = None

# devices torchvision's deform_conv2d has kernels for (meta: shape inference, used to count FLOPs fast)
_TV_DEVICES = ("cpu", "cuda", "meta")


def check_impl(impl: str) -> str:
    """Validate an adaptive-conv implementation name (``model.adaptive_impl``)."""
    if impl not in IMPLS:
        raise ConfigError(f"field 'model.adaptive_impl': expected one of {IMPLS}, got {impl!r}")
    return impl


def resolve_impl(impl: str, device: torch.device) -> str:
    """``"auto"`` -> ``"torchvision"`` on CUDA (and meta, for FLOP counting), else ``"torch"``.

    On CPU the pure-PyTorch kernel is the fast one (scripts/bench_adaptive.py: ~4x forward, ~8x forward+backward
    over torchvision's CPU deform_conv2d), and ONNX export needs it.
    """
    if impl != "auto":
        return impl
    if _tv_deform_conv2d is None or device.type not in _TV_DEVICES or device.type == "cpu" \
            or torch.onnx.is_in_onnx_export():
        return "torch"
    return "torchvision"


def deform_conv2d_torch(x: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None = None,
                        padding: int = 1, dilation: int = 1) -> Tensor:
    """Deformable conv (stride 1) in plain PyTorch, numerically equal to ``torchvision.ops.deform_conv2d``.

    Args:
        x: input ``(B, C, H, W)``.
        offset: ``(B, 2·G·kh·kw, Ho, Wo)``, ``(dy, dx)`` per tap, taps row-major, ``G`` offset groups each owning
            ``C/G`` consecutive input channels (torchvision's layout).
        weight: ``(O, C/groups, kh, kw)``; ``groups`` is read from the shapes as torchvision does.
        bias: ``(O,)`` or None.
        padding, dilation: as in ``nn.Conv2d`` (same for both axes).

    Returns:
        ``(B, O, Ho, Wo)`` with ``Ho = H + 2·padding − dilation·(kh − 1)``.
    """
    b, c, h, w = x.shape
    o, c_per_group, kh, kw = weight.shape
    taps = kh * kw
    groups = c // c_per_group
    offset_groups = offset.shape[1] // (2 * taps)
    ho, wo = h + 2 * padding - dilation * (kh - 1), w + 2 * padding - dilation * (kw - 1)
    if offset_groups * 2 * taps != offset.shape[1] or c % offset_groups or c % c_per_group:
        raise ValueError(f"deform_conv2d_torch: offset {tuple(offset.shape)} and weight {tuple(weight.shape)} do not "
                         f"fit input {tuple(x.shape)}: expected 2·G·{taps} offset channels with G dividing {c}")
    if offset.shape[-2:] != (ho, wo):
        raise ValueError(f"deform_conv2d_torch: offset spatial size {tuple(offset.shape[-2:])}, expected {(ho, wo)}")

    # sampling positions in input pixels: regular tap position + learned offset, (B, G, T, Ho, Wo) per axis
    offset = offset.view(b, offset_groups, taps, 2, ho, wo)
    ky, kx = torch.meshgrid(torch.arange(kh, device=x.device, dtype=x.dtype),
                            torch.arange(kw, device=x.device, dtype=x.dtype), indexing="ij")
    oy = torch.arange(ho, device=x.device, dtype=x.dtype).view(ho, 1) - padding
    ox = torch.arange(wo, device=x.device, dtype=x.dtype).view(1, wo) - padding
    ys = oy + (ky.reshape(taps, 1, 1) * dilation) + offset[:, :, :, 0]
    xs = ox + (kx.reshape(taps, 1, 1) * dilation) + offset[:, :, :, 1]
    # grid_sample with align_corners=False maps pixel centre i to (2i + 1)/size − 1; this works for size 1 too,
    # and its zero padding reads exactly the zeros torchvision reads outside the image
    grid = torch.stack(((2 * xs + 1) / w - 1, (2 * ys + 1) / h - 1), dim=-1)  # (B, G, T, Ho, Wo, 2)
    sampled = F.grid_sample(x.reshape(b * offset_groups, c // offset_groups, h, w),
                            grid.reshape(b * offset_groups, taps * ho, wo, 2),
                            mode="bilinear", padding_mode="zeros", align_corners=False)
    # (B·G, C/G, T·Ho, Wo) -> (B, groups, C/groups · T, Ho·Wo): channel-major then tap, like weight's flattening
    cols = sampled.reshape(b, groups, c_per_group * taps, ho * wo)
    out = torch.matmul(weight.reshape(groups, o // groups, c_per_group * taps), cols)  # (B, groups, O/groups, L)
    out = out.reshape(b, o, ho, wo)
    if bias is not None:
        out = out + bias.view(1, o, 1, 1)
    return out


def deform_conv2d(x: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None = None, padding: int = 1,
                  dilation: int = 1, impl: str = "auto") -> Tensor:
    """Deformable conv (stride 1) through the chosen kernel; shapes as in :func:`deform_conv2d_torch`.

    Half-precision inputs (autocast) run in float32 and are cast back: torchvision has no bf16 CPU kernel, and tap
    positions rounded to bf16 would move by 0.25–0.5 px on a 128-pixel grid.
    """
    if x.dtype in (torch.float16, torch.bfloat16):
        with torch.autocast(x.device.type, enabled=False):
            out = deform_conv2d(x.float(), offset.float(), weight.float(), None if bias is None else bias.float(),
                                padding=padding, dilation=dilation, impl=impl)
        return out.to(x.dtype)
    if resolve_impl(impl, x.device) == "torchvision":
        if _tv_deform_conv2d is None:  # pragma: no cover
            raise ConfigError("field 'model.adaptive_impl': 'torchvision' requested but torchvision.ops is missing")
        return _tv_deform_conv2d(x, offset, weight, bias, padding=padding, dilation=dilation)
    return deform_conv2d_torch(x, offset, weight, bias, padding=padding, dilation=dilation)


class AdaptiveBlock(nn.Module):
    """Residual adaptive-conv block, grouped: ``groups`` independent blocks of ``channels`` channels each.

    Per group (one per joint in the offset head): a 3×3 conv predicts ``A`` (4 ch) and ``t`` (2 ch); a 3×3
    deformable conv samples at ``p + g + A·g + t``; then BN, + input, ReLU. All groups run in one grouped conv
    and one deformable conv with ``offset_groups = groups``, never a Python loop over joints.

    Args:
        channels: channels per group (15 per joint in DEKR / BAPose).
        groups: number of independent groups (K joints).
        dilation: dilation of the regular 3×3 grid ``g`` (1 in DEKR).
        impl: ``"auto" | "torchvision" | "torch"``; see the module docstring. Mutable attribute.
        basis: the vectors ``A`` acts on. ``"regular"``: the tap grid ``g`` itself (derived, not saved).
            ``"stored"``: a per-group ``(groups, 2, 9)`` buffer ``basis`` saved with the weights, starting at ``g``;
            taps then sample at ``p + g + A·basis + t``. DEKR keeps its ``regular_matrix`` as such a buffer in every
            AdaptBlock, so a converted DEKR file whose matrices are not the regular grid still runs exactly.

    Shapes: ``(B, groups·channels, H, W) -> (B, groups·channels, H, W)``.
    """

    def __init__(self, channels: int = 15, groups: int = 1, dilation: int = 1, impl: AdaptiveImpl = "auto",
                 basis: AdaptiveBasis = "regular") -> None:
        super().__init__()
        self.channels, self.groups, self.dilation = channels, groups, dilation
        self.impl = check_impl(impl)
        if basis not in BASES:
            raise ConfigError(f"field 'model.adaptive_basis': expected one of {BASES}, got {basis!r}")
        self.basis_kind = basis
        total = channels * groups
        # one grouped conv predicts, per group, (a_yy, a_yx, a_xy, a_xx, t_y, t_x)
        self.transform = nn.Conv2d(total, 6 * groups, 3, padding=dilation, dilation=dilation, groups=groups)
        self.weight = nn.Parameter(torch.empty(total, channels, 3, 3))
        self.bn = nn.BatchNorm2d(total)
        ky, kx = torch.meshgrid(torch.arange(3.0) - 1, torch.arange(3.0) - 1, indexing="ij")
        # regular tap offsets g = (dy, dx), (2, 9); not persistent: derived from the dilation, not learned
        self.register_buffer("grid", torch.stack((ky.flatten(), kx.flatten())) * dilation, persistent=False)
        if basis == "stored":
            self.register_buffer("basis", self.grid.expand(groups, 2, 9).clone())
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # fan_in: torch computes fan_out of a grouped weight over all groups, too large by the group count
        nn.init.kaiming_normal_(self.weight, mode="fan_in", nonlinearity="relu")
        # zero A and t: the block starts as a plain 3×3 conv and learns to move its taps
        nn.init.zeros_(self.transform.weight)
        nn.init.zeros_(self.transform.bias)

    def offsets(self, x: Tensor) -> Tensor:
        """Tap displacements from the regular grid, ``A·g + t``: ``(B, G·9·2, H, W)`` in torchvision's layout."""
        b, _, h, w = x.shape
        pred = self.transform(x).view(b, self.groups, 6, 1, h, w)
        if self.basis_kind == "stored":
            gy, gx = (self.basis[:, i].reshape(1, self.groups, 9, 1, 1).to(x.dtype) for i in range(2))
        else:
            gy, gx = (self.grid[i].view(1, 1, 9, 1, 1).to(x.dtype) for i in range(2))
        # elementwise rather than einsum: a 2×2 matrix product is not a conv, so FLOP counters should not see it
        dy = pred[:, :, 0] * gy + pred[:, :, 1] * gx + pred[:, :, 4]
        dx = pred[:, :, 2] * gy + pred[:, :, 3] * gx + pred[:, :, 5]
        return torch.stack((dy, dx), dim=3).reshape(b, self.groups * 18, h, w)

    def forward(self, x: Tensor) -> Tensor:
        out = deform_conv2d(x, self.offsets(x), self.weight, padding=self.dilation, dilation=self.dilation,
                            impl=self.impl)
        return F.relu(self.bn(out) + x)

    def extra_repr(self) -> str:
        basis = "" if self.basis_kind == "regular" else f", basis={self.basis_kind!r}"
        return f"channels={self.channels}, groups={self.groups}, dilation={self.dilation}, impl={self.impl!r}{basis}"
