"""Training targets as pure numpy functions (DEKR / MMPose SPR targets): Gaussians, centres, offsets, masks.

:class:`bapose.codecs.BAPoseCodec` composes these (``encode``); nothing here knows about the codec object, so each
rule can be read, tested and reused on its own (as MMPose's ``codecs/utils``). Coordinates are output-grid pixels;
arrays are ``(C, h, w)``. Two heatmap windows:

- ``3sigma`` (ours): the square ``round(g) ± ceil(3 sigma)``; a point is drawn when its grid pixel is on the map,
  ``g`` in ``[-0.5, size - 0.5)``.
- ``dekr``: DEKR's ``HeatmapGenerator`` (HRNet/DEKR 7a30313 ``lib/dataset/target_generators/target_generators.py``):
  the pixels ``floor(g - 3 sigma - 1) .. ceil(g + 3 sigma + 2) - 1``, and a point is drawn only when
  ``0 <= g < size``.

Both store ``exp(-d^2 / 2 sigma^2)`` exactly at every pixel of the window, max-merged over people, and weigh the
window 1 in the loss (``heatmap_weights``: every window pixel holds a positive value, DEKR's ``ignored`` map).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from bapose.errors import DataError

# heatmap windows (codec field ``heatmap_window``); the first is DEKR's
HEATMAP_WINDOWS = ("dekr", "3sigma")


def on_map(xs: np.ndarray, ys: np.ndarray, grid_hw: tuple[int, int], window: str) -> np.ndarray:
    """``(P,)`` bool: which points a heatmap draws (see the module docstring for each window's bounds)."""
    h, w = grid_hw
    lo = 0.0 if window == "dekr" else -0.5
    return (xs >= lo) & (xs < w + lo) & (ys >= lo) & (ys < h + lo)


def _window(v: np.ndarray, sigma: float, window: str) -> tuple[np.ndarray, np.ndarray]:
    """Pixel indices ``(P, S)`` of each point's window along one axis and which of them belong to it."""
    if window == "dekr":
        start = np.floor(v - 3 * sigma - 1).astype(np.int64)
        stop = np.ceil(v + 3 * sigma + 2).astype(np.int64)
        span = int(math.ceil(6 * sigma + 3)) + 1  # the longest window; shorter ones are masked
        idx = start[:, None] + np.arange(span)
        return idx, idx < stop[:, None]
    r = int(math.ceil(3 * sigma))
    idx = np.round(v).astype(np.int64)[:, None] + np.arange(-r, r + 1)
    return idx, np.ones(idx.shape, bool)


def splat_gaussians(heat: np.ndarray, channels: np.ndarray, xs: np.ndarray, ys: np.ndarray, sigma: float,
                    window: str = "3sigma") -> None:
    """Max-merge unit-peak Gaussians into ``heat (C, h, w)`` in place.

    Args:
        channels, xs, ys: ``(P,)`` channel index and sub-pixel grid position of each Gaussian (already chosen by
            :func:`on_map`); sigma: standard deviation in grid pixels; window: ``3sigma`` | ``dekr``.
    """
    if len(xs) == 0:
        return
    _, h, w = heat.shape
    px, okx = _window(xs, sigma, window)
    py, oky = _window(ys, sigma, window)
    # unbiased: the value is exact at every grid pixel, the continuous peak (1) sits at the sub-pixel point
    gx = np.exp(-((px - xs[:, None]) ** 2) / (2 * sigma**2)).astype(np.float32)
    gy = np.exp(-((py - ys[:, None]) ** 2) / (2 * sigma**2)).astype(np.float32)
    vals = gy[:, :, None] * gx[:, None, :]  # (P, S, S)
    valid = ((py >= 0) & (py < h) & oky)[:, :, None] & ((px >= 0) & (px < w) & okx)[:, None, :]
    flat = (channels[:, None, None] * h + py[:, :, None]) * w + px[:, None, :]  # (P, S, S) into heat.ravel()
    # several people may write the same pixel of the same joint: keep the maximum (max-merge, DEKR); ufunc.at on
    # one flat index is ~10x faster than on a (c, y, x) tuple
    np.maximum.at(heat.reshape(-1), flat[valid], vals[valid])


def joint_centers(grid: np.ndarray, labelled: np.ndarray) -> np.ndarray:
    """``(N, 2)`` mean of each person's labelled joints ``grid (N, K, 2)`` (DEKR's and MMPose's centre); NaN for a
    person without any."""
    count = labelled.sum(1)
    gz = np.where(labelled[..., None], grid, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return gz.sum(1) / count[:, None]


def box_diagonals(grid: np.ndarray, labelled: np.ndarray) -> np.ndarray:
    """``(N,)`` diagonal of the box of each person's labelled joints (MMPose's ``get_diagonal_lengths``): 0 for a
    single joint, NaN without any."""
    lo = np.where(labelled[..., None], grid, np.inf).min(1)
    hi = np.where(labelled[..., None], grid, -np.inf).max(1)
    with np.errstate(invalid="ignore"):
        diag = np.hypot(*(hi - lo).T)
    return np.where(labelled.any(1), diag, np.nan)


def offset_targets(grid: np.ndarray, labelled: np.ndarray, inv_size: np.ndarray, owner: np.ndarray,
                   per_joint: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Offset maps and their loss weights when whole pixels belong to one person (``center_first``,
    ``nearest_center``; DEKR's per-joint maps come from :func:`bapose.codecs.ownership.dekr_offsets`).

    Args:
        grid: ``(N, K, 2)`` joints in grid pixels; labelled: ``(N, K)``; inv_size: ``(N,)`` each person's weight.
        owner: ``(h, w)`` whose offsets each pixel carries (-1: none): every labelled joint of the owner is
            regressed there.
        per_joint: weights ``(2K, h, w)`` with 0 for unlabelled joints, else ``(1, h, w)``.

    Returns:
        ``offsets (2K, h, w)`` float32 as (x0, y0, x1, y1, ...), ``joint - pixel``; ``weights``.
    """
    k = grid.shape[1]
    h, w = owner.shape
    offsets = np.zeros((2 * k, h, w), np.float32)
    weights = np.zeros((2 * k if per_joint else 1, h, w), np.float32)
    ys, xs = np.nonzero(owner >= 0)
    if not len(ys):
        return offsets, weights
    who = owner[ys, xs]  # (P,)
    lab = labelled[who]  # (P, K); unlabelled joints: offset 0 (weight 0 with per_joint)
    offsets[0::2, ys, xs] = np.where(lab, grid[who, :, 0] - xs[:, None], 0.0).T
    offsets[1::2, ys, xs] = np.where(lab, grid[who, :, 1] - ys[:, None], 0.0).T
    if per_joint:
        weights[:, ys, xs] = (np.repeat(lab, 2, axis=1) * inv_size[who][:, None]).T
    else:
        weights[0, ys, xs] = inv_size[who]
    return offsets, weights


def downsample_mask(mask: np.ndarray, grid: tuple[int, int], stride: int, name: str = "ignore_mask") -> np.ndarray:
    """``(H, W)`` or ``(h, w)`` bool mask -> ``(h, w)`` bool: a grid cell is set when most of it is set."""
    h, w = grid
    if mask.shape == (h, w):
        return mask.astype(bool)
    H, W = mask.shape
    if (H, W) != (h * stride, w * stride):
        raise DataError(f"encode: field '{name}' has shape {tuple(mask.shape)}; expected the input image size "
                        f"{(h * stride, w * stride)} or the output grid {(h, w)}")
    if not mask.any():
        return np.zeros((h, w), bool)
    # area average of a 0/255 image (cv2's INTER_AREA is ~10x faster than a numpy block mean at 512^2)
    frac = cv2.resize((mask != 0).view(np.uint8) * np.uint8(255), (w, h), interpolation=cv2.INTER_AREA)
    return frac >= 128


def heatmap_weights(heat: np.ndarray, background: float, ignore: np.ndarray | None = None,
                    invalid: np.ndarray | None = None) -> np.ndarray:
    """``(C, h, w)`` float32: 1 where a Gaussian window is drawn, ``background`` elsewhere, 0 on ``ignore`` (crowds,
    unlabelled people) and ``invalid`` (outside the source image) grid cells (``(h, w)`` bool each)."""
    weights = np.where(heat > 0, np.float32(1.0), np.float32(background))
    for off in (ignore, invalid):
        if off is not None:
            weights[:, off] = 0.0
    return weights
