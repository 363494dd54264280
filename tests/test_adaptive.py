"""Adaptive convolution: the pure-PyTorch kernel against torchvision, the block's geometry and its gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import deform_conv2d as tv_deform_conv2d

from bapose.models.adaptive import AdaptiveBlock, deform_conv2d_torch

TOL = {torch.float64: 1e-10, torch.float32: 1e-4}


def _randomise_affine(block: AdaptiveBlock, std: float = 0.3, bias_std: float = 1.5) -> None:
    # non-zero A and t, large enough that taps land between pixels and beyond the image borders
    with torch.no_grad():
        block.transform.weight.normal_(0, std)
        block.transform.bias.normal_(0, bias_std)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", [
    # B, C, H, W, offset groups, conv groups, padding, dilation, out channels
    (2, 6, 7, 5, 3, 3, 1, 1, 6),
    (1, 4, 6, 9, 2, 1, 2, 2, 5),
    (2, 8, 1, 1, 4, 2, 1, 1, 4),   # 1×1 image: every tap but the centre reads padding
    (1, 4, 5, 5, 1, 4, 0, 1, 8),   # no padding: smaller output
])
def test_torch_kernel_matches_torchvision(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    b, c, h, w, g, groups, pad, dil, o = shape
    gen = torch.Generator().manual_seed(sum(shape))
    ho, wo = h + 2 * pad - 2 * dil, w + 2 * pad - 2 * dil
    x = torch.randn(b, c, h, w, dtype=dtype, generator=gen).requires_grad_()
    offset = (3 * torch.randn(b, 2 * g * 9, ho, wo, dtype=dtype, generator=gen)).requires_grad_()
    weight = torch.randn(o, c // groups, 3, 3, dtype=dtype, generator=gen).requires_grad_()
    bias = torch.randn(o, dtype=dtype, generator=gen).requires_grad_()
    ref = tv_deform_conv2d(x, offset, weight, bias, padding=pad, dilation=dil)
    out = deform_conv2d_torch(x, offset, weight, bias, padding=pad, dilation=dil)
    assert out.shape == ref.shape == (b, o, ho, wo)
    torch.testing.assert_close(out, ref, atol=TOL[dtype], rtol=0)
    grad_out = torch.randn(ref.shape, dtype=dtype, generator=gen)
    grads_ref = torch.autograd.grad(ref, (x, offset, weight, bias), grad_out)
    grads = torch.autograd.grad(out, (x, offset, weight, bias), grad_out)
    for name, got, want in zip(("input", "offset", "weight", "bias"), grads, grads_ref):
        torch.testing.assert_close(got, want, atol=TOL[dtype], rtol=0, msg=f"gradient of {name}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_block_impls_agree_with_nonzero_affine(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    block = AdaptiveBlock(channels=4, groups=3, impl="torchvision").to(dtype)
    _randomise_affine(block)
    x = torch.randn(2, 12, 9, 7, dtype=dtype)
    offsets = block.offsets(x)
    assert offsets.abs().max() > 2.0, "the test needs taps far from the regular grid"

    results = {}
    for impl in ("torchvision", "torch"):
        block.impl = impl
        block.zero_grad()
        xi = x.clone().requires_grad_()
        out = block(xi)
        (out * torch.linspace(-1, 1, out.numel(), dtype=dtype).view_as(out)).sum().backward()
        results[impl] = (out, xi.grad, {n: p.grad.clone() for n, p in block.named_parameters()})
    (out_tv, gx_tv, gp_tv), (out_pt, gx_pt, gp_pt) = results["torchvision"], results["torch"]
    torch.testing.assert_close(out_pt, out_tv, atol=TOL[dtype], rtol=0)
    torch.testing.assert_close(gx_pt, gx_tv, atol=TOL[dtype], rtol=0)
    assert gp_tv["transform.weight"].abs().max() > 0, "A and t must receive a gradient"
    for name in gp_tv:
        torch.testing.assert_close(gp_pt[name], gp_tv[name], atol=TOL[dtype] * 10, rtol=TOL[dtype],
                                   msg=f"gradient of {name}")


@pytest.mark.parametrize("impl", ["torchvision", "torch"])
def test_gradcheck(impl: str) -> None:
    torch.manual_seed(1)
    block = AdaptiveBlock(channels=2, groups=2, impl=impl).double().eval()
    _randomise_affine(block, std=0.2, bias_std=0.7)
    x = torch.randn(1, 4, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(block, (x,), eps=1e-6, atol=1e-5)
    # the offset-predicting conv's parameters too: a function of (x, transform weight, deform weight)
    w_t = block.transform.weight.detach().clone().requires_grad_()
    w = block.weight.detach().clone().requires_grad_()

    def fn(x: torch.Tensor, w_t: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(block, {"transform.weight": w_t, "weight": w}, (x,))

    assert torch.autograd.gradcheck(fn, (x, w_t, w), eps=1e-6, atol=1e-5)


def test_fresh_block_is_a_plain_conv() -> None:
    torch.manual_seed(2)
    block = AdaptiveBlock(channels=5, groups=3).eval()
    x = torch.randn(2, 15, 8, 6)
    expected = F.relu(block.bn(F.conv2d(x, block.weight, padding=1, groups=3)) + x)
    torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("impl", ["torchvision", "torch"])
def test_affine_moves_the_taps(impl: str) -> None:
    """t = (0, 1) shifts every tap one pixel right; A = I doubles the grid (a dilation-2 conv)."""
    torch.manual_seed(3)
    block = AdaptiveBlock(channels=3, groups=2, impl=impl).eval()
    x = torch.randn(1, 6, 7, 8)
    conv = lambda inp, **kw: F.relu(block.bn(F.conv2d(inp, block.weight, groups=2, **kw)) + x)  # noqa: E731
    with torch.no_grad():
        bias = block.transform.bias.view(2, 6)  # per group (a_yy, a_yx, a_xy, a_xx, t_y, t_x)
        bias.zero_()
        bias[:, 5] = 1.0
        # taps at p + g + (0, 1): a plain conv over x padded by (top 1, bottom 1, left 0, right 2)
        torch.testing.assert_close(block(x), conv(F.pad(x, (0, 2, 1, 1))), atol=1e-5, rtol=0)
        bias.zero_()
        bias[:, 0] = bias[:, 3] = 1.0
        torch.testing.assert_close(block(x), conv(x, padding=2, dilation=2), atol=1e-5, rtol=0)


def test_groups_are_disentangled() -> None:
    """Joint k's output depends only on joint k's channels: no mixing across groups."""
    torch.manual_seed(4)
    block = AdaptiveBlock(channels=3, groups=4).eval()
    _randomise_affine(block)
    x = torch.randn(1, 12, 6, 6)
    y = x.clone()
    y[:, 3:6] += torch.randn(1, 3, 6, 6)  # perturb group 1 only
    diff = (block(x) - block(y)).abs().amax(dim=(0, 2, 3)).view(4, 3)
    assert diff[1].min() > 1e-3
    assert diff[[0, 2, 3]].max() == 0
