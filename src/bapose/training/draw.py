"""Minimal drawing of predicted poses for the run folder's ``val_predictions.png`` (bapose.vis does more)."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np


def _color(i: int) -> tuple[int, int, int]:
    # distinct, stable colours per person: golden-ratio hue steps in HSV
    hsv = np.uint8([[[int(i * 0.618033988 * 180) % 180, 220, 255]]])
    return tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0])


def draw_poses(image: np.ndarray, poses: np.ndarray, skeleton: Sequence[tuple[int, int]] = (),
               joint_threshold: float = 0.1, scores: np.ndarray | None = None,
               score_threshold: float = 0.1) -> np.ndarray:
    """Draw people on a copy of an RGB uint8 image.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        poses: ``(M, K, 3)`` (x, y, joint score) in the image's pixels.
        skeleton: 0-based joint pairs (``DatasetMeta.skeleton``).
        joint_threshold: joints (and limbs) scoring below it are not drawn.
        scores: ``(M,)`` person scores; people below ``score_threshold`` are skipped.
    """
    out = np.ascontiguousarray(image.copy())
    poses = np.asarray(poses, dtype=np.float64)
    if poses.size == 0:
        return out
    r = max(1, round(min(out.shape[:2]) / 160))
    for i, pose in enumerate(poses):
        if scores is not None and float(scores[i]) < score_threshold:
            continue
        col = _color(i)
        ok = pose[:, 2] >= joint_threshold
        pts = np.round(pose[:, :2]).astype(np.int32)
        for a, b in skeleton:
            if ok[a] and ok[b]:
                cv2.line(out, tuple(map(int, pts[a])), tuple(map(int, pts[b])), col, r, cv2.LINE_AA)
        for k in np.nonzero(ok)[0]:
            cv2.circle(out, tuple(map(int, pts[k])), r + 1, col, -1, cv2.LINE_AA)
    return out


def tile_images(images: Sequence[np.ndarray], cols: int = 4, pad: int = 2) -> np.ndarray:
    """Tile ``(H_i, W_i, 3)`` images into one grid image (cells sized to the largest image, black padding)."""
    if not images:
        raise ValueError("tile_images: no images to tile; expected at least one")
    h = max(im.shape[0] for im in images)
    w = max(im.shape[1] for im in images)
    cols = max(1, min(cols, len(images)))
    rows = -(-len(images) // cols)
    grid = np.zeros((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), np.uint8)
    for i, im in enumerate(images):
        y, x = pad + (i // cols) * (h + pad), pad + (i % cols) * (w + pad)
        grid[y:y + im.shape[0], x:x + im.shape[1]] = im
    return grid
