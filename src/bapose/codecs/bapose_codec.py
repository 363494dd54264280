"""Targets and decoding for disentangled keypoint regression (DEKR conventions, BAPose §3; DESIGN.md §4).

One frozen object owns stride, sigmas, offset radius and the decode knobs, so the dataset (``encode``) and the
LightningModule / predictor (``decode``) can never disagree.

Coordinate convention (the one every function here uses):
- input-image pixels have their centres at integer coordinates (COCO: ``x`` in ``[0, W)``);
- output-grid pixel ``j`` covers input pixels ``[stride*j, stride*(j+1))``, so grid and input coordinates relate by
  ``g = (x + 0.5) / stride - 0.5`` (pixel-area aligned, like ``cv2.resize`` / ``align_corners=False``). With this
  convention mirroring the image (``x -> W-1-x``) mirrors the grid exactly (``g -> w-1-g``), which is what makes the
  flip test lossless; DEKR's ``g = x / stride`` is off by ``(stride-1)/2`` input pixels after a flip.
- ``grid_align="dekr"`` selects DEKR's own convention instead, for nets trained by DEKR's code (``bapose-convert
  dekr``): ``x = stride * g``; joint heat values are read where DEKR reads them (its heatmaps upsampled to input
  size with ``align_corners=True``, at the input pixel ``floor(x)``, clamped to the map); the flip test shifts the
  mirrored image by ``stride - 1`` pixels (``flip_shift``), as DEKR's ``get_multi_stage_outputs`` does, so that
  mirroring maps grid pixel ``g`` to ``w-1-g`` in that convention.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from bapose.errors import ConfigError, DataError


# grid conventions (codec field ``grid_align``): ours, and DEKR's for checkpoints converted from its code
GRID_ALIGNS = ("center", "dekr")


def _gaussian_splat(heat: np.ndarray, channels: np.ndarray, xs: np.ndarray, ys: np.ndarray, sigma: float) -> None:
    """Max-merge unit-peak Gaussians into ``heat (C, h, w)`` in place.

    Args:
        channels, xs, ys: ``(P,)`` channel index and sub-pixel grid position of each Gaussian.
        sigma: standard deviation in grid pixels; the Gaussian is cut at 3 sigma (a square window).
    """
    if len(xs) == 0:
        return
    _, h, w = heat.shape
    r = int(math.ceil(3 * sigma))
    d = np.arange(-r, r + 1)
    px = np.round(xs).astype(np.int64)[:, None] + d  # (P, S)
    py = np.round(ys).astype(np.int64)[:, None] + d
    # unbiased: the value is exact at every grid pixel, the continuous peak (1) sits at the sub-pixel joint
    gx = np.exp(-((px - xs[:, None]) ** 2) / (2 * sigma**2)).astype(np.float32)
    gy = np.exp(-((py - ys[:, None]) ** 2) / (2 * sigma**2)).astype(np.float32)
    vals = gy[:, :, None] * gx[:, None, :]  # (P, S, S)
    valid = ((py >= 0) & (py < h))[:, :, None] & ((px >= 0) & (px < w))[:, None, :]
    shape = vals.shape
    c = np.broadcast_to(channels[:, None, None], shape)[valid]
    yy = np.broadcast_to(py[:, :, None], shape)[valid]
    xx = np.broadcast_to(px[:, None, :], shape)[valid]
    # several people may write the same pixel of the same joint: keep the maximum (max-merge, DEKR)
    np.maximum.at(heat, (c, yy, xx), vals[valid])


def _downsample_mask(mask: np.ndarray, grid: tuple[int, int], stride: int) -> np.ndarray:
    """``(H, W)`` or ``(h, w)`` bool mask -> ``(h, w)`` bool: a grid cell is ignored when most of it is ignored."""
    h, w = grid
    if mask.shape == (h, w):
        return mask.astype(bool)
    H, W = mask.shape
    if (H, W) != (h * stride, w * stride):
        raise DataError(f"encode: field 'ignore_mask' has shape {tuple(mask.shape)}; expected the input image size "
                        f"{(h * stride, w * stride)} or the output grid {(h, w)}")
    if not mask.any():
        return np.zeros((h, w), bool)
    # area average of a 0/255 image (cv2's INTER_AREA is ~10x faster than a numpy block mean at 512^2)
    frac = cv2.resize((mask != 0).view(np.uint8) * np.uint8(255), (w, h), interpolation=cv2.INTER_AREA)
    return frac >= 128


# Rule names (codec fields ``offset_owner``, ``center_collision``, ``pose_nms``); the first of each is DEKR's.
OFFSET_OWNERS = ("smaller", "center_first", "nearest_center")
CENTER_COLLISIONS = ("ignore", "nearest_free")
POSE_NMS_RULES = ("dekr", "oks", "none")

# What encode did with each person's center (``Layout.status``), by index.
CENTER_STATUS = ("ok", "snapped", "moved", "small", "outside", "blocked")
_OK, _SNAPPED, _MOVED, _SMALL, _OUTSIDE, _BLOCKED = range(len(CENTER_STATUS))
# OKS sigma of every joint when a codec is built without the dataset's (COCO's shoulders; CrowdPose's mean)
DEFAULT_OKS_SIGMA = 0.079
# a center pixel must beat every other person's center Gaussian in its NMS window by this much: float32 rounding of
# the splatted map cannot turn the order, and a near-tie is relocated rather than left to chance
_PEAK_MARGIN = 1e-3


class Layout(NamedTuple):
    """Where :meth:`BAPoseCodec.encode` puts each of the ``N`` people of one image, in output-grid pixels.

    ``grid (N, K, 2)`` joints; ``labelled (N, K)`` bool; ``center (N, 2)`` mean of the labelled joints (NaN without
    any); ``peak (N, 2)`` where the person's center Gaussian is centred (the center, or the pixel it was moved or
    snapped to; NaN: no center); ``pixel (N, 2)`` int64 center pixel, whose offsets the decoder reads (-1: none);
    ``status (N,)`` int64 index into :data:`CENTER_STATUS`; ``diag (N,)`` diagonal of the labelled-joint box (>= 1);
    ``owner (h, w)`` int64 person whose offsets each grid pixel carries (-1: none).
    """

    grid: np.ndarray
    labelled: np.ndarray
    center: np.ndarray
    peak: np.ndarray
    pixel: np.ndarray
    status: np.ndarray
    diag: np.ndarray
    owner: np.ndarray

    @property
    def has_center(self) -> np.ndarray:
        """``(N,)`` bool: the person has a center peak and offsets."""
        return self.pixel[:, 0] >= 0


class Candidates(NamedTuple):
    """Top-k center peaks of a batch and the poses regressed there (see :meth:`BAPoseCodec.candidates`)."""

    centers: Tensor  # (B, T, 2) input pixels
    joints: Tensor  # (B, T, K, 2) input pixels
    scores: Tensor  # (B, T) center-map value at the peak
    valid: Tensor  # (B, T) bool: score > center_threshold


@dataclass(frozen=True)
class BAPoseCodec:
    """Heatmap + offset targets (``encode``) and the first decoding step (``candidates``) for DEKR-style bottom-up
    pose; the decode knobs below are read by the predictor (:mod:`bapose.predictor`), which does the rest.

    The defaults are rules that lose nobody a network could find (``scripts/codec_upper_bound.py`` reports the
    losses by cause); ``conf/codec/dekr.yaml`` selects DEKR's exact rules (``offset_owner=smaller``,
    ``center_collision=ignore``, ``pose_nms=dekr``) for the paper's baseline rows.

    Args:
        input_size: training input size, ``S`` (square) or ``(H, W)``; the grid is ``input_size / stride``.
        stride: output stride of the network (4).
        keypoint_sigma: Gaussian sigma of joint heatmaps, in grid pixels (DEKR 2; the paper mentions 3).
        center_sigma: Gaussian sigma of the center heatmap, in grid pixels.
        offset_radius: offsets are regressed in a ``(2r+1)^2`` square of grid pixels around each person's center.
        background_weight: heatmap loss weight outside every Gaussian (1 inside, 0 in ignore regions).
        min_center_area: people whose area (``encode``'s ``areas``, in **input** pixels, i.e. the annotation area
            already scaled by the augmentation) is below this get no center and no offsets; their joints still get
            heatmaps. DEKR compares original-image areas with 32^2; at eval-like scales the two are close.
        per_joint_offset_weights: ``True`` (default, DEKR) gives
            ``(2K, h, w)`` with 0 for unlabelled joints (broadcasts the same way in a loss, and stops the net from
            learning a 0 offset for joints nobody labelled).
        offset_owner: who regresses a grid pixel where offset squares overlap. ``smaller`` (DEKR): the person with
            the smaller joint box, everywhere, even at a larger neighbour's center pixel (the one pixel the decoder
            reads for that neighbour, who is then lost); ``center_first``: every person owns their own center pixel,
            the rest as ``smaller``; ``nearest_center`` (default): own center pixel first, every other pixel to the
            person whose center (Gaussian peak) is nearest, ties to the smaller.
        center_collision: ``ignore`` (DEKR) lets two centers share a grid pixel, or one center's Gaussian hide a
            nearby one from center NMS (one of the two is lost); ``nearest_free`` (default) checks every center,
            larger people first, against the decoder's center NMS (window from the grid size, as ``nms_kernel``):
            a hidden center is snapped onto its pixel, or else moved to the nearest grid pixel (within
            ``max(offset_radius, kernel // 2 + 1)``) where its peak survives, Gaussian and offsets with it.
        max_people: top-k centers kept per image (and per scale).
        center_threshold: centers scoring at or below this are dropped.
        nms_kernel: center max-pool kernel; 0 picks it from the map size as DEKR does (mean side <= 200: 3,
            <= 300: 5, else 7), applied to the output grid.
        pose_nms: how duplicates are removed. ``dekr``: DEKR's ``nms_core`` (candidates in center order; each
            takes the best of its group by mean joint heatmap value; its group = the poses with more than
            ``pose_nms_fraction * K`` joints within ``pose_nms_ratio`` x its joint-box diagonal). In a crowd this
            also removes real neighbours: two people one behind the other share head and torso joints at that
            distance. ``oks`` (default): greedy by pose score, a pose is dropped when its OKS with a kept one is
            above ``pose_nms_oks`` (MMPose's ``oks_nms``: dataset sigmas ``oks_sigmas``, scale = the mean of the
            two joint-box areas); a network's duplicates repeat one person's whole pose, neighbours do not.
            ``none``: keep all. ``None``: ``oks`` at training; in ``bapose-eval`` / ``bapose-predict`` the rule
            stored in the checkpoint (``with_checkpoint_defaults``).
        pose_nms_ratio: ``dekr``: two joints coincide when closer than this fraction of a pose's joint-box
            diagonal (single scale; DEKR 0.05).
        pose_nms_fraction: ``dekr``: more than this fraction of the K joints must coincide (DEKR: > K/2).
        pose_nms_oks: ``oks``: duplicates have an OKS above this (MMPose's default 0.9).
        oks_sigmas: the dataset's K OKS sigmas (``DatasetMeta.sigmas``; the datamodule, ``bapose-predict`` and the
            upper bound fill them in); ``None``: ``DEFAULT_OKS_SIGMA`` for every joint.
        ms_pose_nms_ratio: ``pose_nms_ratio`` for multi-scale testing (DEKR's README: 0.15).
        ms_pose_nms_oks: ``pose_nms_oks`` for multi-scale testing: the same person found at several scales is
            removed above this OKS. 0.4 ~ ``pose_nms_oks ** ((ms_pose_nms_ratio / pose_nms_ratio) ** 2)`` = 0.9^9:
            the single-scale threshold widened as DEKR widens its distance from 0.05 to 0.15 of the diagonal (OKS
            exponents grow with the squared distance).
        ms_scale_decrease: multi-scale testing: center scores of every scale but the one nearest 1 are rescaled to a
            maximum of this x that scale's maximum (DEKR ``TEST.DECREASE``: 0.9 COCO, 0.8 CrowdPose).
        max_people_after_nms: at most this many people per image after pose NMS (the best by the NMS ranking);
            ``None``: ``max_people`` (DEKR ``DATASET.MAX_NUM_PEOPLE`` serves both).
        refine_radius: 0 or None (DEKR) keeps the regressed joints (None: "as the checkpoint was validated" for
            ``bapose-eval`` / ``bapose-predict``, which then take the value stored in the checkpoint); r > 0 moves
            each regressed joint to the highest value of its own joint heatmap within r grid pixels (then a
            sub-pixel quadratic step). Heatmaps localise joints better than offsets early in training and on small
            inputs (the CPU demo); a small r keeps the grouping of the offsets, so a joint cannot jump to a far-away
            person.
        rescore_path: ``None`` (default) keeps the mean joint score; a file written by ``scripts/train_rescore.py``
            multiplies each pose's score by its predicted OKS (DEKR) before pose NMS, so NMS order and the output
            scores both use the rescored value; joints and joint scores are unchanged. Loaded on first decode and
            cached per (path, modification time, device).
        grid_align: ``"center"`` (our convention, see the module docstring) or ``"dekr"`` (DEKR's ``x = stride·g``,
            its heat-value reading and flip shift: for checkpoints converted from DEKR). ``None``: ``center`` at
            training; in ``bapose-eval`` / ``bapose-predict`` the value stored in the checkpoint.
    """

    input_size: int | tuple[int, int] = 512
    stride: int = 4
    keypoint_sigma: float = 2.0
    center_sigma: float = 4.0
    offset_radius: int = 4
    background_weight: float = 0.1
    min_center_area: float = 32.0**2
    per_joint_offset_weights: bool = True
    offset_owner: str = "nearest_center"
    center_collision: str = "nearest_free"
    max_people: int = 30
    center_threshold: float = 0.01
    nms_kernel: int = 0
    pose_nms: str | None = None
    pose_nms_ratio: float = 0.05
    pose_nms_fraction: float = 0.5
    pose_nms_oks: float = 0.9
    oks_sigmas: tuple[float, ...] | None = None
    ms_pose_nms_ratio: float = 0.15
    ms_pose_nms_oks: float = 0.4
    ms_scale_decrease: float = 0.9
    max_people_after_nms: int | None = None
    refine_radius: int | None = None
    rescore_path: str | None = None
    grid_align: str | None = None

    def __post_init__(self) -> None:
        size = self.input_size
        # Hydra hands lists (ListConfig); keep the dataclass hashable with a tuple
        if not isinstance(size, int):
            size = tuple(int(s) for s in size)
            if len(size) != 2:
                raise ConfigError(f"codec: field 'input_size' {self.input_size!r}; expected an int or (H, W)")
            object.__setattr__(self, "input_size", size)
        hw = self.input_hw
        if self.stride < 1 or any(s <= 0 or s % self.stride for s in hw):
            raise ConfigError(f"codec: field 'input_size' {hw} must be positive multiples of 'stride' {self.stride}")
        if self.keypoint_sigma <= 0 or self.center_sigma <= 0:
            raise ConfigError(f"codec: fields 'keypoint_sigma' {self.keypoint_sigma} and 'center_sigma' "
                              f"{self.center_sigma} must be > 0")
        if self.offset_radius < 0 or self.max_people < 1:
            raise ConfigError(f"codec: 'offset_radius' {self.offset_radius} must be >= 0 and 'max_people' "
                              f"{self.max_people} >= 1")
        if self.refine_radius is not None and self.refine_radius < 0:
            raise ConfigError(f"codec: field 'refine_radius' {self.refine_radius}; expected >= 0 grid pixels")
        if self.nms_kernel < 0 or (self.nms_kernel and self.nms_kernel % 2 == 0):
            raise ConfigError(f"codec: field 'nms_kernel' {self.nms_kernel}; expected 0 (auto) or an odd size")
        for name, choices in (("offset_owner", OFFSET_OWNERS), ("center_collision", CENTER_COLLISIONS),
                              ("pose_nms", POSE_NMS_RULES)):
            value = getattr(self, name)
            if not (value in choices or (name == "pose_nms" and value is None)):
                raise ConfigError(f"codec: field '{name}' is {value!r}; expected one of {list(choices)}"
                                  + (" or null" if name == "pose_nms" else ""))
        checks = (("pose_nms_ratio", self.pose_nms_ratio > 0, "> 0 (a fraction of the pose diagonal)"),
                  ("ms_pose_nms_ratio", self.ms_pose_nms_ratio > 0, "> 0 (a fraction of the pose diagonal)"),
                  ("pose_nms_fraction", 0 <= self.pose_nms_fraction < 1, "in [0, 1) (a fraction of the K joints)"),
                  ("pose_nms_oks", 0 < self.pose_nms_oks <= 1, "in (0, 1] (an OKS)"),
                  ("ms_pose_nms_oks", 0 < self.ms_pose_nms_oks <= 1, "in (0, 1] (an OKS)"),
                  ("ms_scale_decrease", self.ms_scale_decrease > 0, "> 0 (DEKR: 0.9 COCO, 0.8 CrowdPose)"),
                  ("max_people_after_nms", self.max_people_after_nms is None or self.max_people_after_nms >= 1,
                   ">= 1 or null (= max_people)"))
        for name, ok, expected in checks:
            if not ok:
                raise ConfigError(f"codec: field '{name}' is {getattr(self, name)!r}; expected {expected}")
        if self.oks_sigmas is not None:
            object.__setattr__(self, "oks_sigmas", tuple(float(v) for v in self.oks_sigmas))
        if self.rescore_path is not None:
            path = os.fspath(self.rescore_path)
            object.__setattr__(self, "rescore_path", path)
            if not os.path.isfile(path):
                raise ConfigError(f"codec: field 'rescore_path' '{path}' is not a file; expected a rescoring net "
                                  "written by scripts/train_rescore.py, or null")
        if self.grid_align not in (None, *GRID_ALIGNS):
            raise ConfigError(f"codec: field 'grid_align' is {self.grid_align!r}; expected one of {list(GRID_ALIGNS)} "
                              "or null")

    # ------------------------------------------------------------------ geometry
    @property
    def input_hw(self) -> tuple[int, int]:
        s = self.input_size
        return (s, s) if isinstance(s, int) else (int(s[0]), int(s[1]))

    @property
    def output_hw(self) -> tuple[int, int]:
        h, w = self.input_hw
        return h // self.stride, w // self.stride

    @property
    def align(self) -> str:
        """The grid convention in use (``grid_align``, ``None`` resolved to ``"center"``)."""
        return self.grid_align or "center"

    @property
    def flip_shift(self) -> int:
        """Pixels the mirrored image moves left in the flip test: ``stride - 1`` for DEKR's convention, else 0."""
        return self.stride - 1 if self.align == "dekr" else 0

    @property
    def nms_rule(self) -> str:
        """The pose NMS rule decode uses (``pose_nms``, ``None`` resolved to the default)."""
        return self.pose_nms or "oks"

    def to_grid(self, xy: np.ndarray | Tensor) -> np.ndarray | Tensor:
        """Input pixels -> output-grid pixels (see the module docstring)."""
        if self.align == "dekr":
            return xy / self.stride
        return (xy + 0.5) / self.stride - 0.5

    def to_input(self, g: np.ndarray | Tensor) -> np.ndarray | Tensor:
        """Output-grid pixels -> input pixels."""
        if self.align == "dekr":
            return g * self.stride
        return (g + 0.5) * self.stride - 0.5

    def heat_grid(self, xy: Tensor, grid_hw: tuple[int, int]) -> Tensor:
        """Where joint heat values are read: input pixels ``(..., 2)`` -> grid pixels for bilinear sampling.

        ``center``: :meth:`to_grid` (bilinear, 0 outside the map). ``dekr``: DEKR upsamples the heatmaps to input
        size (``align_corners=True`` to ``stride·(w-1)+1`` columns, the last ``stride-1`` replicated) and reads the
        input pixel ``floor(x)`` clamped to the map: the grid point ``clamp(floor(x), 0, stride·(w-1)) / stride``.
        """
        if self.align != "dekr":
            return self.to_grid(xy)
        h, w = grid_hw
        x = xy[..., 0].floor().clamp(0, self.stride * (w - 1)) / self.stride
        y = xy[..., 1].floor().clamp(0, self.stride * (h - 1)) / self.stride
        return torch.stack([x, y], -1)

    # ------------------------------------------------------------------ encode
    def layout(self, keypoints: np.ndarray, areas: np.ndarray, grid_hw: tuple[int, int]) -> Layout:
        """Centers, center pixels and offset ownership of one image's people (what :meth:`encode` draws).

        Args:
            keypoints: ``(N, K, 3)`` (x, y, v) in input pixels; areas: ``(N,)`` in input pixels.
            grid_hw: ``(h, w)`` of the output grid.
        """
        kp = np.asarray(keypoints, dtype=np.float64)
        if kp.ndim != 3 or kp.shape[2] != 3:
            raise DataError(f"encode: field 'keypoints' has shape {kp.shape}; expected (N, K, 3)")
        n = kp.shape[0]
        area = np.asarray(areas, dtype=np.float64).reshape(-1)
        if area.shape[0] != n:
            raise DataError(f"encode: field 'areas' has {area.shape[0]} entries; expected {n} (one per person)")
        h, w = grid_hw
        g = self.to_grid(kp[..., :2])  # (N, K, 2)
        labelled = (kp[..., 2] > 0) & np.isfinite(g).all(-1)
        count = labelled.sum(1)
        gz = np.where(labelled[..., None], g, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            center = gz.sum(1) / count[:, None]  # (N, 2), NaN without labelled joints
        ci = np.round(np.nan_to_num(center, nan=-1.0)).astype(np.int64)
        inside = (count > 0) & (ci[:, 0] >= 0) & (ci[:, 0] < w) & (ci[:, 1] >= 0) & (ci[:, 1] < h)
        status = np.where(~inside, _OUTSIDE, np.where(area < self.min_center_area, _SMALL, _OK)).astype(np.int64)
        # offset weight 1 / diagonal of the labelled-joint box (grid pixels), as DEKR's 1/sqrt(w^2 + h^2)
        lo = np.where(labelled[..., None], g, np.inf).min(1)
        hi = np.where(labelled[..., None], g, -np.inf).max(1)
        diag = np.maximum(np.nan_to_num(np.hypot(*(hi - lo).T), nan=1.0, posinf=1.0), 1.0)

        has = status == _OK
        peak = np.where(has[:, None], center, np.nan)
        pixel = np.where(has[:, None], ci, -1)
        # larger people first: they keep their natural center pixel, smaller neighbours give way
        order = np.nonzero(has)[0][np.argsort(-diag[has], kind="stable")]
        if self.center_collision == "nearest_free" and len(order) > 1:
            order = self._place_centers(order, center, ci, (h, w), peak, pixel, status)
        owner = self._owners(order, peak, pixel, diag, (h, w))
        return Layout(g, labelled, center, peak, pixel, status, diag, owner)

    def _place_centers(self, order: np.ndarray, center: np.ndarray, ci: np.ndarray, grid_hw: tuple[int, int],
                       peak: np.ndarray, pixel: np.ndarray, status: np.ndarray) -> np.ndarray:
        """``center_collision=nearest_free``: give every person a center peak that survives center NMS.

        A pixel ``q`` with Gaussian centre ``c`` is free when, in the merged center map, ``q`` beats every placed
        person's Gaussian inside its NMS window and ``c`` does not beat any placed person at their own pixel inside
        theirs (a Gaussian is strongest at the window pixel nearest its centre, so one value per pair decides).
        People whose natural center clashes with nobody keep it; the others are placed after them, in ``order``
        (larger first), each on the first free candidate: the natural pixel with the sub-pixel Gaussian, then pixels
        by distance to the center with the Gaussian on the pixel. Updates ``peak``, ``pixel``, ``status`` in place;
        returns ``order`` restricted to the people that got a center.
        """
        h, w = grid_hw
        r = self._kernel(h, w) // 2
        two_s2 = 2.0 * self.center_sigma**2
        limit = np.array([w - 1, h - 1])

        def own(pix: np.ndarray, cen: np.ndarray) -> np.ndarray:  # (C,) each Gaussian at its own pixel
            return np.exp(-((pix - cen) ** 2).sum(-1) / two_s2)

        def strongest(pix: np.ndarray, cen: np.ndarray) -> np.ndarray:  # (C, P): Gaussian p inside window(c)
            near = np.clip(np.round(cen)[None], np.maximum(pix - r, 0)[:, None], np.minimum(pix + r, limit)[:, None])
            return np.exp(-((near - cen[None]) ** 2).sum(-1) / two_s2)

        # all natural centers at once: most people clash with nobody (one vectorised test, no loop)
        pix0, cen0 = ci[order], center[order]
        val0 = own(pix0, cen0)
        threat = strongest(pix0, cen0)  # [i, j]: j's Gaussian inside i's window
        np.fill_diagonal(threat, -np.inf)
        clash = threat + _PEAK_MARGIN >= val0[:, None]
        clash = clash.any(1) | clash.any(0)
        placed_pix, placed_peak, placed_val = pix0[~clash], cen0[~clash], val0[~clash]

        d = np.arange(-max(self.offset_radius, r + 1), max(self.offset_radius, r + 1) + 1)
        square = np.stack(np.meshgrid(d, d, indexing="xy"), -1).reshape(-1, 2)  # (S, 2) (dx, dy)
        for i in order[clash]:
            cand = np.concatenate([ci[i][None], ci[i] + square])
            cand = cand[((cand >= 0) & (cand <= limit)).all(1)]
            dist = ((cand[1:] - center[i]) ** 2).sum(-1)
            cand = np.concatenate([cand[:1], cand[1:][np.argsort(dist, kind="stable")]])
            cen = cand.astype(np.float64)
            cen[0] = center[i]  # the natural pixel first, with the sub-pixel Gaussian; then on pixels
            val = own(cand, cen)
            free = (val > strongest(cand, placed_peak).max(1, initial=-np.inf) + _PEAK_MARGIN) \
                & (strongest(placed_pix, cen).T + _PEAK_MARGIN < placed_val[None]).all(1)
            hit = np.nonzero(free)[0]
            if not len(hit):
                status[i], peak[i], pixel[i] = _BLOCKED, np.nan, -1
                continue
            j = hit[0]
            if j > 0:
                status[i] = _SNAPPED if (cand[j] == ci[i]).all() else _MOVED
            peak[i], pixel[i] = cen[j], cand[j]
            placed_pix = np.concatenate([placed_pix, cand[j:j + 1]])
            placed_peak = np.concatenate([placed_peak, cen[j:j + 1]])
            placed_val = np.append(placed_val, val[j])
        return order[pixel[order, 0] >= 0]

    def _owners(self, order: np.ndarray, peak: np.ndarray, pixel: np.ndarray, diag: np.ndarray,
                grid_hw: tuple[int, int]) -> np.ndarray:
        """``(h, w)`` int64: the person whose offsets each grid pixel carries (-1: none), by ``offset_owner``.

        Each person bids for the ``(2r+1)^2`` square around their center pixel with a key (lower wins, compared
        as (primary, secondary); an equal key goes to the later bidder, and bidders come largest first):
        ``smaller``: (diagonal, -); ``center_first``: own center pixel (-inf, diagonal), else (diagonal, -);
        ``nearest_center``: own center pixel (-inf, diagonal), else (squared distance to the center, diagonal).
        """
        h, w = grid_hw
        owner = np.full((h, w), -1, np.int64)
        if not len(order):
            return owner
        best = np.full((2, h, w), np.inf)
        r = self.offset_radius
        for i in order:
            cx, cy = pixel[i]
            x0, x1, y0, y1 = max(cx - r, 0), min(cx + r + 1, w), max(cy - r, 0), min(cy + r + 1, h)
            if self.offset_owner == "nearest_center":
                xs, ys = np.arange(x0, x1) - peak[i, 0], np.arange(y0, y1) - peak[i, 1]
                primary = ys[:, None] ** 2 + xs[None, :] ** 2
            else:
                primary = np.full((y1 - y0, x1 - x0), diag[i])
            if self.offset_owner != "smaller":
                primary[cy - y0, cx - x0] = -np.inf
            secondary = diag[i] if self.offset_owner != "smaller" else 0.0
            b = best[:, y0:y1, x0:x1]
            take = (primary < b[0]) | ((primary == b[0]) & (secondary <= b[1]))
            b[0][take], b[1][take] = primary[take], secondary
            owner[y0:y1, x0:x1][take] = i
        return owner

    def encode(self, keypoints: np.ndarray, areas: np.ndarray, ignore_mask: np.ndarray | None = None,
               image_size: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
        """Training targets of one image.

        Args:
            keypoints: ``(N, K, 3)`` (x, y, v) in input pixels; ``v > 0`` means labelled. ``N`` may be 0 (shape
                ``(0, K, 3)``, so K is known).
            areas: ``(N,)`` person areas in input pixels (for the small-person rule).
            ignore_mask: ``(H, W)`` (or grid ``(h, w)``) bool, True where the loss must ignore heatmaps
                (crowd / unlabelled people).
            image_size: ``(H, W)`` of this image when it differs from ``input_size`` (e.g. eval-shaped images).

        Returns:
            float32 arrays ``heatmaps (K+1, h, w)`` (center last), ``heatmap_weights (K+1, h, w)``,
            ``offsets (2K, h, w)`` as (x0, y0, x1, y1, ...) in grid pixels, ``offset_weights (1, h, w)`` (or
            ``(2K, h, w)`` with ``per_joint_offset_weights``).
        """
        H, W = image_size if image_size is not None else self.input_hw
        if H % self.stride or W % self.stride:
            raise DataError(f"encode: image size {(H, W)} is not a multiple of stride {self.stride}")
        h, w = H // self.stride, W // self.stride
        lay = self.layout(keypoints, areas, (h, w))
        g, labelled = lay.grid, lay.labelled
        k = g.shape[1]

        heat = np.zeros((k + 1, h, w), np.float32)
        offsets = np.zeros((2 * k, h, w), np.float32)
        off_w = np.zeros((2 * k if self.per_joint_offset_weights else 1, h, w), np.float32)

        inside = labelled & (g[..., 0] >= -0.5) & (g[..., 0] < w - 0.5) & (g[..., 1] >= -0.5) & (g[..., 1] < h - 0.5)
        person, joint = np.nonzero(inside)
        _gaussian_splat(heat, joint, g[person, joint, 0], g[person, joint, 1], self.keypoint_sigma)
        # small people get no center (their joints were drawn above)
        idx = np.nonzero(lay.has_center)[0]
        _gaussian_splat(heat, np.full(len(idx), k), lay.peak[idx, 0], lay.peak[idx, 1], self.center_sigma)

        ys, xs = np.nonzero(lay.owner >= 0)
        if len(ys):
            who = lay.owner[ys, xs]  # (P,)
            lab = labelled[who]  # (P, K); unlabelled joints: offset 0 (weight 0 with per_joint_offset_weights)
            offsets[0::2, ys, xs] = np.where(lab, g[who, :, 0] - xs[:, None], 0.0).T
            offsets[1::2, ys, xs] = np.where(lab, g[who, :, 1] - ys[:, None], 0.0).T
            inv = 1.0 / lay.diag[who]
            if self.per_joint_offset_weights:
                off_w[:, ys, xs] = (np.repeat(lab, 2, axis=1) * inv[:, None]).T
            else:
                off_w[0, ys, xs] = inv

        weights = np.where(heat > 0, np.float32(1.0), np.float32(self.background_weight))
        if ignore_mask is not None:
            weights[:, _downsample_mask(np.asarray(ignore_mask), (h, w), self.stride)] = 0.0
        return {"heatmaps": heat, "heatmap_weights": weights, "offsets": offsets, "offset_weights": off_w}

    # ------------------------------------------------------------------ decode
    def _kernel(self, h: int, w: int) -> int:
        if self.nms_kernel:
            return self.nms_kernel
        size = (h + w) / 2
        return 3 if size <= 200 else 5 if size <= 300 else 7

    def candidates(self, heatmaps: Tensor, offsets: Tensor) -> Candidates:
        """Top-k centers and their regressed poses, batched.

        Args:
            heatmaps: ``(B, K+1, h, w)``; offsets: ``(B, 2K, h, w)``.

        Returns:
            :class:`Candidates`: ``centers (B, T, 2)`` and ``joints (B, T, K, 2)`` in input pixels, ``scores (B, T)``
            the center map at each peak, ``valid (B, T)`` (score > ``center_threshold``), ``T = min(max_people, h*w)``.
        """
        if heatmaps.dim() != 4 or offsets.dim() != 4 or offsets.shape[1] != 2 * (heatmaps.shape[1] - 1) \
                or heatmaps.shape[-2:] != offsets.shape[-2:] or heatmaps.shape[0] != offsets.shape[0]:
            raise DataError(f"decode: heatmaps {tuple(heatmaps.shape)} and offsets {tuple(offsets.shape)}; expected "
                            "(B, K+1, h, w) and (B, 2K, h, w)")
        b, c, h, w = heatmaps.shape
        k = c - 1
        ctr = heatmaps[:, k:].float()
        ks = self._kernel(h, w)
        peak = ctr * (F.max_pool2d(ctr, ks, 1, ks // 2) == ctr)
        score, idx = peak.flatten(1).topk(min(self.max_people, h * w), dim=1)  # (B, T)
        cx, cy = (idx % w).float(), torch.div(idx, w, rounding_mode="floor").float()
        sel = torch.gather(offsets.flatten(2), 2, idx[:, None, :].expand(b, 2 * k, -1))  # (B, 2K, T)
        sel = sel.view(b, k, 2, -1).permute(0, 3, 1, 2).float()  # (B, T, K, 2)
        centers = torch.stack([cx, cy], -1)  # grid pixels
        joints = centers[:, :, None, :] + sel
        return Candidates(self.to_input(centers), self.to_input(joints), score, score > self.center_threshold)

    def with_checkpoint_defaults(self, stored: Mapping[str, Any] | None) -> BAPoseCodec:
        """Decode knobs left ``None`` (``refine_radius``, ``pose_nms``) take the values a checkpoint's
        ``bapose.codec`` entry stored at training; checkpoints without them keep the built-in defaults."""
        stored = stored or {}
        changes: dict[str, Any] = {}
        if self.refine_radius is None and stored.get("refine_radius") is not None:
            changes["refine_radius"] = int(stored["refine_radius"])
        # a net decodes only in the grid convention it was trained in
        if self.grid_align is None and stored.get("grid_align") in GRID_ALIGNS:
            changes["grid_align"] = stored["grid_align"]
        if self.pose_nms is None and stored.get("pose_nms") in POSE_NMS_RULES:
            changes["pose_nms"] = stored["pose_nms"]
        return dataclasses.replace(self, **changes) if changes else self
