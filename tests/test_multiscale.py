"""Multi-scale merging removes the same person found at several scales under every pose NMS rule (issue 19 item 2):
DEKR's joint-distance rule at ``ms_pose_nms_ratio`` (0.15) under ``pose_nms=dekr``, and ``ms_pose_nms_oks`` under
``pose_nms=oks`` (the single-scale 0.9 lets them through)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bapose.codecs import BAPoseCodec
from bapose.codecs.grouping import dekr_groups
from bapose.codecs.oks import pose_oks
from bapose.data.metadata import DatasetMeta
from bapose.predictor import decode_multiscale

META = DatasetMeta.coco()
K = META.num_keypoints
H, W = 128, 192  # base input; scale 2 is 256 x 384


def _people(rng: np.random.Generator) -> np.ndarray:
    """Six people of 30-50 px side by side (centres 30 px apart), every joint labelled: ``(6, K, 3)``."""
    centres = np.stack([np.linspace(22, W - 22, 6), rng.uniform(50, 78, 6)], -1)
    size = rng.uniform(15, 25, (6, 1, 1))
    xy = centres[:, None] + rng.uniform(-1, 1, (6, K, 2)) * size * np.array([0.5, 1.0])
    return np.concatenate([xy, np.full((6, K, 1), 2.0)], -1)


def _outputs(codec: BAPoseCodec, kp: np.ndarray, rng: np.random.Generator, jitter: float) -> list:
    """Perfect maps of ``kp`` at scale 1, and at scale 2 of the same people with every joint moved ``jitter`` base
    pixels in a random direction."""
    moved = kp.copy()
    angle = rng.uniform(0, 2 * np.pi, kp.shape[:2])
    moved[..., 0] += jitter * np.cos(angle)
    moved[..., 1] += jitter * np.sin(angle)
    moved[..., :2] = (moved[..., :2] + 0.5) * 2 - 0.5  # base pixels -> scale-2 input pixels
    maps = [codec.encode(kp, np.full(len(kp), 1e4), image_size=(H, W)),
            codec.encode(moved, np.full(len(kp), 1e4), image_size=(2 * H, 2 * W))]
    return [(torch.from_numpy(t["heatmaps"])[None], torch.from_numpy(t["offsets"])[None]) for t in maps]


@pytest.mark.parametrize("rule", ["oks", "dekr"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_people_found_at_two_scales_come_out_once(rule: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    kp = _people(rng)
    codec = BAPoseCodec(input_size=(H, W), min_center_area=0, pose_nms=rule, oks_sigmas=META.sigmas)
    outputs = _outputs(codec, kp, rng, jitter=2.0)
    (people,) = decode_multiscale(codec, outputs, [(1.0, 1.0), (2.0, 2.0)], (H, W))
    poses = people.poses.numpy()
    # every person once: as many people as annotated, each annotated person nearest to exactly one of them
    assert len(poses) == len(kp)
    err = np.linalg.norm(poses[:, None, :, :2] - kp[None, :, :, :2], axis=-1).mean(-1)  # (decoded, annotated)
    assert sorted(err.argmin(1).tolist()) == list(range(len(kp)))
    assert err.min(1).max() < 2.01  # the scale-1 pose, or the scale-2 one (2 px off by construction)
    # the same maps at one scale give the same people (nobody lost to the wider multi-scale threshold)
    (single,) = decode_multiscale(codec, outputs[:1], [(1.0, 1.0)], (H, W))
    assert len(single.scores) == len(kp)


def test_the_single_scale_oks_threshold_would_keep_the_duplicates() -> None:
    """What the declared ms_pose_nms_oks changes: at 0.9 (single-scale pose_nms_oks) the scale-2 copies survive."""
    rng = np.random.default_rng(0)
    kp = _people(rng)
    codec = BAPoseCodec(input_size=(H, W), min_center_area=0, pose_nms="oks", oks_sigmas=META.sigmas)
    outputs = _outputs(codec, kp, rng, jitter=2.0)
    assert codec.ms_pose_nms_oks == 0.4  # conf/codec/default.yaml, documented there
    loose = dataclasses.replace(codec, ms_pose_nms_oks=codec.pose_nms_oks)
    (people,) = decode_multiscale(loose, outputs, [(1.0, 1.0), (2.0, 2.0)], (H, W))
    assert len(people.scores) > len(kp)


def test_what_the_multiscale_thresholds_do_to_real_neighbours(shared_data: Path) -> None:
    """README: the OCHuman sample's closest pair of real people (one occluding the other) is one person to both
    multi-scale rules and two to both single-scale ones."""
    gt = json.loads((shared_data / "ochuman_sample" / "test_ochuman.json").read_text())
    by_image: dict[int, list[np.ndarray]] = {}
    for a in gt["annotations"]:
        kp = np.asarray(a["keypoints"], np.float64).reshape(K, 3)
        if (kp[:, 2] > 0).sum() >= 2:
            by_image.setdefault(a["image_id"], []).append(kp)
    pairs = [(p, q) for people in by_image.values() for i, p in enumerate(people) for q in people[i + 1:]]
    codec = BAPoseCodec(oks_sigmas=META.sigmas)
    closest = None
    for p, q in pairs:
        both = (p[:, 2] > 0) & (q[:, 2] > 0)
        xy = np.stack([p[both, :2], q[both, :2]])
        value = pose_oks(xy, np.asarray(META.sigmas)[both])[0, 1]
        if closest is None or value > closest[0]:
            closest = value, xy
    value, xy = closest
    assert value == pytest.approx(0.63, abs=0.005) and xy.shape[1] == 13
    assert codec.ms_pose_nms_oks < value < codec.pose_nms_oks
    assert dekr_groups(xy, codec.ms_pose_nms_ratio, codec.pose_nms_fraction)[0, 1]
    assert not dekr_groups(xy, codec.pose_nms_ratio, codec.pose_nms_fraction)[0, 1]
