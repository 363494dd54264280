"""Crowds without losses: each way DEKR's codec rules lose a person, shown on a constructed case, and none of them
under the default rules; a property test over random crowds; DEKR's multi-scale merge against its formula."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bapose.codecs import BAPoseCodec
from bapose.evaluation.upper_bound import LOSS_CAUSES, outcomes
from bapose.data.metadata import DatasetMeta
from bapose.errors import ConfigError
from bapose.predictor import decode, decode_multiscale
from bapose.predictor import sample as _sample

META = DatasetMeta.coco()
K = META.num_keypoints
DEKR = {"offset_owner": "smaller", "center_collision": "ignore", "pose_nms": "dekr", "heatmap_window": "dekr"}
SIZE = (256, 256)


def person(center: tuple[float, float], height: float, seed: int = 0) -> np.ndarray:
    """``(K, 3)`` a COCO-17 figure of ``height`` px whose joints average to ``center``; ``seed`` varies the pose
    (face and torso by 1 % of the height, arms and legs by 8 %: no two people strike the same pose)."""
    rng = np.random.default_rng(seed)
    # nose, eyes, ears, shoulders, elbows, wrists, hips, knees, ankles in units of height, y down, centred on 0
    base = np.array([[0, -.42], [-.03, -.44], [.03, -.44], [-.06, -.43], [.06, -.43], [-.12, -.30], [.12, -.30],
                     [-.16, -.12], [.16, -.12], [-.18, .05], [.18, .05], [-.08, .02], [.08, .02], [-.09, .26],
                     [.09, .26], [-.09, .48], [.09, .48]])
    spread = np.where(np.isin(np.arange(K), [7, 8, 9, 10, 13, 14, 15, 16]), 0.08, 0.01)[:, None]
    xy = base * height + rng.normal(0, 1, base.shape) * spread * height
    xy += np.asarray(center) - xy.mean(0)
    return np.concatenate([xy, np.full((K, 1), 2.0)], 1)


def run(kp: list[np.ndarray] | np.ndarray, rules: dict | None = None, areas: np.ndarray | None = None,
        **extra) -> np.ndarray:
    """What the codec does with each person of one 256 x 256 image: ``(N,)`` str (``found`` or a loss cause)."""
    kp = np.asarray(kp, np.float64)
    codec = BAPoseCodec(input_size=SIZE, oks_sigmas=META.sigmas, **(rules or {}), **extra)
    areas = np.full(len(kp), 1e4) if areas is None else areas
    return outcomes(codec, kp, areas, SIZE, META.sigmas, areas).causes


def test_dekr_loses_a_person_whose_center_shares_a_pixel_the_default_moves_it() -> None:
    kp = [person((128.3, 120.0), 160, 0), person((129.1, 121.2), 110, 1)]  # both centers round to one grid pixel
    assert sorted(run(kp, DEKR)) == ["center_collision", "found"]
    assert list(run(kp)) == ["found", "found"]
    codec = BAPoseCodec(input_size=SIZE)
    lay = codec.layout(np.asarray(kp), np.full(2, 1e4), (64, 64))
    assert lay.status.tolist() == [0, 2]  # the larger keeps its pixel ("ok"), the smaller is "moved"
    assert np.abs(lay.pixel[1] - np.round(lay.center[1])).max() >= 2  # out of the first one's 3 x 3 NMS window


def test_dekr_loses_a_center_hidden_by_a_neighbour_peak_the_default_frees_it() -> None:
    kp = [person((128.0, 120.0), 160, 0), person((132.5, 121.0), 110, 1)]  # centers one grid pixel apart
    assert "center_collision" in run(kp, DEKR)
    assert list(run(kp)) == ["found", "found"]


def test_dekr_gives_a_larger_persons_center_pixel_to_a_smaller_neighbour() -> None:
    # centers 3 grid px apart: distinct peaks, but the big one's center pixel is in the small one's offset square
    kp = [person((120.0, 120.0), 180, 0), person((132.0, 124.0), 90, 1)]
    assert list(run(kp, DEKR)) == ["offsets_owned", "found"]
    assert list(run(kp, {"offset_owner": "center_first", "center_collision": "ignore", "pose_nms": "dekr"})) \
        == ["found", "found"]
    assert list(run(kp)) == ["found", "found"]


def test_dekr_pose_nms_removes_a_neighbour_who_shares_head_and_torso_oks_keeps_both() -> None:
    # one person right behind another: face, shoulders and hips within 2 px (DEKR: 0.05 x the ~210 px diagonal),
    # arms and legs 48 px lower, so the centers are 5.6 grid px apart: distinct peaks, outside each other's square
    a = person((128.0, 110.0), 200, 0)
    b = a.copy()
    b[:9, :2] += 1.5
    b[11:13, :2] += 1.0
    b[[9, 10, 13, 14, 15, 16], 1] += 48.0
    b[[7, 8], 1] += 48.0
    kp = [a, b]
    assert "pose_nms" in run(kp, DEKR)
    assert list(run(kp)) == ["found", "found"]


def test_the_other_causes_are_named() -> None:
    kp = [person((60.0, 128.0), 150, 0), person((190.0, 128.0), 150, 1)]
    # the small-person rule (both rule sets): an area below min_center_area gets no center
    assert list(run(kp, areas=np.array([1e4, 500.0]))) == ["found", "no_center"]
    assert list(run(kp, DEKR, areas=np.array([1e4, 500.0]))) == ["found", "no_center"]
    # a peak beyond the top-k
    assert sorted(run(kp, max_people=1)) == ["found", "max_people"]
    # decoded at its own center, but refine_radius pulls two joints labelled outside the image onto the border
    edge = person((40.0, 128.0), 150, 2)
    edge[[9, 15], 0] = [-30.0, -25.0]
    assert list(run([edge], refine_radius=2)) == ["low_oks"]
    assert list(run([edge])) == ["found"]
    assert set(LOSS_CAUSES) == {"no_center", "center_collision", "max_people", "offsets_owned", "pose_nms", "low_oks"}


@pytest.mark.parametrize("seed", range(2))
def test_random_tight_crowds_lose_nobody_under_the_default_rules(seed: int) -> None:
    """Property: 50 random crowds of 2-10 people of any size with centers in a 48 x 48 px patch (12 x 12 grid
    pixels: centers share pixels and squares overlap all the time): every person is decoded at OKS >= 0.95."""
    rng = np.random.default_rng(seed)
    lost = collisions = dekr_lost = total = 0
    for _ in range(50):
        n = int(rng.integers(2, 11))
        kp = np.stack([person(tuple(rng.uniform(104, 152, 2)), float(rng.uniform(60, 200)), int(rng.integers(1 << 30)))
                       for _ in range(n)])
        causes = run(kp)
        lost += int((causes != "found").sum())
        dekr_lost += int((run(kp, DEKR) != "found").sum())
        lay = BAPoseCodec(input_size=SIZE).layout(kp, np.full(n, 1e4), (64, 64))
        collisions += int((lay.status != 0).sum())
        total += n
    assert lost == 0
    assert collisions > 0.1 * total and dekr_lost > 0.05 * total  # the crowds are tight enough to matter


def test_encode_stays_exact_for_the_people_it_moves() -> None:
    """A moved center carries its own person's offsets from its new pixel: joints decode to the annotation."""
    kp = np.stack([person((128.3, 120.0), 160, 0), person((129.1, 121.2), 110, 1)])
    codec = BAPoseCodec(input_size=SIZE)
    t = codec.encode(kp, np.full(2, 1e4))
    poses = decode(codec, torch.from_numpy(t["heatmaps"])[None], torch.from_numpy(t["offsets"])[None])[0].poses
    assert len(poses) == 2
    for p in kp:
        err = np.abs(poses[:, :, :2].numpy() - p[None, :, :2]).max((1, 2)).min()
        assert err < 1e-3


# ------------------------------------------------------------------------------- multi-scale: DEKR's formula
def _dekr_pose_nms(poses: list[np.ndarray], heatval, nms_thre: float, nms_num_thre: int, decrease: float,
                   max_num_people: int, scale1_index: int) -> tuple[np.ndarray, np.ndarray]:
    """HRNet/DEKR 7a30313 ``lib/core/nms.py`` ``pose_nms`` + ``nms_core``, transcribed to numpy.

    ``poses``: per scale, largest scale first, ``(n_s, K, 3)`` with the center score in column 2 of every joint;
    ``heatval``: ``(n, K, 2) -> (n, K)`` the averaged heatmap at the joints.
    """
    poses = [p.copy() for p in poses]
    pose_norm = poses[scale1_index]
    max_score = pose_norm[:, :, 2].max() if pose_norm.shape[0] else 1
    for i, pose in enumerate(poses):
        if i != scale1_index:
            max_score_scale = pose[:, :, 2].max() if pose.shape[0] else 1
            pose[:, :, 2] = pose[:, :, 2] / max_score_scale * max_score * decrease
    pose_score = np.concatenate([p[:, :, 2:] for p in poses], 0)
    pose_coord = np.concatenate([p[:, :, :2] for p in poses], 0)
    num_people, num_joints, _ = pose_coord.shape
    hv = heatval(pose_coord)[..., None]
    heat_score = (hv.sum(1) / num_joints)[:, 0]
    pose_score = pose_score * hv
    out = np.concatenate([pose_coord, pose_score], 2)
    # nms_core
    w = pose_coord[:, :, 0].max(-1) - pose_coord[:, :, 0].min(-1)
    h = pose_coord[:, :, 1].max(-1) - pose_coord[:, :, 1].min(-1)
    pose_area = np.repeat((w * w + h * h)[:, None], num_people * num_joints, 1).reshape(num_people, num_people,
                                                                                       num_joints)
    pose_dist = np.sqrt(((pose_coord[:, None] - pose_coord) ** 2).sum(3))
    pose_dist = (pose_dist < nms_thre * np.sqrt(pose_area)).sum(2)
    nms_pose = pose_dist > nms_num_thre
    ignored, keep = [], []
    for i in range(nms_pose.shape[0]):
        if i in ignored:
            continue
        keep_inds = list(np.nonzero(nms_pose[i])[0])
        keep_ind = keep_inds[int(np.argmax(heat_score[keep_inds]))]
        if keep_ind in ignored:
            continue
        keep.append(keep_ind)
        ignored += list(set(keep_inds) - set(ignored))
    out, heat_score = out[keep], heat_score[keep]
    if len(keep) > max_num_people:
        top = np.argsort(-heat_score, kind="stable")[:max_num_people]
        out = out[top]
    return out, np.array([p[:, 2].mean() for p in out])


def _plant(scale_hw: tuple[int, int], people: list[tuple[int, int, float, np.ndarray]], k: int,
           joint_level: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Maps of one scale: center peaks ``(gx, gy, score, joints (k, 2) grid px)``, joint maps ``joint_level``."""
    h, w = scale_hw
    hm = torch.zeros(1, k + 1, h, w)
    hm[0, :k] = torch.from_numpy(joint_level).float()
    off = torch.zeros(1, 2 * k, h, w)
    for gx, gy, s, joints in people:
        hm[0, k, gy, gx] = s
        off[0, :, gy, gx] = torch.from_numpy((joints - [gx, gy]).reshape(-1)).float()
    return hm, off


def test_decode_multiscale_matches_dekrs_pose_nms_formula() -> None:
    """DECREASE rescales the other scales' center scores to DECREASE x scale 1's best, pose NMS uses 0.15 of the
    diagonal and > K/2 joints, groups keep their best mean heatmap value, at most MAX_NUM_PEOPLE remain."""
    k, base = 5, (128, 128)  # grid 32 x 32 at scale 1
    rng = np.random.default_rng(0)
    levels = np.stack([np.where(np.arange(64)[None, :] < 32, 0.3 + 0.1 * j, 0.6 - 0.05 * j).repeat(64, 0)
                       for j in range(k)])  # left half / right half of every joint map: heat_score tells people apart
    def shape(cx: float, cy: float, r: float) -> np.ndarray:
        return np.array([[cx, cy - r], [cx - r, cy], [cx + r, cy], [cx - r / 2, cy + r], [cx + r / 2, cy + r]])
    # people in base grid px; per scale s a person appears at the center pixel round(c * s) (their duplicates)
    people = [(6.0, 8.0, 3.0), (9.0, 9.0, 3.0), (24.0, 8.0, 4.0), (24.0, 24.0, 4.0), (8.0, 25.0, 3.0)]
    scales = {2.0: [0, 1, 2, 3], 1.0: [0, 2, 3, 4], 0.5: [1, 3, 4]}
    codec = BAPoseCodec(input_size=base, max_people=4, nms_kernel=3, pose_nms="dekr", ms_pose_nms_ratio=0.15,
                        ms_scale_decrease=0.8)
    outputs, factors = [], []
    for s, who in scales.items():
        hw = (int(32 * s), int(32 * s))
        planted = []
        for i in who:
            cx, cy, r = people[i]
            g = lambda v: (v + 0.5) * s - 0.5  # noqa: E731 - base grid -> this scale's grid (pixel-area aligned)
            joints = shape(g(cx), g(cy), r * s) + rng.normal(0, 0.15 * s, (k, 2))
            planted.append((int(round(g(cx))), int(round(g(cy))), float(rng.uniform(0.3, 0.9)), joints))
        lv = F.interpolate(torch.from_numpy(levels)[None].float(), size=hw, mode="nearest")[0].numpy()
        outputs.append(_plant(hw, planted, k, lv))
        factors.append((s, s))
    got = decode_multiscale(codec, outputs, factors, base)[0]

    # the reference: candidates of each scale in base input pixels (DEKR: largest scale first), center scores
    order = sorted(range(len(factors)), key=lambda i: -factors[i][0])
    per_scale = []
    avg = 0
    for i in order:
        hm, off = outputs[i]
        c = codec.candidates(hm, off)
        s = factors[i][0]
        joints = ((c.joints[0] + 0.5) / s - 0.5)[c.valid[0]].numpy()
        score = c.scores[0][c.valid[0]].numpy()
        per_scale.append(np.concatenate([joints, np.repeat(score[:, None, None], k, 1)], 2))
        avg = avg + F.interpolate(hm, size=(32, 32), mode="bilinear", align_corners=False)
    avg = avg / len(outputs)
    heatval = lambda xy: _sample(avg[:, :k], codec.to_grid(torch.from_numpy(xy).float())[None])[0].numpy()  # noqa
    ref, ref_scores = _dekr_pose_nms(per_scale, heatval, 0.15, math.floor(k / 2), 0.8, 4,
                                     sorted(factors, reverse=True).index((1.0, 1.0)))
    assert 4 == len(ref) < sum(len(p) for p in per_scale)  # NMS merged duplicates and the cap of 4 applied
    key = lambda p: tuple(np.round(p[:, :2], 3).ravel())  # noqa: E731
    want = {key(p): sc for p, sc in zip(ref, ref_scores)}
    have = {key(p): float(sc) for p, sc in zip(got.poses.numpy(), got.scores.numpy())}
    assert set(have) == set(want)
    for kk in want:
        assert have[kk] == pytest.approx(want[kk], rel=1e-5)
        np.testing.assert_allclose(got.poses.numpy()[list(have).index(kk), :, 2],
                                   ref[list(want).index(kk), :, 2], rtol=1e-5)
    # without DECREASE (1.0) the other scales' scores change, so the formula is really in play
    other = BAPoseCodec(input_size=base, max_people=4, nms_kernel=3, pose_nms="dekr", ms_scale_decrease=1.0)
    assert sorted(decode_multiscale(other, outputs, factors, base)[0].scores.tolist()) \
        != pytest.approx(sorted(have.values()))


def test_multiscale_defaults_are_dekrs_coco_values() -> None:
    codec = BAPoseCodec()
    assert (codec.ms_pose_nms_ratio, codec.ms_scale_decrease, codec.max_people_after_nms, codec.max_people) \
        == (0.15, 0.9, None, 30)
    assert codec.pose_nms_ratio == 0.05 and codec.pose_nms_fraction == 0.5


def test_checkpoint_defaults_restore_the_trained_nms_rule_and_old_checkpoints_still_load() -> None:
    old = {"input_size": 512, "stride": 4, "keypoint_sigma": 2.0, "center_sigma": 4.0, "offset_radius": 4,
           "background_weight": 0.1, "min_center_area": 1024.0, "per_joint_offset_weights": True, "max_people": 30,
           "center_threshold": 0.01, "nms_kernel": 0, "pose_nms_ratio": 0.05, "pose_nms_fraction": 0.5,
           "refine_radius": None, "rescore_path": None}  # a checkpoint's bapose.codec before the crowd rules
    assert BAPoseCodec(**old).nms_rule == "oks"
    assert BAPoseCodec().with_checkpoint_defaults(old).nms_rule == "oks"
    new = dataclasses.asdict(BAPoseCodec(**DEKR))
    restored = BAPoseCodec().with_checkpoint_defaults(new)
    assert restored.pose_nms == "dekr" and restored.offset_owner == "nearest_center"  # encode rules: the config's
    assert BAPoseCodec(pose_nms="none").with_checkpoint_defaults(new).pose_nms == "none"  # an explicit choice wins
    with pytest.raises(ConfigError, match="pose_nms"):
        BAPoseCodec(pose_nms="greedy")
    with pytest.raises(ConfigError, match="offset_owner"):
        BAPoseCodec(offset_owner="larger")
    with pytest.raises(ConfigError, match="ms_scale_decrease"):
        BAPoseCodec(ms_scale_decrease=0)
