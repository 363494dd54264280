"""Numpy-only decoding of BAPose / DEKR outputs, for deployments that run the ONNX model without PyTorch.

It mirrors :meth:`bapose.codecs.BAPoseCodec.decode` step by step (same conventions, same knobs), so the poses are the
same as the torch codec's on the same maps (``tests/test_export.py`` checks it):

1. center NMS: a center-map pixel is a candidate when it equals the max of its ``nms_kernel`` neighbourhood
   (kernel 3 / 5 / 7 from the map size when ``nms_kernel=0``, as DEKR);
2. top-k: the ``max_people`` best candidates, kept when their score is > ``center_threshold``;
3. offsets -> poses: joint ``k`` of the person centred at grid pixel ``p`` is at ``p + offset_k(p)`` (grid pixels,
   offsets ``(x0, y0, x1, y1, ...)``), mapped to input pixels by ``x = (g + 0.5) * stride - 0.5``
   (``grid_align="dekr"``, nets converted from DEKR: ``x = stride * g``);
4. joint scores: center score x the joint's heatmap, bilinearly sampled at the joint (0 outside the map; under
   ``grid_align="dekr"`` at DEKR's reading point, the grid point ``clamp(floor(x), 0, stride*(w-1)) / stride``);
   person score = mean joint score;
5. pose NMS, as the codec's ``pose_nms`` rules (all three): ``oks`` (default) drops a pose whose OKS with a better
   kept one is above ``pose_nms_oks`` (dataset sigmas ``oks_sigmas``, scale = the mean of the two joint-box areas);
   ``dekr`` is DEKR's ``nms_core`` (candidates in center order, each keeps the best of its group by mean joint
   heatmap value; group = poses with more than ``pose_nms_fraction * K`` joints within ``pose_nms_ratio`` x its
   joint-box diagonal); ``none`` keeps all; then at most ``max_people_after_nms`` people.

Single scale only (``BAPoseCodec.decode``); the multi-scale merge of ``decode_multiscale`` is not mirrored here.

Poses come back in **input-image pixels** (the network input); map them to the original image with the inverse of the
resize you applied (``bapose.inference.to_original`` does it for an affine).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from bapose.errors import ConfigError, DataError

__all__ = ["decode_numpy", "nms_kernel_for", "POSE_NMS_RULES"]

POSE_NMS_RULES = ("dekr", "oks", "none")  # bapose.codecs.bapose_codec.POSE_NMS_RULES, without importing torch
DEFAULT_OKS_SIGMA = 0.079  # bapose.codecs.bapose_codec.DEFAULT_OKS_SIGMA
GRID_ALIGNS = ("center", "dekr")  # bapose.codecs.bapose_codec.GRID_ALIGNS


def nms_kernel_for(h: int, w: int, nms_kernel: int = 0) -> int:
    """Center max-pool kernel: ``nms_kernel`` when set, else 3 / 5 / 7 for a mean grid side <= 200 / <= 300 / more."""
    if nms_kernel:
        return int(nms_kernel)
    size = (h + w) / 2
    return 3 if size <= 200 else 5 if size <= 300 else 7


def _max_pool(x: np.ndarray, k: int) -> np.ndarray:
    """``(B, h, w)`` -> same shape: max over a ``k x k`` window, stride 1, -inf padding (``F.max_pool2d``)."""
    r = k // 2
    padded = np.pad(x, ((0, 0), (r, r), (r, r)), constant_values=-np.inf)
    return sliding_window_view(padded, (k, k), axis=(1, 2)).max(axis=(-2, -1))


def _bilinear(maps: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Value of ``maps (C, h, w)`` channel ``c`` at ``(x[..., c], y[..., c])`` grid pixels -> ``x.shape``.

    Bilinear between pixel centres; corners outside the map read 0 (``grid_sample`` zeros padding,
    ``align_corners=True``, as the torch codec samples).
    """
    c, h, w = maps.shape
    # the torch codec normalises by max(side - 1, 1): a 1-pixel side always samples its only pixel
    x = x * ((w - 1) / max(w - 1, 1))
    y = y * ((h - 1) / max(h - 1, 1))
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = x - x0, y - y0
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
    ch = np.broadcast_to(np.arange(c), x.shape)
    out = np.zeros(x.shape, np.float64)
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            xi, yi = x0 + dx, y0 + dy
            inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
            val = maps[ch, np.clip(yi, 0, h - 1), np.clip(xi, 0, w - 1)]
            out += np.where(inside, val * wx * wy, 0.0)
    return out


def _pose_nms(poses: np.ndarray, scores: np.ndarray, heat: np.ndarray, rule: str, ratio: float, fraction: float,
              oks_thr: float, sigmas: np.ndarray, cap: int) -> np.ndarray:
    """Indices of the poses ``(M, K, 3)`` (in candidate order) that are not duplicates, at most ``cap``."""
    m, k = poses.shape[:2]
    if m == 0:
        return np.zeros(0, np.int64)
    rank = heat if rule == "dekr" else scores
    xy = poses[..., :2]
    if rule == "none":
        keep = list(np.argsort(-rank, kind="stable"))
    elif rule == "oks":
        area = np.prod(xy.max(1) - xy.min(1), axis=-1)  # (M,)
        scale = (area[:, None] + area[None]) / 2 + np.spacing(1)
        d2 = ((xy[:, None] - xy[None]) ** 2).sum(-1)  # (M, M, K)
        near = np.exp(-d2 / (2 * sigmas) ** 2 / scale[..., None] / 2).mean(-1) > oks_thr
        alive, keep = np.ones(m, bool), []
        for i in np.argsort(-rank, kind="stable"):  # M <= max_people: a loop over people, not pixels
            if alive[i]:
                keep.append(i)
                alive &= ~near[i]
    else:
        diag = np.linalg.norm(xy.max(1) - xy.min(1), axis=-1)  # (M,)
        dist = np.linalg.norm(xy[:, None] - xy[None], axis=-1)  # (M, M, K)
        near = (dist < ratio * diag[:, None, None]).sum(-1) > fraction * k
        np.fill_diagonal(near, True)
        absorbed, keep = np.zeros(m, bool), []
        for i in range(m):
            if absorbed[i]:
                continue
            group = np.nonzero(near[i])[0]
            best = group[np.argmax(rank[group])]
            if not absorbed[best]:
                keep.append(best)
                absorbed[group] = True
    keep = np.asarray(keep, np.int64)
    if len(keep) > cap:
        keep = keep[np.argsort(-rank[keep], kind="stable")[:cap]]
    return keep


def _refine(maps: np.ndarray, jx: np.ndarray, jy: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
    """Each joint to its own map's best grid pixel within ``r`` of the rounded regression, plus a quadratic
    sub-pixel step (at most ±0.5) per axis — :meth:`BAPoseCodec.refine` step by step. ``jx, jy``: ``(T, K)``."""
    _, h, w = maps.shape
    steps = np.arange(-r, r + 1, dtype=np.float64)
    dy, dx = np.meshgrid(steps, steps, indexing="ij")
    cx = np.clip(np.round(jx)[..., None] + dx.ravel(), 0, w - 1)  # (T, K, n)
    cy = np.clip(np.round(jy)[..., None] + dy.ravel(), 0, h - 1)
    t, k, n = cx.shape
    vals = _bilinear(maps, cx.transpose(0, 2, 1).reshape(t * n, k), cy.transpose(0, 2, 1).reshape(t * n, k))
    best = vals.reshape(t, n, k).argmax(1)[..., None]  # (T, K, 1)
    px = np.take_along_axis(cx, best, 2)[..., 0]
    py = np.take_along_axis(cy, best, 2)[..., 0]
    centre = _bilinear(maps, px, py)
    out = []
    for lo, hi in ((_bilinear(maps, px - 1, py), _bilinear(maps, px + 1, py)),
                   (_bilinear(maps, px, py - 1), _bilinear(maps, px, py + 1))):
        curv = 2 * centre - lo - hi
        shift = np.where(curv > 1e-6, 0.5 * (hi - lo) / np.maximum(curv, 1e-6), 0.0)
        out.append(np.clip(shift, -0.5, 0.5))
    return px + out[0], py + out[1]


def decode_numpy(heatmaps: np.ndarray, offsets: np.ndarray, stride: int = 4, max_people: int = 30,
                 center_threshold: float = 0.01, nms_kernel: int = 0, pose_nms: str = "oks",
                 pose_nms_ratio: float = 0.05, pose_nms_fraction: float = 0.5, pose_nms_oks: float = 0.9,
                 oks_sigmas: Sequence[float] | None = None, max_people_after_nms: int | None = None,
                 refine_radius: int = 0, grid_align: str = "center") -> list[tuple[np.ndarray, np.ndarray]]:
    """People from the network's maps, with numpy only.

    Args:
        heatmaps: ``(B, K+1, h, w)`` or ``(K+1, h, w)``, the center map last (the ONNX output ``heatmaps``).
        offsets: ``(B, 2K, h, w)`` or ``(2K, h, w)``, ``(x0, y0, x1, y1, ...)`` in grid pixels (output ``offsets``).
        stride: network output stride (4).
        max_people, center_threshold, nms_kernel, pose_nms, pose_nms_ratio, pose_nms_fraction, pose_nms_oks,
            oks_sigmas, max_people_after_nms, refine_radius, grid_align: the codec's decode knobs
            (``conf/codec/default.yaml``; the ONNX file's ``decode`` metadata holds the values the model was exported
            with); the defaults are the codec's.

    Returns:
        one ``(poses (M, K, 3), scores (M,))`` per image, float64: ``(x, y, joint score)`` in input-image pixels,
        best person first.
    """
    hm = np.asarray(heatmaps, dtype=np.float64)
    off = np.asarray(offsets, dtype=np.float64)
    if hm.ndim == 3 and off.ndim == 3:
        hm, off = hm[None], off[None]
    if hm.ndim != 4 or off.ndim != 4 or off.shape[1] != 2 * (hm.shape[1] - 1) or hm.shape[0] != off.shape[0] \
            or hm.shape[-2:] != off.shape[-2:]:
        raise DataError(f"decode_numpy: heatmaps {np.shape(heatmaps)} and offsets {np.shape(offsets)}; expected "
                        "(B, K+1, h, w) and (B, 2K, h, w) (or both without B)")
    b, c, h, w = hm.shape
    k = c - 1
    if grid_align not in GRID_ALIGNS:
        raise ConfigError(f"decode_numpy: field 'grid_align' is {grid_align!r}; expected one of {list(GRID_ALIGNS)}")
    if pose_nms not in POSE_NMS_RULES:
        raise ConfigError(f"decode_numpy: field 'pose_nms' is {pose_nms!r}; expected one of {list(POSE_NMS_RULES)}")
    sigmas = np.asarray(oks_sigmas if oks_sigmas is not None else [DEFAULT_OKS_SIGMA] * k, np.float64)
    if sigmas.shape != (k,):
        raise DataError(f"decode_numpy: field 'oks_sigmas' has {sigmas.size} entries; the maps have {k} joints")
    cap = int(max_people_after_nms or max_people)
    ctr = hm[:, k]
    ks = nms_kernel_for(h, w, nms_kernel)
    peak = np.where(_max_pool(ctr, ks) == ctr, ctr, 0.0).reshape(b, -1)
    t = min(max_people, h * w)
    idx = np.argsort(-peak, axis=1, kind="stable")[:, :t]  # (B, T), best first
    score = np.take_along_axis(peak, idx, 1)  # NMS-suppressed pixels score 0 here (never valid)
    center_value = np.take_along_axis(ctr.reshape(b, -1), idx, 1)  # the map itself, as the codec samples it
    cy, cx = np.divmod(idx, w)
    out = []
    for i in range(b):  # per image: M <= max_people people
        sel = off[i].reshape(k, 2, h * w)[:, :, idx[i]]  # (K, 2, T)
        jx = cx[i][:, None] + sel[:, 0].T  # (T, K) grid pixels
        jy = cy[i][:, None] + sel[:, 1].T
        if refine_radius > 0:
            jx, jy = _refine(hm[i, :k], jx, jy, int(refine_radius))
        if grid_align == "dekr":  # BAPoseCodec.to_input / heat_grid under DEKR's convention
            px, py = jx * stride, jy * stride
            hx = np.clip(np.floor(px), 0, stride * (w - 1)) / stride
            hy = np.clip(np.floor(py), 0, stride * (h - 1)) / stride
        else:
            px, py = (jx + 0.5) * stride - 0.5, (jy + 0.5) * stride - 0.5
            hx, hy = jx, jy
        joint_heat = _bilinear(hm[i, :k], hx, hy)  # (T, K)
        joint_scores = center_value[i][:, None] * joint_heat
        poses = np.stack([px, py, joint_scores], -1)
        scores, heat = joint_scores.mean(-1), joint_heat.mean(-1)
        valid = score[i] > center_threshold
        poses, scores, heat = poses[valid], scores[valid], heat[valid]
        keep = _pose_nms(poses, scores, heat, pose_nms, pose_nms_ratio, pose_nms_fraction, pose_nms_oks, sigmas, cap)
        out.append((poses[keep], scores[keep]))
    return out
