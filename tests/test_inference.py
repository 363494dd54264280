"""bapose.predictor: flip and multi-scale testing on a net that returns perfect targets; mapping to original pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bapose.codecs import BAPoseCodec
from bapose.data.metadata import DatasetMeta
from bapose.predictor import predict, to_original

META = DatasetMeta.crowdpose()  # K = 14, its last joint (neck) maps to itself under flip
K = META.num_keypoints


def people(h: int, w: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    centres = np.array([[w * 0.3, h * 0.4], [w * 0.72, h * 0.6]]) + rng.uniform(-3, 3, (2, 2))
    xy = centres[:, None] + rng.uniform(-14, 14, (2, K, 2))
    return np.concatenate([xy, np.full((2, K, 1), 2.0)], -1)


class OracleNet:
    """Returns the codec targets of ``kp`` for whatever image it gets: scaled to its size, mirrored if flipped."""

    def __init__(self, codec: BAPoseCodec, kp: np.ndarray, image: torch.Tensor) -> None:
        self.codec, self.kp, self.image, self.calls, self.last = codec, kp, image, [], None

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, _, hs, ws = images.shape
        h, w = self.image.shape[-2:]
        kp = self.kp.copy()
        kp[..., 0] = (kp[..., 0] + 0.5) * ws / w - 0.5  # same pixel-area convention as the image resize
        kp[..., 1] = (kp[..., 1] + 0.5) * hs / h - 0.5
        # predict runs each scale, then its mirror: a call equal to the previous one mirrored is the flip pass
        flipped = self.last is not None and self.last.shape == images.shape and torch.equal(images, self.last.flip(-1))
        self.last = images
        if flipped:
            kp = kp[:, list(META.flip_index)]
            kp[..., 0] = ws - 1 - kp[..., 0]
        self.calls.append(((hs, ws), flipped))
        t = self.codec.encode(kp, np.full(len(kp), 1e4), image_size=(hs, ws))
        return torch.from_numpy(t["heatmaps"])[None], torch.from_numpy(t["offsets"])[None]


@pytest.fixture()
def setup() -> tuple[BAPoseCodec, np.ndarray, torch.Tensor]:
    codec = BAPoseCodec(input_size=(128, 160), min_center_area=0)
    image = torch.rand(1, 3, 128, 160, generator=torch.Generator().manual_seed(0))
    return codec, people(128, 160), image


def sort_by_x(p: np.ndarray) -> np.ndarray:
    return p[np.argsort(p[:, :, 0].mean(1))]


def test_single_scale_recovers_the_people(setup) -> None:
    codec, kp, image = setup
    (poses, scores), = predict(OracleNet(codec, kp, image), image, codec, META)
    np.testing.assert_allclose(sort_by_x(poses.numpy())[..., :2], sort_by_x(kp)[..., :2], atol=1e-3)


@pytest.mark.parametrize("use_meta", [True, False])
def test_flip_test_gives_the_same_poses(setup, use_meta: bool) -> None:
    codec, kp, image = setup
    net = OracleNet(codec, kp, image)
    if use_meta:
        (poses, scores), = predict(net, image, codec, META, flip=True)
    else:  # the LightningModule passes the K+1 channel permutation
        (poses, scores), = predict(net, image, codec, flip_index=META.flip_index_with_center())
    assert [f for _, f in net.calls] == [False, True]
    assert len(poses) == 2
    np.testing.assert_allclose(sort_by_x(poses.numpy())[..., :2], sort_by_x(kp)[..., :2], atol=1e-3)


def test_flip_with_a_wrong_permutation_moves_joints(setup) -> None:
    codec, kp, image = setup
    (poses, _), = predict(OracleNet(codec, kp, image), image, codec, flip_index=list(range(K)))
    err = np.abs(sort_by_x(poses.numpy())[..., :2] - sort_by_x(kp)[..., :2]).max()
    assert err > 1.0  # left/right joints averaged with their mirror partners


def test_multiscale_pools_poses_and_dedups(setup) -> None:
    codec, kp, image = setup
    net = OracleNet(codec, kp, image)
    (poses, scores), = predict(net, image, codec, META, flip=True, scales=(0.5, 1.0, 2.0))
    assert sorted(s for s, _ in net.calls) == sorted([(64, 96)] * 2 + [(128, 160)] * 2 + [(256, 320)] * 2)
    assert len(poses) == 2  # six candidates per person collapse to one in pose NMS
    # 0.5x rounds 80 -> 96 wide: poses from that scale come back through the exact per-axis factor
    np.testing.assert_allclose(sort_by_x(poses.numpy())[..., :2], sort_by_x(kp)[..., :2], atol=0.05)
    assert torch.all(scores > 0.5)


def test_to_original_numpy_and_torch_agree() -> None:
    a = np.array([[2.0, 0.0, 0.5], [0.0, 2.0, 0.5]])
    p = np.array([[[1.0, 2.0, 0.7], [3.0, 4.0, 0.1]]])
    out = to_original(p, a)
    np.testing.assert_allclose(out, [[[2.5, 4.5, 0.7], [6.5, 8.5, 0.1]]])
    torch.testing.assert_close(to_original(torch.from_numpy(p), torch.from_numpy(a)), torch.from_numpy(out))


@pytest.mark.parametrize("grid", [64, 256, 320, 512])
@pytest.mark.parametrize("flip", [False, True])
def test_bf16_outputs_decode_like_fp32_at_every_grid_size(grid: int, flip: bool) -> None:
    """A bf16 net (the gpu / ddp presets) and an fp32 net with the same outputs give the same people: inference
    decodes in float32. In bf16 a grid column above 256 is not representable (171 is, 301 becomes 300)."""
    codec = BAPoseCodec(input_size=grid * 4, center_threshold=0.0, max_people=6)
    g = torch.Generator().manual_seed(grid)
    heat = torch.rand(1, K + 1, grid, grid, generator=g) * 0.05
    cols = [min(grid - 2, c) for c in (5, 171, 255, 301, 437, 509)]
    rows = torch.randint(2, grid - 2, (len(cols),), generator=g).tolist()
    for i, (r, c) in enumerate(zip(rows, cols)):
        heat[0, K, r, c] = 1.0 - 0.05 * i  # centres, strongest first
    # sub-pixel offsets, exactly representable in bf16 (so both nets return the very same numbers)
    offsets = (torch.randint(-64, 64, (1, 2 * K, grid, grid), generator=g) * 0.25).float()
    outputs = (heat.bfloat16().float(), offsets.bfloat16().float())

    def net(dtype):
        return lambda images: tuple(t.to(dtype) for t in outputs)

    images = torch.zeros(1, 3, grid * 4, grid * 4)
    ref = predict(net(torch.float32), images, codec, meta=META, flip=flip)[0]
    half = predict(net(torch.bfloat16), images, codec, meta=META, flip=flip)[0]
    assert ref.poses.dtype == half.poses.dtype == torch.float32 and len(ref.scores) == len(cols)
    assert float((ref.poses[..., :2] - half.poses[..., :2]).abs().max()) < 0.1  # input pixels
    torch.testing.assert_close(half.scores, ref.scores, rtol=0, atol=1e-6)
