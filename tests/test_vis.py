"""bapose.vis: what is drawn where, opacity from joint scores, thresholds, left/right limb families."""

from __future__ import annotations

import numpy as np
import pytest

from bapose.data.metadata import DatasetMeta
from bapose.errors import DataError
from bapose.vis import draw_heatmaps, draw_offsets, draw_ownership, draw_poses, joint_sides, limb_sides

COCO = DatasetMeta.coco()


def _pose(cx: float, cy: float, score: float = 1.0, k: int = 17) -> np.ndarray:
    # joints on a ring of radius 30 around (cx, cy): every limb has length > 0
    a = np.linspace(0, 2 * np.pi, k, endpoint=False)
    return np.stack([cx + 30 * np.cos(a), cy + 30 * np.sin(a), np.full(k, score)], -1)


def test_joints_are_drawn_in_place_and_input_is_untouched():
    img = np.zeros((120, 200, 3), np.uint8)
    pose = _pose(60, 60)
    out = draw_poses(img, pose[None], np.array([0.9]), COCO, show_scores=False)
    assert img.max() == 0 and out.shape == img.shape and out.dtype == np.uint8
    xs, ys = np.round(pose[:, 0]).astype(int), np.round(pose[:, 1]).astype(int)
    assert (out[ys, xs].max(1) > 100).all()            # every joint centre painted, opaque
    assert out[:, 130:].max() == 0                     # far from the person nothing changes


def test_joint_score_sets_opacity_and_thresholds_hide():
    img = np.full((100, 100, 3), 40, np.uint8)
    pose = _pose(50, 50)
    pose[0, 2], pose[4, 2], pose[8, 2] = 1.0, 0.3, 0.01   # 0.01 < kpt_threshold: not drawn
    out = draw_poses(img, pose[None], None, COCO, kpt_threshold=0.05, normalize_joint_scores=False)
    diff = np.abs(out.astype(int) - img).sum(-1)
    at = lambda j: diff[int(round(pose[j, 1])), int(round(pose[j, 0]))]  # noqa: E731
    assert at(0) > at(4) > 0          # score 1 opaque, 0.3 translucent
    assert at(8) < at(4)              # below kpt_threshold: no dot (another limb may still pass nearby)
    # a person below score_threshold is skipped entirely
    out2 = draw_poses(img, pose[None], np.array([0.2]), COCO, score_threshold=0.3)
    assert np.array_equal(out2, img)


def test_left_right_limb_families_from_names():
    sides = joint_sides(COCO)
    assert sides[COCO.keypoints.index("left_wrist")] == -1 and sides[COCO.keypoints.index("right_knee")] == 1
    assert sides[COCO.keypoints.index("nose")] == 0
    limbs = limb_sides(COCO)
    sk = [tuple(p) for p in COCO.skeleton]
    ls, rs = COCO.keypoints.index("left_shoulder"), COCO.keypoints.index("right_shoulder")
    le, re = COCO.keypoints.index("left_elbow"), COCO.keypoints.index("right_elbow")
    assert limbs[sk.index((ls, le))] == -1 and limbs[sk.index((rs, re))] == 1 and limbs[sk.index((ls, rs))] == 0
    # drawn: a left limb and a right limb of the same person get different colours
    img = np.zeros((100, 200, 3), np.uint8)
    pose = np.zeros((17, 3))
    pose[:, 2] = 1.0
    pose[ls, :2], pose[le, :2] = (20, 20), (20, 80)
    pose[rs, :2], pose[re, :2] = (150, 20), (150, 80)
    keep = [ls, le, rs, re]
    pose[[j for j in range(17) if j not in keep], 2] = 0.0
    out = draw_poses(img, pose[None], None, COCO)
    assert out[50, 20].max() > 100 and out[50, 150].max() > 100
    assert not np.array_equal(out[50, 20], out[50, 150])


def test_crowdpose_meta_and_shape_errors():
    cp = DatasetMeta.crowdpose()
    out = draw_poses(np.zeros((80, 80, 3), np.uint8), _pose(40, 40, k=14)[None], np.array([1.0]), cp)
    assert out.max() > 0
    with pytest.raises(DataError, match=r"\(M, 14, 3\)"):
        draw_poses(np.zeros((80, 80, 3), np.uint8), _pose(40, 40)[None], None, cp)
    with pytest.raises(DataError, match="RGB uint8"):
        draw_poses(np.zeros((80, 80), np.uint8), _pose(40, 40)[None], None, COCO)


def test_heatmap_and_offset_overlays():
    img = np.full((64, 64, 3), 100, np.uint8)
    hm = np.zeros((18, 16, 16), np.float32)
    hm[3, 4, 4] = 1.0
    out = draw_heatmaps(img, hm)
    assert not np.array_equal(out[16:20, 16:20], img[16:20, 16:20]) and np.array_equal(out[50:, 50:], img[50:, 50:])
    off = np.zeros((34, 16, 16), np.float32)
    off[0::2, 8, 8], off[1::2, 8, 8] = 5.0, 0.0        # every joint 5 grid pixels right of (8, 8)
    wgt = np.zeros((1, 16, 16), np.float32)
    wgt[0, 8, 8] = 1.0
    arrows = draw_offsets(img, off, wgt, stride=4, meta=COCO)
    changed = np.nonzero(np.abs(arrows.astype(int) - img).sum(-1))
    assert changed[1].min() >= 32 and changed[1].max() >= 50 and abs(changed[0].mean() - 33.5) < 3


def test_draw_ownership_tints_owned_cells_marks_centers_and_crosses_out_the_lost():
    owner = np.full((16, 16), -1)
    owner[2:7, 2:7] = 0
    owner[2:7, 7:12] = 1
    pixels = np.array([[4, 4], [9, 4], [-1, -1]])
    centers = np.array([[4.2, 4.1], [9.0, 4.0], [12.0, 12.0]])
    img = np.full((64 * 2, 64 * 2, 3), 100, np.uint8)
    out = draw_ownership(img, owner, pixels, centers, lost=np.array([False, False, True]), stride=4, zoom=2)
    cell = 8
    tint0, tint1 = out[3 * cell + 2, 3 * cell + 2], out[3 * cell + 2, 10 * cell + 2]  # inside each square
    assert np.abs(tint0.astype(int) - tint1.astype(int)).sum() > 60  # two owners, two colours
    assert (out[14 * cell + 4, 2 * cell + 4] == 35).all()  # an unowned cell: the image, darkened
    assert (out[4 * cell + 1, 4 * cell + 4] == 255).all()  # white ring of person 0's center dot
    x, y = int(12.5 * cell), int(12.5 * cell)  # person 2 is lost: a red cross at its center
    assert out[y, x, 0] > 200 and out[y, x, 1] < 80
    assert img.max() == 100  # input untouched
