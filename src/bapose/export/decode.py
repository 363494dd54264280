"""Numpy-only decoding of BAPose / DEKR outputs, for deployments that run the ONNX model without PyTorch.

It is the torch predictor's single-scale decode (:func:`bapose.predictor.decode`) in numpy, step by step (same
conventions, same knobs); refinement and pose NMS are the very functions the predictor calls
(:mod:`bapose.codecs.grouping`), so only the candidates and the joint-score reading are written twice
(``tests/test_export.py`` holds the two decoders together):

1. center NMS: a center-map pixel is a candidate when it equals the max of its ``nms_kernel`` neighbourhood
   (kernel 3 / 5 / 7 from the map size when ``nms_kernel=0``, as DEKR);
2. top-k: the ``max_people`` best candidates, kept when their score is > ``center_threshold``;
3. offsets -> poses: joint ``k`` of the person centred at grid pixel ``p`` is at ``p + offset_k(p)`` (grid pixels,
   offsets ``(x0, y0, x1, y1, ...)``), refined when ``refine_radius > 0``, mapped to input pixels by
   ``x = (g + 0.5) * stride - 0.5`` (``grid_align="dekr"``, nets converted from DEKR: ``x = stride * g``);
4. joint scores: center score x the joint's heatmap, bilinearly sampled at the joint (0 outside the map; under
   ``grid_align="dekr"`` at DEKR's reading point, the grid point ``clamp(floor(x), 0, stride*(w-1)) / stride``);
   person score = mean joint score;
5. pose NMS by the codec's ``pose_nms`` rule (:func:`bapose.codecs.grouping.pose_nms`), then at most
   ``max_people_after_nms`` people.

Single scale only; the multi-scale merge (:func:`bapose.predictor.decode_multiscale`) is not mirrored here.

Poses come back in **input-image pixels** (the network input); map them to the original image with the inverse of the
resize you applied (``bapose.predictor.to_original`` does it for an affine).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from bapose.codecs.bapose_codec import GRID_ALIGNS, POSE_NMS_RULES
from bapose.codecs import grouping
from bapose.codecs.oks import resolve_sigmas
from bapose.errors import ConfigError, DataError

__all__ = ["decode_numpy", "decode_knobs", "nms_kernel_for", "POSE_NMS_RULES"]


def nms_kernel_for(h: int, w: int, nms_kernel: int = 0) -> int:
    """Center max-pool kernel: ``nms_kernel`` when set, else 3 / 5 / 7 for a mean grid side <= 200 / <= 300 / more."""
    if nms_kernel:
        return int(nms_kernel)
    size = (h + w) / 2
    return 3 if size <= 200 else 5 if size <= 300 else 7


def decode_knobs(codec: Any, sigmas: Sequence[float]) -> dict[str, Any]:
    """The codec's decode knobs as :func:`decode_numpy` keyword arguments (what ``bapose-export`` writes into the ONNX
    file's ``decode`` metadata); ``sigmas`` (the dataset's) stand in for ``codec.oks_sigmas`` when it has none."""
    return {"stride": codec.stride, "max_people": codec.max_people, "center_threshold": codec.center_threshold,
            "nms_kernel": codec.nms_kernel, "pose_nms": codec.nms_rule, "pose_nms_ratio": codec.pose_nms_ratio,
            "pose_nms_fraction": codec.pose_nms_fraction, "pose_nms_oks": codec.pose_nms_oks,
            "oks_sigmas": list(codec.oks_sigmas or sigmas), "max_people_after_nms": codec.max_people_after_nms,
            "refine_radius": int(codec.refine_radius or 0), "grid_align": codec.align}


def _max_pool(x: np.ndarray, k: int) -> np.ndarray:
    """``(B, h, w)`` -> same shape: max over a ``k x k`` window, stride 1, -inf padding (``F.max_pool2d``)."""
    r = k // 2
    padded = np.pad(x, ((0, 0), (r, r), (r, r)), constant_values=-np.inf)
    return sliding_window_view(padded, (k, k), axis=(1, 2)).max(axis=(-2, -1))


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
    sigmas = resolve_sigmas(oks_sigmas, k, "decode_numpy")
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
            jx, jy = grouping.refine_joints(hm[i, :k], jx, jy, int(refine_radius))
        if grid_align == "dekr":  # BAPoseCodec.to_input / heat_grid under DEKR's convention
            px, py = jx * stride, jy * stride
            hx = np.clip(np.floor(px), 0, stride * (w - 1)) / stride
            hy = np.clip(np.floor(py), 0, stride * (h - 1)) / stride
        else:
            px, py = (jx + 0.5) * stride - 0.5, (jy + 0.5) * stride - 0.5
            hx, hy = jx, jy
        joint_heat = grouping.bilinear(hm[i, :k], hx, hy)  # (T, K)
        joint_scores = center_value[i][:, None] * joint_heat
        poses = np.stack([px, py, joint_scores], -1)
        scores, heat = joint_scores.mean(-1), joint_heat.mean(-1)
        valid = score[i] > center_threshold
        poses, scores, heat = poses[valid], scores[valid], heat[valid]
        keep = grouping.pose_nms(poses, scores, heat, pose_nms, ratio=pose_nms_ratio, fraction=pose_nms_fraction,
                                 oks_threshold=pose_nms_oks, sigmas=sigmas, cap=cap)
        out.append((poses[keep], scores[keep]))
    return out
