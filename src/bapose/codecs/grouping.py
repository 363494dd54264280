"""The steps after the candidates, in numpy, shared by the torch predictor (:mod:`bapose.predictor`) and the numpy
decoder of exported models (:func:`bapose.export.decode_numpy`): bilinear heatmap reading, joint refinement and pose
NMS (all three ``pose_nms`` rules). One implementation, so the two decoders agree by construction.

Every function works on one image; ``M`` (candidates) is at most ``max_people`` times the number of scales, so the
loops below run over people, never over pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bapose.codecs.oks import pose_oks


def bilinear(maps: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Value of ``maps (C, h, w)`` channel ``c`` at ``(x[..., c], y[..., c])`` grid pixels -> float64 ``x.shape``.

    Bilinear between pixel centres; corners outside the map read 0 (``grid_sample`` zeros padding,
    ``align_corners=True``).
    """
    c, h, w = maps.shape
    # grid_sample normalises by max(side - 1, 1): a 1-pixel side always samples its only pixel
    x = x * ((w - 1) / max(w - 1, 1))
    y = y * ((h - 1) / max(h - 1, 1))
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = x - x0, y - y0
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
    flat = maps.reshape(-1)
    channel = np.arange(c) * (h * w)  # the last axis of x, y is the channel
    out = np.zeros(x.shape, np.float64)
    for dy, wy in ((0, 1 - fy), (1, fy)):
        yi = y0 + dy
        row = channel + np.minimum(np.maximum(yi, 0), h - 1) * w
        inside_y = (yi >= 0) & (yi < h)
        for dx, wx in ((0, 1 - fx), (1, fx)):
            xi = x0 + dx
            inside = inside_y & (xi >= 0) & (xi < w)
            val = flat[row + np.minimum(np.maximum(xi, 0), w - 1)]
            out += np.where(inside, val * wx * wy, 0.0)
    return out


def _pixels(maps: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``maps (C, h, w)`` channel ``c`` at the integer grid pixels ``(x[..., c], y[..., c])``, 0 off the map: what
    :func:`bilinear` reads there, without its four taps."""
    c, h, w = maps.shape
    xi, yi = x.astype(np.int64), y.astype(np.int64)
    inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
    idx = np.arange(c) * (h * w) + np.minimum(np.maximum(yi, 0), h - 1) * w + np.minimum(np.maximum(xi, 0), w - 1)
    return np.where(inside, maps.reshape(-1)[idx], 0.0)


def refine_joints(maps: np.ndarray, gx: np.ndarray, gy: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
    """Move regressed joints to their own heatmap's maximum within ``r`` grid pixels.

    Each joint goes to the best grid pixel of the ``(2r+1)^2`` window around its rounded position (read from that
    joint's own map; candidates clamped to the map, so an edge pixel's clamped copies never beat it), then a per-axis
    quadratic step through its neighbours (the parabola's vertex, at most ±0.5; none where the map is flat or convex;
    a neighbour off the map reads 0).

    Args:
        maps: ``(K, h, w)`` joint heatmaps; gx, gy: ``(T, K)`` joints in grid pixels; r: window radius (> 0).

    Returns:
        ``(gx, gy)`` float64 ``(T, K)`` in grid pixels.
    """
    _, h, w = maps.shape
    steps = np.arange(-r, r + 1, dtype=np.float64)
    dy, dx = np.meshgrid(steps, steps, indexing="ij")
    cx = np.minimum(np.maximum(np.round(gx)[..., None] + dx.ravel(), 0), w - 1)  # (T, K, n)
    cy = np.minimum(np.maximum(np.round(gy)[..., None] + dy.ravel(), 0), h - 1)
    t, k, n = cx.shape
    vals = _pixels(maps, cx.transpose(0, 2, 1).reshape(t * n, k), cy.transpose(0, 2, 1).reshape(t * n, k))
    best = vals.reshape(t, n, k).argmax(1)[..., None]  # (T, K, 1): the first of equal values
    px = np.take_along_axis(cx, best, 2)[..., 0]
    py = np.take_along_axis(cy, best, 2)[..., 0]
    centre = _pixels(maps, px, py)
    out = []
    for lo, hi in ((_pixels(maps, px - 1, py), _pixels(maps, px + 1, py)),
                   (_pixels(maps, px, py - 1), _pixels(maps, px, py + 1))):
        curv = 2 * centre - lo - hi
        shift = np.where(curv > 1e-6, 0.5 * (hi - lo) / np.maximum(curv, 1e-6), 0.0)
        out.append(np.clip(shift, -0.5, 0.5))
    return px + out[0], py + out[1]


def dekr_groups(xy: np.ndarray, ratio: float, fraction: float) -> np.ndarray:
    """DEKR's duplicate test (``lib/core/nms.py``): ``(M, M)`` bool, ``[i, j]`` when more than ``fraction * K``
    joints of pose ``j`` lie within ``ratio`` x pose ``i``'s joint-box diagonal of pose ``i``'s; each row holds
    itself (unless the pose is a point)."""
    k = xy.shape[1]
    size = xy.max(1) - xy.min(1)
    diag = np.hypot(size[:, 0], size[:, 1])  # (M,) each row's own diagonal, as DEKR
    dist = np.hypot(xy[:, None, :, 0] - xy[None, :, :, 0], xy[:, None, :, 1] - xy[None, :, :, 1])  # (M, M, K)
    near = (dist < ratio * diag[:, None, None]).sum(-1) > fraction * k
    np.fill_diagonal(near, True)
    return near


def dekr_nms(near: np.ndarray, rank: np.ndarray) -> list[int]:
    """DEKR's ``nms_core``: walk the poses in order; each not yet absorbed takes its group ``near[i]`` (itself
    included), keeps the group's best by ``rank`` unless that one is already absorbed, and absorbs the group."""
    absorbed = np.zeros(len(rank), bool)
    keep = []
    for i in range(len(rank)):
        if absorbed[i]:
            continue
        group = np.nonzero(near[i])[0]
        best = group[np.argmax(rank[group])]
        if absorbed[best]:
            continue
        keep.append(int(best))
        absorbed[group] = True
    return keep


def greedy_nms(near: np.ndarray, rank: np.ndarray) -> list[int]:
    """Best first by ``rank``; a pose is dropped when a kept one finds it near (``near[kept, pose]``)."""
    alive = np.ones(len(rank), bool)
    keep = []
    for i in np.argsort(-rank, kind="stable"):
        if alive[i]:
            keep.append(int(i))
            alive &= ~near[i]
    return keep


def pose_nms(xy: np.ndarray, scores: np.ndarray, heat: np.ndarray | None, rule: str, *, ratio: float,
             fraction: float, oks_threshold: float, sigmas: Sequence[float] | np.ndarray, cap: int) -> np.ndarray:
    """Indices of the poses that are not duplicates, by ``rule``, at most ``cap`` (the best by the rule's ranking).

    Args:
        xy: ``(M, K, 2+)`` poses in one pixel frame, in candidate order (``dekr`` walks them in this order).
        scores: ``(M,)`` pose scores: the ranking of ``oks`` / ``none``.
        heat: ``(M,)`` mean joint heatmap value: the ranking of ``dekr`` (DEKR's); ``None``: ``scores``.
        rule: ``dekr`` (DEKR's ``nms_core`` with :func:`dekr_groups` at ``ratio`` / ``fraction``), ``oks`` (greedy
            by score, a pose whose :func:`~bapose.codecs.oks.pose_oks` with a kept one is above ``oks_threshold``
            is dropped; MMPose's ``oks_nms``), ``none`` (keep all, best first).
        sigmas: ``(K,)`` OKS sigmas (``oks``).

    Returns:
        int64 indices into ``M``.
    """
    m = len(scores)
    if m == 0:
        return np.zeros(0, np.int64)
    rank = np.asarray(heat if rule == "dekr" and heat is not None else scores, dtype=np.float64)
    p = np.asarray(xy, dtype=np.float64)[..., :2]
    if rule == "none":
        keep = np.argsort(-rank, kind="stable")
    elif rule == "oks":
        keep = greedy_nms(pose_oks(p, sigmas) > oks_threshold, rank)
    else:
        keep = dekr_nms(dekr_groups(p, ratio, fraction), rank)
    keep = np.asarray(keep, np.int64)
    if len(keep) > cap:  # DEKR: the best MAX_NUM_PEOPLE by its ranking
        keep = keep[np.argsort(-rank[keep], kind="stable")[:cap]]
    return keep
