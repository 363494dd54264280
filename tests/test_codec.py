"""BAPoseCodec: targets follow DESIGN §4, decode inverts encode, flip maps mirror exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bapose.codecs import BAPoseCodec
from bapose.predictor import decode, flip_back, refine, remove_duplicates
from bapose.data.metadata import DatasetMeta
from bapose.errors import ConfigError, DataError

META = DatasetMeta.coco()
K = META.num_keypoints


def make_people(n: int, size: int = 128, seed: int = 0, spread: float = 12.0) -> np.ndarray:
    """``n`` people (N, K, 3) with well-separated centres on a grid of the image, all joints labelled."""
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n)))
    cell = size / side
    centres = np.array([((i % side + 0.5) * cell, (i // side + 0.5) * cell) for i in range(n)])
    centres += rng.uniform(-2, 2, centres.shape)
    xy = centres[:, None, :] + rng.uniform(-spread, spread, (n, K, 2))
    return np.concatenate([xy, np.full((n, K, 1), 2.0)], -1)


def test_encode_targets_follow_the_spec() -> None:
    codec = BAPoseCodec(input_size=64, min_center_area=100.0, per_joint_offset_weights=False)
    kp = make_people(1, 64, spread=10)
    kp[0, 3, 2] = 0  # an unlabelled joint: no Gaussian, not part of the center
    kp[0, 4] = [30.0, 33.0, 2]
    mask = np.zeros((64, 64), bool)
    mask[:, 56:] = True
    t = codec.encode(kp, np.array([900.0]), mask)
    assert t["heatmaps"].shape == (K + 1, 16, 16) and t["heatmaps"].dtype == np.float32
    assert t["offsets"].shape == (2 * K, 16, 16) and t["offset_weights"].shape == (1, 16, 16)
    # joint 4 at input (30, 33) -> grid (7.375, 8.125): the nearest grid pixel holds exp(-d^2 / 2 sigma^2)
    g = (np.array([30.0, 33.0]) + 0.5) / 4 - 0.5
    d2 = ((np.array([7, 8]) - g) ** 2).sum()
    assert t["heatmaps"][4, 8, 7] == pytest.approx(np.exp(-d2 / 8), rel=1e-5)
    assert t["heatmaps"][4].max() == pytest.approx(np.exp(-d2 / 8), rel=1e-5)
    assert t["heatmaps"][3].max() == 0.0
    w = t["heatmap_weights"]
    assert set(np.unique(w[:, :, :14]).tolist()) <= {np.float32(0.1).item(), 1.0}
    assert np.all(w[:, :, 14:] == 0)  # 56 / 4 = 14: ignore region
    assert np.all((w[:, :, :14] == 1.0) == (t["heatmaps"][:, :, :14] > 0))
    # center = mean of labelled joints; offsets from every pixel of the square point at the joints
    labelled = kp[0, :, 2] > 0
    center = ((kp[0, labelled, :2] + 0.5) / 4 - 0.5).mean(0)
    cy, cx = np.unravel_index(t["heatmaps"][K].argmax(), (16, 16))
    assert (cx, cy) == tuple(np.round(center).astype(int))
    gj = (kp[0, :, :2] + 0.5) / 4 - 0.5
    ys, xs = np.nonzero(t["offset_weights"][0])
    assert len(xs) == 81  # (2 * 4 + 1)^2, all inside the grid
    off = t["offsets"].reshape(K, 2, 16, 16)[:, :, ys, xs]  # (K, 2, P)
    np.testing.assert_allclose(off[labelled, 0] + xs, np.repeat(gj[labelled, 0:1], len(xs), 1), atol=1e-5)
    np.testing.assert_allclose(off[labelled, 1] + ys, np.repeat(gj[labelled, 1:2], len(ys), 1), atol=1e-5)
    box = gj[labelled].max(0) - gj[labelled].min(0)
    assert t["offset_weights"][0, ys[0], xs[0]] == pytest.approx(1 / np.hypot(*box), rel=1e-5)


def test_small_people_keep_joints_but_get_no_center_and_no_offsets() -> None:
    codec = BAPoseCodec(input_size=64, per_joint_offset_weights=False)
    kp = make_people(1, 64)
    t = codec.encode(kp, np.array([31.0**2]))  # below 32^2 (input pixels)
    assert t["heatmaps"][K].max() == 0 and t["offset_weights"].max() == 0
    assert t["heatmaps"][:K].max() > 0.9


def test_smaller_person_keeps_overlapping_offset_pixels_under_dekr_rules() -> None:
    codec = BAPoseCodec(input_size=128, min_center_area=0, per_joint_offset_weights=False, offset_owner="smaller")
    big = make_people(1, 128, seed=1, spread=40)
    small = big.copy()
    small[..., :2] = (big[..., :2] - big[0, :, :2].mean(0)) * 0.3 + big[0, :, :2].mean(0) + 12.0  # centre 3 px away
    t = codec.encode(np.concatenate([big, small]), np.array([1e4, 1e4]))
    gs = (small[0, :, :2] + 0.5) / 4 - 0.5
    c_small = np.round(gs.mean(0)).astype(int)
    c_big = np.round(((big[0, :, :2] + 0.5) / 4 - 0.5).mean(0)).astype(int)
    assert np.abs(c_small - c_big).max() <= 4  # each center inside the other's square
    for x, y in (c_small, c_big):  # both center pixels, even the big person's own, carry the smaller person
        assert t["offsets"][0, y, x] + x == pytest.approx(gs[0, 0], abs=1e-5)
    # the pixel carries the smaller person's weight (1 / its smaller diagonal)
    diag_small = np.hypot(*(gs.max(0) - gs.min(0)))
    assert t["offset_weights"][0, c_small[1], c_small[0]] == pytest.approx(1 / diag_small, rel=1e-5)
    gb = (big[0, :, :2] + 0.5) / 4 - 0.5
    assert 1 / diag_small > 1 / np.hypot(*(gb.max(0) - gb.min(0)))


def test_default_rules_give_each_person_their_center_pixel_and_the_nearest_center_the_rest() -> None:
    codec = BAPoseCodec(input_size=128, min_center_area=0, per_joint_offset_weights=False)
    big = make_people(1, 128, seed=1, spread=40)
    small = big.copy()
    small[..., :2] = (big[..., :2] - big[0, :, :2].mean(0)) * 0.3 + big[0, :, :2].mean(0) + 12.0
    kp = np.concatenate([big, small])
    t = codec.encode(kp, np.array([1e4, 1e4]))
    lay = codec.layout(kp, np.array([1e4, 1e4]), (32, 32))
    g = (kp[..., :2] + 0.5) / 4 - 0.5
    centers = g.mean(1)
    for p in (0, 1):  # each person's own center pixel regresses their own joints
        x, y = lay.pixel[p]
        assert lay.owner[y, x] == p
        np.testing.assert_allclose(t["offsets"][0::2, y, x] + x, g[p, :, 0], atol=1e-5)
    ys, xs = np.nonzero(lay.owner >= 0)
    d = np.hypot(xs[:, None] - centers[None, :, 0], ys[:, None] - centers[None, :, 1])  # (P, 2)
    both = (np.abs(xs[:, None] - lay.pixel[None, :, 0]) <= 4).all(1) & (np.abs(ys[:, None] - lay.pixel[None, :, 1])
                                                                          <= 4).all(1)
    own_center = (lay.pixel[None] == np.stack([xs, ys], 1)[:, None]).all(-1).any(1)
    pick = both & ~own_center & (np.abs(d[:, 0] - d[:, 1]) > 1e-9)
    assert pick.sum() > 20  # the squares overlap on many pixels; there the nearest center wins
    np.testing.assert_array_equal(lay.owner[ys[pick], xs[pick]], d[pick].argmin(1))


def test_per_joint_offset_weights_zero_unlabelled_joints() -> None:
    codec = BAPoseCodec(input_size=64, per_joint_offset_weights=True, min_center_area=0)
    kp = make_people(1, 64)
    kp[0, 5, 2] = 0
    t = codec.encode(kp, np.array([1e4]))
    w = t["offset_weights"]
    assert w.shape == (2 * K, 16, 16)
    assert w[10].max() == 0 and w[11].max() == 0 and w[0].max() > 0


@pytest.mark.parametrize("n", [1, 5, 20])
def test_decode_inverts_encode(n: int) -> None:
    codec = BAPoseCodec(input_size=256, min_center_area=0)
    kp = make_people(n, 256, seed=n)
    t = codec.encode(kp, np.full(n, 1e4))
    (poses, scores), = decode(codec, torch.from_numpy(t["heatmaps"])[None], torch.from_numpy(t["offsets"])[None])
    assert poses.shape == (n, K, 3) and scores.shape == (n,)
    order = np.argsort(poses[:, 0, 0].numpy())
    np.testing.assert_allclose(poses.numpy()[order, :, :2], kp[np.argsort(kp[:, 0, 0]), :, :2], atol=1e-3)
    assert torch.all(scores > 0.5) and torch.all(scores <= 1.0)


def test_decode_is_batched_and_matches_per_image() -> None:
    codec = BAPoseCodec(input_size=128, min_center_area=0)
    ts = [codec.encode(make_people(n, 128, seed=n), np.full(n, 1e4)) for n in (2, 4)]
    hm = torch.stack([torch.from_numpy(t["heatmaps"]) for t in ts])
    off = torch.stack([torch.from_numpy(t["offsets"]) for t in ts])
    batched = decode(codec, hm, off)
    assert [len(p.scores) for p in batched] == [2, 4]
    for i in range(2):
        single, = decode(codec, hm[i:i + 1], off[i:i + 1])
        torch.testing.assert_close(single.poses, batched[i].poses)


@pytest.mark.parametrize("rule", ["dekr", "oks"])
def test_pose_nms_removes_duplicates_only(rule: str) -> None:
    codec = BAPoseCodec(input_size=128, pose_nms=rule)
    a = torch.from_numpy(make_people(2, 128)[..., :2]).float()
    poses = torch.cat([torch.cat([a, a[:1] + 0.5]), torch.ones(3, K, 1)], -1)  # third = copy of first, 0.5 px away
    keep = remove_duplicates(codec, poses, torch.tensor([0.9, 0.8, 0.7]))
    assert sorted(keep.tolist()) == [0, 1]
    keep = remove_duplicates(codec, poses, torch.tensor([0.5, 0.8, 0.7]))
    assert sorted(keep.tolist()) == [1, 2]
    assert sorted(remove_duplicates(BAPoseCodec(input_size=128, pose_nms="none"), poses, torch.ones(3)).tolist()) \
        == [0, 1, 2]


def mirror(kp: np.ndarray, width: int) -> np.ndarray:
    out = kp[:, list(META.flip_index)].copy()
    out[..., 0] = width - 1 - out[..., 0]
    return out


def test_flip_back_of_mirrored_targets_gives_the_original_targets() -> None:
    codec = BAPoseCodec(input_size=(96, 128), min_center_area=0)
    kp = make_people(3, 96, seed=3) + np.array([10.3, 0.0, 0.0])
    t = codec.encode(kp, np.full(3, 1e4))
    tf = codec.encode(mirror(kp, 128), np.full(3, 1e4))
    hm, off = flip_back(torch.from_numpy(tf["heatmaps"])[None], torch.from_numpy(tf["offsets"])[None],
                        META.flip_index)
    np.testing.assert_allclose(hm[0].numpy(), t["heatmaps"], atol=1e-5)
    on = t["offset_weights"][0] > 0
    np.testing.assert_allclose(off[0].numpy()[:, on], t["offsets"][:, on], atol=1e-4)


def test_flipped_image_round_trip_gives_mirrored_poses() -> None:
    codec = BAPoseCodec(input_size=128, min_center_area=0, per_joint_offset_weights=False)
    kp = make_people(4, 128, seed=7)
    tf = codec.encode(mirror(kp, 128), np.full(4, 1e4))
    (poses, _), = decode(codec, torch.from_numpy(tf["heatmaps"])[None], torch.from_numpy(tf["offsets"])[None])
    back = mirror(poses.numpy(), 128)
    np.testing.assert_allclose(back[np.argsort(back[:, 0, 0]), :, :2], kp[np.argsort(kp[:, 0, 0]), :, :2], atol=1e-3)


def test_bad_config_and_inputs_raise() -> None:
    with pytest.raises(ConfigError, match="input_size"):
        BAPoseCodec(input_size=510)
    with pytest.raises(ConfigError, match="nms_kernel"):
        BAPoseCodec(nms_kernel=4)
    codec = BAPoseCodec(input_size=64)
    with pytest.raises(DataError, match="keypoints"):
        codec.encode(np.zeros((2, K)), np.zeros(2))
    with pytest.raises(DataError, match="areas"):
        codec.encode(np.zeros((2, K, 3)), np.zeros(3))
    with pytest.raises(DataError, match="ignore_mask"):
        codec.encode(np.zeros((0, K, 3)), np.zeros(0), np.zeros((10, 10), bool))
    with pytest.raises(DataError, match="offsets"):
        decode(codec, torch.zeros(1, K + 1, 16, 16), torch.zeros(1, K, 16, 16))


def test_empty_image_encodes_and_decodes_to_nothing() -> None:
    codec = BAPoseCodec(input_size=64)
    t = codec.encode(np.zeros((0, K, 3)), np.zeros(0))
    assert t["heatmaps"].max() == 0 and np.all(t["heatmap_weights"] == np.float32(0.1))
    (poses, scores), = decode(codec, torch.from_numpy(t["heatmaps"])[None], torch.from_numpy(t["offsets"])[None])
    assert poses.shape == (0, K, 3) and scores.shape == (0,)


def test_refine_moves_noisy_regressions_back_onto_the_heatmap_peaks() -> None:
    """Offsets off by up to 1.5 grid px: refine_radius=2 recovers the joints from the heatmaps; 0 leaves them."""
    plain = BAPoseCodec(input_size=128, min_center_area=0)
    refined = BAPoseCodec(input_size=128, min_center_area=0, refine_radius=2)
    kp = make_people(4, 128, seed=3)
    t = plain.encode(kp, np.full(4, 1e4))
    hm = torch.from_numpy(t["heatmaps"])[None]
    noise = torch.from_numpy(np.random.default_rng(0).uniform(-1.5, 1.5, t["offsets"].shape).astype(np.float32))
    off = torch.from_numpy(t["offsets"])[None] + noise * (torch.from_numpy(t["offset_weights"])[None] > 0)

    def joint_error(codec: BAPoseCodec) -> float:
        poses = decode(codec, hm, off)[0].poses.numpy()
        assert len(poses) == 4
        # match each decoded pose to the nearest ground-truth person
        err = [np.abs(p[None, :, :2] - kp[:, :, :2]).mean((1, 2)).min() for p in poses]
        return float(np.mean(err))

    assert joint_error(refined) < 0.15 < 1.0 < joint_error(plain)
    assert torch.equal(refine(plain, hm, torch.zeros(1, 2, K, 2) + 7.0), torch.zeros(1, 2, K, 2) + 7.0)
    with pytest.raises(ConfigError, match="refine_radius"):
        BAPoseCodec(refine_radius=-1)


@pytest.mark.parametrize("small_first", [False, True])
def test_dekr_rules_own_offsets_per_joint_channel(small_first: bool) -> None:
    """DEKR's OffsetGenerator (offset_owner=smaller): where squares overlap, each joint channel goes to the smaller
    person among those that labelled that joint; a larger neighbour keeps the joints the smaller did not label.
    Joints off the output map are not regressed; the square is DEKR's [int(c) - r, int(c) + r)."""
    codec = BAPoseCodec(input_size=128, min_center_area=0, offset_owner="smaller", center_collision="ignore",
                        heatmap_window="dekr")
    big = make_people(1, 128, seed=1, spread=40)[0]
    small = big.copy()
    small[:, :2] = (big[:, :2] - big[:, :2].mean(0)) * 0.3 + big[:, :2].mean(0) + 8.0
    small[6:, 2] = 0  # the small person labelled joints 0-5 only
    big[16, :2] = [-20.0, 60.0]  # one of the big person's joints lies off the map
    kp = np.stack([small, big] if small_first else [big, small])
    s, b = (0, 1) if small_first else (1, 0)
    lay = codec.layout(kp, np.full(2, 1e4), (32, 32))
    t = codec.encode(kp, np.full(2, 1e4))
    owner = lay.joint_owner
    both = (owner[0] >= 0) & (owner[6] >= 0)
    shared = both & (owner[0] == s)  # pixels in both squares where the small person took its joints
    assert shared.sum() > 5
    assert (owner[:6][:, shared] == s).all() and (owner[6:16][:, shared] == b).all()
    ys, xs = np.nonzero(shared)
    g = codec.to_grid(kp[..., :2])
    np.testing.assert_allclose(t["offsets"][0, ys, xs] + xs, g[s, 0, 0], atol=1e-5)
    np.testing.assert_allclose(t["offsets"][14, ys, xs] + xs, g[b, 7, 0], atol=1e-5)
    # DEKR's weights follow the owner of each channel; the off-map joint 16 is regressed nowhere
    assert t["offset_weights"][0, ys[0], xs[0]] == pytest.approx(1 / lay.diag[s], rel=1e-5)
    assert t["offset_weights"][14, ys[0], xs[0]] == pytest.approx(1 / lay.diag[b], rel=1e-5)
    assert (owner[16] == -1).all() and not t["offset_weights"][32:].any()
    # the big person's square: 8 x 8 from int(center) - 4
    cx, cy = np.trunc(lay.center[b]).astype(int)
    own = np.argwhere((owner[7] == b))
    assert own[:, 1].min() == cx - 4 and own[:, 1].max() == cx + 3 and own[:, 0].min() == cy - 4
