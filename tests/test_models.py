"""BAPoseNet: output contract, input checks, D-WASP dilations, Hydra configs, gradients reaching every weight."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir

from bapose.errors import ConfigError
from bapose.models import DWASP, AdaptiveBlock, BAPoseNet, build_model
from bapose.paths import config_dir

W18S = "hrnet_w18_small"  # branches 16/32/64/128: C = 240, layer1 128 ch


def _net(num_keypoints: int = 17, decoder: dict | None = None, seed: int = 0, **kw: object) -> BAPoseNet:
    torch.manual_seed(seed)
    return BAPoseNet(W18S, pretrained=False, num_keypoints=num_keypoints, decoder=decoder, **kw)


def _compose(*overrides: str):
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose("profile", overrides=list(overrides))


@pytest.mark.parametrize(("k", "h", "w", "decoder"), [
    (17, 64, 64, {}),
    (14, 96, 128, {}),    # non-square, CrowdPose joints
    (17, 128, 64, None),  # DEKR baseline
    (14, 64, 160, None),
])
def test_output_shapes(k: int, h: int, w: int, decoder: dict | None) -> None:
    net = _net(k, decoder)
    heatmaps, offsets = net(torch.rand(2, 3, h, w))
    assert net.num_keypoints == k and net.stride == 4
    assert heatmaps.shape == (2, k + 1, h // 4, w // 4)
    assert offsets.shape == (2, 2 * k, h // 4, w // 4)
    assert torch.isfinite(heatmaps).all() and torch.isfinite(offsets).all()
    # DEKR-style small final layers: the untrained net predicts near-zero maps and offsets
    assert offsets.abs().max() < 1.0


@pytest.mark.parametrize(("h", "w"), [(100, 128), (64, 80), (48, 64)])
def test_input_not_multiple_of_32_is_a_config_error(h: int, w: int) -> None:
    with pytest.raises(ConfigError, match=rf"\({h}, {w}\).*multiple of 32"):
        _net()(torch.rand(1, 3, h, w))


def test_wrong_channel_count_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"\(B, 3, H, W\).*\(1, 1, 64, 64\)"):
        _net()(torch.rand(1, 1, 64, 64))


def test_images_are_normalised_inside() -> None:
    net = _net().eval()
    seen = []
    net.backbone.body.conv1.register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
    x = torch.rand(1, 3, 64, 64)
    net(x)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(seen[0], (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1))


def test_dekr_baseline_has_no_decoder_and_heads_read_the_concat() -> None:
    dekr, bapose = _net(decoder=None), _net(decoder={})
    assert dekr.decoder is None and isinstance(bapose.decoder, DWASP)
    assert dekr.backbone.out_channels == 240 and dekr.backbone.low_level_channels == 128
    assert dekr.heatmap_head.transition[0].in_channels == 240
    assert bapose.decoder.planes == 60 and bapose.heatmap_head.transition[0].in_channels == 60
    assert bapose.decoder.low_level[0].in_channels == 128 and bapose.decoder.low_level_planes == 7


def test_offset_head_is_grouped_by_joint() -> None:
    net = _net(num_keypoints=5)
    blocks = [m for m in net.offset_head.modules() if isinstance(m, AdaptiveBlock)]
    assert len(blocks) == 2 and all(b.groups == 5 and b.channels == 15 for b in blocks)
    assert net.offset_head.final.groups == 5 and net.offset_head.final.out_channels == 10
    # joint k's offsets (channels 2k, 2k+1) read only joint k's 15 channels of the shared transition
    feats = torch.randn(1, 15 * 5, 8, 8)
    net.eval()
    out = net.offset_head.blocks(feats)
    feats2 = feats.clone()
    feats2[:, 30:45] += 1.0  # joint 2
    changed = (net.offset_head.final(out) != net.offset_head.final(net.offset_head.blocks(feats2))).flatten(2).any(2)
    assert changed[0].tolist() == [False] * 4 + [True] * 2 + [False] * 4


@pytest.mark.parametrize("decoder", [{}, None])
def test_every_parameter_gets_a_gradient(decoder: dict | None) -> None:
    # DDP without find_unused_parameters fails on any weight outside the graph
    net = _net(decoder=decoder)
    heatmaps, offsets = net(torch.rand(2, 3, 64, 64))
    (heatmaps.square().mean() + offsets.square().mean()).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert missing == []


def test_train_step_with_a_single_image() -> None:
    # a short last batch of one image must not break BN in the image-pool branch
    net = _net(decoder={}).train()
    heatmaps, _ = net(torch.rand(1, 3, 64, 64))
    assert heatmaps.shape == (1, 18, 16, 16)


def test_dilations_change_the_network() -> None:
    """Same weights (the shapes do not depend on the dilations), different dilations -> different outputs."""
    paper, small = _net(decoder={"dilations": (1, 6, 12, 18)}), _net(decoder={"dilations": (1, 3, 6, 9)}, seed=1)
    small.load_state_dict(paper.state_dict())
    x = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        hm_a, off_a = paper.eval()(x)
        hm_b, off_b = small.eval()(x)
    # relative to the outputs' scale (the final layers start small)
    assert (hm_a - hm_b).abs().max() > 0.05 * hm_a.abs().max()
    assert (off_a - off_b).abs().max() > 0.05 * off_a.abs().max()
    # and the same dilations give the same outputs: the difference is the dilation, not the seed
    again = _net(decoder={"dilations": (1, 6, 12, 18)}, seed=2)
    again.load_state_dict(paper.state_dict())
    torch.testing.assert_close(again.eval()(x)[0], hm_a)


@pytest.mark.parametrize(("dilations", "field"), [((1, 6, 12, 18), 73), ((1, 3, 6, 9), 37), ((2, 4), 13)])
def test_waterfall_receptive_field(dilations: tuple[int, ...], field: int) -> None:
    """The waterfall chains its branches: its last branch sees 1 + 2·sum(d > 1) pixels across."""
    dwasp = DWASP(in_channels=4, low_level_channels=4, dilations=dilations, planes=4).double().eval()
    with torch.no_grad():  # positive weights and input: every ReLU passes, the gradient support is the full field
        for p in dwasp.parameters():
            p.abs_()
    size = 97
    x = torch.rand(1, 4, size, size, dtype=torch.float64, requires_grad=True)
    y = x
    for branch in dwasp.waterfall:
        y = branch(y)
    y[0, :, size // 2, size // 2].sum().backward()
    rows = x.grad.abs().sum(dim=(0, 1, 3)).nonzero().flatten()
    cols = x.grad.abs().sum(dim=(0, 1, 2)).nonzero().flatten()
    assert (rows.max() - rows.min() + 1).item() == field
    assert (cols.max() - cols.min() + 1).item() == field


def test_hydra_override_of_dilations_reaches_the_network() -> None:
    cfg = _compose("model=bapose_w18s", "data=crowdpose", "model.decoder.dilations=[1,3,6,9]")
    net = build_model(cfg.model)  # the net only: model.init_from is the builder's (bapose.build.build_net)
    assert isinstance(net, BAPoseNet) and net.num_keypoints == 14
    assert net.decoder.dilations == (1, 3, 6, 9)
    convs = [branch[0] for branch in net.decoder.waterfall]
    assert [c.kernel_size[0] for c in convs] == [1, 3, 3, 3]
    assert [c.dilation[0] for c in convs[1:]] == [3, 6, 9]
    heatmaps, offsets = net(torch.rand(1, 3, 64, 96))
    assert heatmaps.shape == (1, 15, 16, 24) and offsets.shape == (1, 28, 16, 24)


def test_dekr_config_builds_the_baseline() -> None:
    cfg = _compose("model=dekr_w18s")
    net = build_model(cfg.model)  # the net only: model.init_from is the builder's (bapose.build.build_net)
    assert net.decoder is None and net.num_keypoints == 17


def test_separable_decoder_is_smaller() -> None:
    standard, separable = _net(decoder={}), _net(decoder={"conv_type": "separable"})
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(separable.decoder) < 0.5 * count(standard.decoder)
    assert separable(torch.rand(1, 3, 64, 64))[0].shape == (1, 18, 16, 16)


@pytest.mark.parametrize(("field", "kwargs"), [
    ("model.decoder.dilations", {"decoder": {"dilations": []}}),
    ("model.decoder.conv_type", {"decoder": {"conv_type": "depthwise"}}),
    ("model.backbone", {"backbone": "resnet50"}),
    ("model.adaptive_impl", {"adaptive_impl": "cuda"}),
    ("model.num_keypoints", {"num_keypoints": 0}),
])
def test_bad_config_names_the_field(field: str, kwargs: dict) -> None:
    args = {"backbone": W18S, "pretrained": False, "num_keypoints": 17, "decoder": {}} | kwargs
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        BAPoseNet(**args)


def test_adaptive_impls_agree_on_the_whole_net() -> None:
    net = _net(decoder={}).eval()
    with torch.no_grad():  # non-zero A and t, as after training
        for m in net.modules():
            if isinstance(m, AdaptiveBlock):
                m.transform.weight.normal_(0, 0.05)
                m.transform.bias.normal_(0, 1.0)
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        net.set_adaptive_impl("torchvision")
        ref = net(x)
        net.set_adaptive_impl("torch")
        out = net(x)
    assert all(m.impl == "torch" for m in net.modules() if isinstance(m, AdaptiveBlock))
    for got, want in zip(out, ref):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("decoder", [{}, None, {"init": "normal"}])
def test_heads_are_initialised_as_dekr_and_dwasp_by_its_init_choice(decoder: dict | None) -> None:
    """DEKR (hrnet_dekr.py init_weights) and MMPose (DEKRHead init_cfg): every head conv ~ Normal(0, 0.001), zero
    bias, BN 1 / 0; DEKR zeroes the adaptive blocks' transform convs and leaves their deformable conv (not an
    nn.Conv2d) at torchvision DeformConv2d's own U(+-1/sqrt(fan_in)). D-WASP (not in DEKR): Kaiming by default (the
    author's WASP code), DEKR's Normal(0, 0.001) with init=normal."""
    import math

    net = _net(17, decoder, seed=3)
    convs = 0
    for head in (net.heatmap_head, net.offset_head):
        for name, m in head.named_modules():
            if isinstance(m, AdaptiveBlock):
                bound = 1 / math.sqrt(m.channels * 9)
                w = m.weight.detach()
                assert w.abs().max() <= bound and w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
                assert m.transform.weight.abs().max() == 0 and m.transform.bias.abs().max() == 0
            elif isinstance(m, torch.nn.Conv2d) and not name.endswith("transform"):
                convs += 1
                std = m.weight.detach().std().item()
                assert std == pytest.approx(1e-3, rel=0.15 if m.weight.numel() > 400 else 0.3), name
                assert m.bias is None or m.bias.abs().max() == 0
            elif isinstance(m, torch.nn.BatchNorm2d):
                assert (m.weight == 1).all() and (m.bias == 0).all()
    assert convs == 6  # heatmap: transition, 2 block convs, final; offset: transition, final (+ the blocks above)
    if decoder is None:
        return
    for name, m in net.decoder.named_modules():
        if isinstance(m, torch.nn.Conv2d) and m.weight.numel() >= 1000:
            fan_in = m.weight[0].numel()
            want = 1e-3 if decoder.get("init") == "normal" else math.sqrt(2 / fan_in)
            assert m.weight.detach().std().item() == pytest.approx(want, rel=0.1), name
    with pytest.raises(ConfigError, match="model.decoder.init"):
        _net(17, {"init": "xavier"})


def test_kaiming_head_init_is_the_stand_in_choice() -> None:
    """head_init=kaiming (stand-in nets of tests, few-step runs): He normal for the heads' inner convs, the final
    convs still Normal(0, 0.001); a bad name is a ConfigError."""
    import math

    net = _net(17, {}, seed=1, head_init="kaiming")
    w = net.heatmap_head.transition[0].weight
    assert w.std().item() == pytest.approx(math.sqrt(2 / w[0].numel()), rel=0.1)
    assert net.heatmap_head.final.weight.std().item() == pytest.approx(1e-3, rel=0.3)
    with pytest.raises(ConfigError, match="model.head_init"):
        _net(17, {}, head_init="xavier")
