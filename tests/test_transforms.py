"""Training augmentation and eval resizing: keypoints land where the image content lands."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from bapose.data.metadata import DatasetMeta
from bapose.data.transforms import (AffineParams, EvalTransform, TrainTransform, apply_affine, eval_resize_matrix,
                                    flip_keypoints, invert_affine, train_affine_matrix)
from bapose.errors import ConfigError

META = DatasetMeta.coco()
K = META.num_keypoints


def _dot_image(h: int, w: int, points: np.ndarray) -> np.ndarray:
    """(h, w, 3) uint8 with a smooth blob per point: its intensity peak is the point, to sub-pixel precision."""
    ys, xs = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w), np.float64)
    for x, y in points:
        img = np.maximum(img, np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * 3.0**2)))
    return np.repeat((img * 255).round().astype(np.uint8)[..., None], 3, axis=2)


def _peak(channel: np.ndarray, near: np.ndarray, radius: int = 6) -> np.ndarray:
    """Intensity-weighted centroid of ``channel`` in a window around ``near`` (x, y)."""
    x0, y0 = int(round(near[0])), int(round(near[1]))
    ys, xs = np.mgrid[y0 - radius:y0 + radius + 1, x0 - radius:x0 + radius + 1]
    win = channel[ys, xs].astype(np.float64)
    win = np.clip(win - 0.5 * win.max(), 0, None)  # centroid of the top half of the blob only
    return np.array([(win * xs).sum() / win.sum(), (win * ys).sum() / win.sum()])


def _people(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    kp = np.zeros((n, K, 3), np.float32)
    kp[..., 0] = rng.uniform(0, w - 1, (n, K))
    kp[..., 1] = rng.uniform(0, h - 1, (n, K))
    kp[..., 2] = rng.choice([0, 1, 2], (n, K))
    return kp


def test_flip_swaps_left_right_and_mirrors_exactly() -> None:
    rng = np.random.default_rng(0)
    h, w, size = 90, 120, 96
    kp = _people(rng, 3, h, w)
    image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    t = TrainTransform(size, META.flip_index)
    base = AffineParams(scale=1.1, rotation=12.0, shift=(3.0, -5.0), flip=False)
    plain = t(image, kp, np.ones(3), params=base)
    flipped = t(image, kp, np.ones(3), params=AffineParams(1.1, 12.0, (3.0, -5.0), flip=True))
    fi = list(META.flip_index)
    # joint k of the flipped sample is joint flip_index[k] of the plain one, mirrored as x' = S - 1 - x
    np.testing.assert_allclose(flipped["keypoints"][..., 0], size - 1 - plain["keypoints"][:, fi, 0], atol=1e-3)
    np.testing.assert_allclose(flipped["keypoints"][..., 1], plain["keypoints"][:, fi, 1], atol=1e-3)
    np.testing.assert_array_equal(flipped["keypoints"][..., 2], plain["keypoints"][:, fi, 2])
    assert META.keypoints[fi[META.keypoints.index("left_wrist")]] == "right_wrist"
    # the pixels are mirrored too (cv2's fixed-point bilinear weights may differ by one grey level)
    diff = np.abs(flipped["image"].astype(int) - plain["image"][:, ::-1].astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.05
    # the standalone helper agrees with the transform
    np.testing.assert_allclose(flip_keypoints(plain["keypoints"], fi, size), flipped["keypoints"], atol=1e-3)


def test_rotation_matches_cv2_rotation_matrix_on_keypoints_and_pixels() -> None:
    """Square image, crop = image, pure rotation: the matrix must be cv2.getRotationMatrix2D about the centre."""
    size = 128
    pts = np.array([[30.0, 40.0], [90.5, 64.0], [64.0, 100.25], [50.0, 80.0]])
    image = _dot_image(size, size, pts)
    kp = np.zeros((1, K, 3), np.float32)
    kp[0, :4, :2], kp[0, :4, 2] = pts, 2
    t = TrainTransform(size, META.flip_index)
    out = t(image, kp, np.ones(1), params=AffineParams(scale=1.0, rotation=25.0))
    expected_matrix = cv2.getRotationMatrix2D(((size - 1) / 2, (size - 1) / 2), 25.0, 1.0)
    expected = cv2.transform(pts[None].astype(np.float64), expected_matrix)[0]
    np.testing.assert_allclose(out["keypoints"][0, :4, :2], expected, atol=1e-3)
    # and the image content moved to the same place (blob peaks within half a pixel)
    for p in expected:
        assert np.abs(_peak(out["image"][..., 0], p) - p).max() < 0.5


@pytest.mark.parametrize("scale,rotation,shift", [(0.75, 0.0, (0, 0)), (1.5, -30.0, (20.0, -10.0)),
                                                  (1.2, 17.0, (-8.0, 6.0))])
def test_scale_rotation_shift_moves_pixels_where_keypoints_go(scale: float, rotation: float,
                                                              shift: tuple[float, float]) -> None:
    h, w, size = 150, 200, 128
    pts = np.array([[70.0, 60.0], [100.0, 75.0], [130.0, 90.0], [95.0, 110.0]])
    image = _dot_image(h, w, pts)
    kp = np.zeros((1, K, 3), np.float32)
    kp[0, :4, :2], kp[0, :4, 2] = pts, 2
    params = AffineParams(scale, rotation, shift)
    out = TrainTransform(size, META.flip_index)(image, kp, np.array([100.0]), params=params)
    matrix, zoom = train_affine_matrix(h, w, size, params)
    np.testing.assert_allclose(out["keypoints"][0, :4, :2], cv2.transform(pts[None], matrix)[0], atol=1e-3)
    assert zoom == pytest.approx(size / (scale * min(h, w)))
    assert out["areas"][0] == pytest.approx(100.0 * zoom**2, rel=1e-5)
    for p in out["keypoints"][0, :4, :2]:
        assert np.abs(_peak(out["image"][..., 0], p) - p).max() < 0.5
    # the zoom is a similarity: distances scale by `zoom`
    d_in = np.linalg.norm(pts[0] - pts[2])
    d_out = np.linalg.norm(out["keypoints"][0, 0, :2] - out["keypoints"][0, 2, :2])
    assert d_out == pytest.approx(d_in * zoom, rel=1e-5)


def test_invisible_stays_invisible_and_out_of_frame_keypoints_survive() -> None:
    rng = np.random.default_rng(3)
    h, w, size = 100, 100, 64
    kp = _people(rng, 4, h, w)
    kp[0, 0] = [-50.0, 20.0, 2]  # labelled but left of the image
    kp[1, 1] = [400.0, 500.0, 1]  # labelled, far outside
    t = TrainTransform(size, META.flip_index, flip_prob=0.0)
    for seed in range(5):
        out = t(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), kp, np.ones(4), rng=np.random.default_rng(seed))
        np.testing.assert_array_equal(out["keypoints"][..., 2], kp[..., 2])  # visibility untouched
        expected = apply_affine(kp[..., :2], out["matrix"])
        np.testing.assert_allclose(out["keypoints"][..., :2], expected, atol=1e-3)
        # out-of-frame coordinates are kept (the codec's bounds check decides), not clipped or dropped
        assert out["keypoints"].shape == kp.shape
        assert (out["keypoints"][1, 1, :2] > size).any()


def test_ignore_mask_is_warped_with_the_image() -> None:
    h, w, size = 80, 120, 64
    mask = np.zeros((h, w), bool)
    mask[20:50, 30:70] = True
    image = np.where(mask[..., None], 255, 0).astype(np.uint8).repeat(3, axis=2)
    t = TrainTransform(size, META.flip_index)
    out = t(image, np.zeros((0, K, 3)), np.zeros(0), mask, params=AffineParams(0.9, 10.0, (4.0, 2.0), True))
    warped = out["ignore_mask"]
    assert warped.dtype == bool and warped.shape == (size, size)
    bright = out["image"][..., 0] > 127
    agree = (warped == bright).mean()
    assert agree > 0.98
    assert warped.sum() == pytest.approx(mask.sum() * (size / (0.9 * h)) ** 2, rel=0.1)


def test_random_draws_stay_in_range_and_are_reproducible() -> None:
    t = TrainTransform(512, META.flip_index)
    rng = np.random.default_rng(0)
    draws = [t.sample(480, 640, rng) for _ in range(400)]
    scales = np.array([d.scale for d in draws])
    rots = np.array([d.rotation for d in draws])
    shifts = np.array([d.shift for d in draws])
    flips = np.array([d.flip for d in draws])
    assert scales.min() >= 0.75 and scales.max() <= 1.5 and scales.max() - scales.min() > 0.6
    assert np.abs(rots).max() <= 30 and np.abs(rots).max() > 25
    # DEKR's unit: |shift| <= 40 * crop / 200 source pixels = 0.2 * output side in output pixels
    assert (np.abs(shifts) <= 40 * scales[:, None] * 480 / 200 + 1e-9).all()
    assert 0.4 < flips.mean() < 0.6
    again = [t.sample(480, 640, np.random.default_rng(0)) for _ in range(1)]
    assert again[0] == draws[0]
    # the input-pixel alternative: shift limit in output pixels
    t_px = TrainTransform(512, META.flip_index, max_translate_px=40)
    for _ in range(100):
        p = t_px.sample(480, 640, rng)
        m, zoom = train_affine_matrix(480, 640, 512, p)
        centre_out = apply_affine(np.array([(640 - 1) / 2, (480 - 1) / 2]), m)
        rot_only, _ = train_affine_matrix(480, 640, 512, AffineParams(p.scale, p.rotation, (0.0, 0.0)))
        moved = centre_out - apply_affine(np.array([(640 - 1) / 2, (480 - 1) / 2]), rot_only)
        assert np.abs(moved).max() <= 40 * np.sqrt(2) + 1e-6


def test_color_jitter_changes_pixels_not_geometry() -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    kp = _people(rng, 2, 64, 64)
    params = AffineParams(1.0, 5.0)
    plain = TrainTransform(64, META.flip_index)(image, kp, np.ones(2), params=params)
    t = TrainTransform(64, META.flip_index, color_jitter=0.4)
    a = t(image, kp, np.ones(2), params=params, rng=np.random.default_rng(7))
    b = t(image, kp, np.ones(2), params=params, rng=np.random.default_rng(7))
    np.testing.assert_array_equal(a["image"], b["image"])  # seeded: reproducible
    assert np.abs(a["image"].astype(int) - plain["image"].astype(int)).mean() > 1.0
    np.testing.assert_array_equal(a["keypoints"], plain["keypoints"])


def test_eval_transform_sizes_and_input_to_orig_round_trip() -> None:
    h, w = 425, 640
    pts = np.array([[100.0, 200.0], [500.5, 50.0], [320.0, 400.0]])
    image = _dot_image(h, w, pts)
    out = EvalTransform(128)(image)
    ph, pw = out["image"].shape[:2]
    rh, rw = out["valid_size"]
    assert (ph % 32, pw % 32) == (0, 0) and min(rh, rw) == 128 and rw == round(640 * 128 / 425)
    assert out["orig_size"] == (h, w)
    assert (out["image"][rh:] == 0).all() and (out["image"][:, rw:] == 0).all()
    to_input = invert_affine(out["input_to_orig"])
    for p in pts:
        q = apply_affine(p, to_input)
        back = apply_affine(_peak(out["image"][..., 0], q, radius=3), out["input_to_orig"])
        assert np.abs(back - p).max() < 1.5  # blob of sigma 3 px shrunk 3.3x: ~1 original px of sub-pixel noise
    # an upscaled image maps back to half a pixel
    up = EvalTransform(512)(image)
    for p in pts:
        q = apply_affine(p, invert_affine(up["input_to_orig"]))
        assert np.abs(apply_affine(_peak(up["image"][..., 0], q), up["input_to_orig"]) - p).max() < 0.5
    (rh2, rw2), (ph2, pw2), m = eval_resize_matrix(480, 640, 500)
    assert (rh2, rw2, ph2, pw2) == (500, 667, 512, 672)
    np.testing.assert_allclose(apply_affine(np.array([-0.5, -0.5]), m), [-0.5, -0.5])  # image corner is fixed


def test_bad_augmentation_values_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="min_scale"):
        TrainTransform(64, META.flip_index, min_scale=2.0, max_scale=1.0)
    with pytest.raises(ConfigError, match="scale_type"):
        TrainTransform(64, META.flip_index, scale_type="diag")
