"""OKS (object keypoint similarity, COCO's formula), the one implementation every part of the suite uses.

``OKS = mean over the counted joints of exp(-d^2 / (2 * s * (2 sigma)^2))`` (pycocotools ``COCOeval.computeOks``),
in two forms:

- a prediction against the ground truth (:func:`oks_matrix` with the annotation's scale :func:`gt_oks_scale` and
  its labelled joints): rescoring targets, the codec upper bound;
- a predicted pose against another (:func:`pose_oks`): pose NMS, as MMPose's ``oks_iou`` (the scale is the mean of
  the two joint-box areas, every joint counts).

``tests/test_oks.py`` holds both to ``computeOks`` on the real samples of ``../shared/data``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from bapose.codecs.bapose_codec import DEFAULT_OKS_SIGMA
from bapose.errors import DataError

# the CrowdPose rules' OKS scale: bbox w * h * 0.53 (official crowdposetools; ../shared/data/README.md)
CROWDPOSE_AREA_FACTOR = 0.53


def resolve_sigmas(sigmas: Sequence[float] | np.ndarray | None, k: int, where: str = "codec") -> np.ndarray:
    """``(K,)`` float64 OKS sigmas: ``sigmas``, or :data:`DEFAULT_OKS_SIGMA` for every joint when ``None``.

    Raises:
        DataError: ``sigmas`` has another length than ``k``.
    """
    out = np.full(k, DEFAULT_OKS_SIGMA) if sigmas is None else np.asarray(sigmas, dtype=np.float64).reshape(-1)
    if out.shape != (k,):
        raise DataError(f"{where}: field 'oks_sigmas' has {out.size} entries; the poses have {k} joints")
    return out


def oks_matrix(pred: np.ndarray, gt: np.ndarray, scale: np.ndarray, sigmas: Sequence[float] | np.ndarray,
               labelled: np.ndarray | None = None) -> np.ndarray:
    """OKS of every prediction with every reference pose.

    Args:
        pred: ``(M, K, 2+)``; gt: ``(N, K, 2+)`` (only x, y are read).
        scale: the OKS scale ``s`` (an area): ``(N,)`` one per reference pose, or ``(M, N)`` one per pair.
        sigmas: ``(K,)``.
        labelled: ``(N, K)`` bool, the reference joints that count (COCO: ``v > 0``); ``None``: all of them. A
            reference without any counted joint scores 0.

    Returns:
        ``(M, N)`` float64.
    """
    p = np.asarray(pred, dtype=np.float64)[..., :2]
    g = np.asarray(gt, dtype=np.float64)[..., :2]
    var = (2 * np.asarray(sigmas, dtype=np.float64)) ** 2
    s = np.asarray(scale, dtype=np.float64)
    s = s[None, :] if s.ndim == 1 else s
    dx = p[:, None, :, 0] - g[None, :, :, 0]  # (M, N, K); x and y apart: numpy reduces a last axis of 2 slowly
    dy = p[:, None, :, 1] - g[None, :, :, 1]
    sim = np.exp(-(dx * dx + dy * dy) / var / (s[..., None] + np.spacing(1)) / 2)
    if labelled is None:
        return sim.mean(-1)
    lab = np.asarray(labelled, bool)
    count = lab.sum(-1)  # (N,)
    out = (sim * lab[None]).sum(-1) / np.maximum(count, 1)
    out[:, count == 0] = 0.0
    return out


def pose_area(xy: np.ndarray) -> np.ndarray:
    """``(M,)`` area of each pose's joint box (``xy (M, K, 2+)``): the scale of a predicted pose."""
    p = np.asarray(xy, dtype=np.float64)[..., :2]
    size = p.max(1) - p.min(1)
    return size[:, 0] * size[:, 1]


def pose_oks(xy: np.ndarray, sigmas: Sequence[float] | np.ndarray) -> np.ndarray:
    """``(M, M)`` OKS between the poses ``xy (M, K, 2+)``, as MMPose's ``oks_iou`` (``oks_nms``): every joint, the
    mean of the two joint-box areas as the scale. What pose NMS under ``pose_nms=oks`` compares."""
    area = pose_area(xy)
    return oks_matrix(xy, xy, (area[:, None] + area[None]) / 2, sigmas)


def gt_oks_scale(ann: Mapping, mode: str) -> float:
    """The evaluator's OKS scale of an annotation: COCO rules ``area`` (box w*h when the json has none), CrowdPose
    rules box ``w * h * 0.53``."""
    if mode == "crowdpose" or "area" not in ann:
        factor = CROWDPOSE_AREA_FACTOR if mode == "crowdpose" else 1.0
        return float(ann["bbox"][2] * ann["bbox"][3] * factor)
    return float(ann["area"])
