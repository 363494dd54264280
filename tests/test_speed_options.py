"""Speed options leave bapose_w18s's outputs where fp32 eager puts them (CPU, 64x64 input, batch 2).

Tolerances are on the largest error relative to the largest output magnitude (heatmaps and offsets separately):
- channels_last: 1e-5 (only the summation order of the convs changes);
- torch.compile: 1e-4 (inductor fuses and reorders float32 arithmetic);
- bf16 autocast: loose, 0.1 on the largest error and 0.05 on the mean error relative to the mean magnitude (bf16
  keeps 8 significant bits, ~0.4 % per rounding, compounded over ~100 layers; measured: ~0.02-0.04 and ~0.01-0.02).
The net is freshly initialised in eval mode (BN statistics 0 / 1), which keeps it well conditioned: BN statistics
taken from one tiny batch make a random net amplify any rounding ~100x (fp32 against fp64 then differs by 1e-4).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from bapose.build import compose_config
from bapose.codecs import BAPoseCodec
from bapose.models import AdaptiveBlock, build_model
from bapose.training import BAPoseModule

SIZE = 64
IMPLS = ("torchvision", "torch")


@pytest.fixture(scope="module")
def base_net() -> nn.Module:
    """``conf/model/bapose_w18s.yaml`` (K from the COCO data config), eval mode, with moving adaptive taps."""
    torch.manual_seed(0)
    cfg = compose_config(["model=bapose_w18s", "data=coco"], config_name="profile")
    net = build_model(cfg.model, pretrained=False)
    for m in net.modules():
        if isinstance(m, AdaptiveBlock):
            # non-zero A and t: taps between pixels, so the bilinear sampling of both kernels is exercised
            nn.init.normal_(m.transform.weight, std=0.01)
            nn.init.normal_(m.transform.bias, std=0.3)
    for final in (net.heatmap_head.final, net.offset_head.final):
        # the 1e-3 init would leave outputs near the bias: make them depend on the whole net
        nn.init.normal_(final.weight, std=0.05)
    return net.eval()


@pytest.fixture(scope="module")
def images() -> Tensor:
    return torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def net_with(base: nn.Module, impl: str) -> nn.Module:
    net = copy.deepcopy(base)
    net.set_adaptive_impl(impl)
    return net


def reference(base: nn.Module, impl: str, x: Tensor) -> tuple[Tensor, Tensor]:
    with torch.no_grad():
        return net_with(base, impl)(x)


def relative_errors(got: Tensor, want: Tensor) -> tuple[float, float]:
    """(largest |error| / largest |want|, mean |error| / mean |want|)."""
    err = (got.float() - want).abs()
    return float(err.max() / want.abs().max()), float(err.mean() / want.abs().mean())


@pytest.mark.parametrize("impl", IMPLS)
def test_channels_last_matches_fp32_eager(base_net: nn.Module, images: Tensor, impl: str) -> None:
    want = reference(base_net, impl, images)
    module = BAPoseModule(net_with(base_net, impl), channels_last=True).eval()
    # the option really changed the layout: HRNet's first conv holds its weight channels-last
    stem = next(m for m in module.net.modules() if isinstance(m, nn.Conv2d))
    assert stem.weight.is_contiguous(memory_format=torch.channels_last)
    assert not stem.weight.is_contiguous()
    with torch.no_grad():
        got = module(images)
    for g, w, name in zip(got, want, ("heatmaps", "offsets")):
        assert g.shape == w.shape and g.dtype == torch.float32
        max_rel, _ = relative_errors(g, w)
        assert max_rel < 1e-5, f"{name}: channels_last differs from fp32 eager by {max_rel:.2e} of the largest output"


# both kernels: half-precision inputs run the deformable conv in float32 (torchvision has no bf16 CPU kernel)
@pytest.mark.parametrize("impl", ["torch", "torchvision"])
def test_bf16_autocast_stays_close_to_fp32(base_net: nn.Module, images: Tensor, impl: str) -> None:
    want = reference(base_net, impl, images)
    net = net_with(base_net, impl)
    # what trainer.precision=bf16-mixed does on CPU
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = net(images)
    for g, w, name in zip(got, want, ("heatmaps", "offsets")):
        assert g.dtype == torch.bfloat16, f"{name}: autocast did not run the head in bf16"
        assert torch.isfinite(g).all()
        max_rel, mean_rel = relative_errors(g, w)
        assert max_rel < 0.1, f"{name}: bf16 largest error {max_rel:.3f} of the largest output (loose limit 0.1)"
        assert mean_rel < 0.05, f"{name}: bf16 mean error {mean_rel:.3f} of the mean magnitude (limit 0.05)"


@pytest.mark.slow  # inductor compiles the whole net on CPU: ~1-2 min on 2 cores
def test_compile_matches_fp32_eager(base_net: nn.Module, images: Tensor) -> None:
    impl = "auto"  # the model config's default: the kernel a user gets
    want = reference(base_net, impl, images)
    torch._dynamo.reset()
    module = BAPoseModule(net_with(base_net, impl), codec=BAPoseCodec(input_size=SIZE), compile=True).eval()
    module.setup("fit")  # where the module compiles its net (in place, state_dict keys unchanged)
    assert module.net._compiled_call_impl is not None, "module.compile=True did not compile the net"
    assert all(not k.startswith("_orig_mod") for k in module.state_dict())
    with torch.no_grad():
        got = module(images)
    for g, w, name in zip(got, want, ("heatmaps", "offsets")):
        max_rel, _ = relative_errors(g, w)
        assert max_rel < 1e-4, f"{name}: torch.compile differs from eager by {max_rel:.2e} of the largest output"
