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
import functools
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from bapose.codecs.rescore import RescoreNet, load_rescore
from bapose.errors import ConfigError, DataError


# grid conventions (codec field ``grid_align``): ours, and DEKR's for checkpoints converted from its code
GRID_ALIGNS = ("center", "dekr")


class Poses(NamedTuple):
    """Decoded people of one image: ``poses (M, K, 3)`` as (x, y, joint score) in input pixels, ``scores (M,)``."""

    poses: Tensor
    scores: Tensor


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


@dataclass(frozen=True)
class BAPoseCodec:
    """Heatmap + offset targets (``encode``) and their inverse (``decode``) for DEKR-style bottom-up pose.

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
        max_people: top-k centers kept per image (and per scale).
        center_threshold: centers scoring at or below this are dropped.
        nms_kernel: center max-pool kernel; 0 picks it from the map size as DEKR does (mean side <= 200: 3,
            <= 300: 5, else 7), applied to the output grid.
        pose_nms_ratio: two joints coincide when closer than this fraction of the kept pose's box diagonal.
        refine_radius: 0 or None (DEKR) keeps the regressed joints (None: "as the checkpoint was validated" for
            ``bapose-eval`` / ``bapose-predict``, which then take the value stored in the checkpoint); r > 0 moves each regressed joint to the highest value of
            its own joint heatmap within r grid pixels (then a sub-pixel quadratic step). Heatmaps localise joints
            better than offsets early in training and on small inputs (the CPU demo); a small r keeps the grouping
            of the offsets, so a joint cannot jump to a far-away person.
        pose_nms_fraction: a pose is a duplicate of a higher-scoring one when more than this fraction of its K
            joints coincide (DESIGN: > K/2 joints within 0.05 diagonal).
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
    max_people: int = 30
    center_threshold: float = 0.01
    nms_kernel: int = 0
    pose_nms_ratio: float = 0.05
    pose_nms_fraction: float = 0.5
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
        kp = np.asarray(keypoints, dtype=np.float64)
        if kp.ndim != 3 or kp.shape[2] != 3:
            raise DataError(f"encode: field 'keypoints' has shape {kp.shape}; expected (N, K, 3)")
        n, k, _ = kp.shape
        area = np.asarray(areas, dtype=np.float64).reshape(-1)
        if area.shape[0] != n:
            raise DataError(f"encode: field 'areas' has {area.shape[0]} entries; expected {n} (one per person)")
        H, W = image_size if image_size is not None else self.input_hw
        if H % self.stride or W % self.stride:
            raise DataError(f"encode: image size {(H, W)} is not a multiple of stride {self.stride}")
        h, w = H // self.stride, W // self.stride

        heat = np.zeros((k + 1, h, w), np.float32)
        offsets = np.zeros((2 * k, h, w), np.float32)
        off_w = np.zeros((2 * k if self.per_joint_offset_weights else 1, h, w), np.float32)

        g = self.to_grid(kp[..., :2])  # (N, K, 2)
        labelled = (kp[..., 2] > 0) & np.isfinite(g).all(-1)
        inside = labelled & (g[..., 0] >= -0.5) & (g[..., 0] < w - 0.5) & (g[..., 1] >= -0.5) & (g[..., 1] < h - 0.5)
        person, joint = np.nonzero(inside)
        _gaussian_splat(heat, joint, g[person, joint, 0], g[person, joint, 1], self.keypoint_sigma)

        # center = mean of the labelled joints; small people get none (their joints were drawn above)
        count = labelled.sum(1)
        gz = np.where(labelled[..., None], g, 0.0)
        center = gz.sum(1) / np.maximum(count, 1)[:, None]  # (N, 2)
        ci = np.round(center).astype(np.int64)
        has_center = (count > 0) & (area >= self.min_center_area) & (ci[:, 0] >= 0) & (ci[:, 0] < w) \
            & (ci[:, 1] >= 0) & (ci[:, 1] < h)
        idx = np.nonzero(has_center)[0]
        _gaussian_splat(heat, np.full(len(idx), k), center[idx, 0], center[idx, 1], self.center_sigma)

        if len(idx):
            # offset weight 1 / diagonal of the labelled-joint box (grid pixels), as DEKR's 1/sqrt(w^2 + h^2)
            lo = np.where(labelled[..., None], g, np.inf).min(1)
            hi = np.where(labelled[..., None], g, -np.inf).max(1)
            diag = np.maximum(np.hypot(*(hi - lo).T), 1.0)
            r = self.offset_radius
            # largest first: later (smaller) people overwrite, so where squares overlap the smaller person wins
            for i in idx[np.argsort(-diag[idx], kind="stable")]:
                x0, x1 = max(ci[i, 0] - r, 0), min(ci[i, 0] + r + 1, w)
                y0, y1 = max(ci[i, 1] - r, 0), min(ci[i, 1] + r + 1, h)
                jx = np.where(labelled[i], g[i, :, 0], 0.0)
                jy = np.where(labelled[i], g[i, :, 1], 0.0)
                xs, ys = np.arange(x0, x1), np.arange(y0, y1)
                # unlabelled joints: offset 0 (weight 0 with per_joint_offset_weights)
                offsets[0::2, y0:y1, x0:x1] = np.where(labelled[i][:, None, None], jx[:, None, None] - xs, 0.0)
                offsets[1::2, y0:y1, x0:x1] = np.where(labelled[i][:, None, None], jy[:, None, None] - ys[:, None], 0.0)
                if self.per_joint_offset_weights:
                    off_w[:, y0:y1, x0:x1] = (np.repeat(labelled[i], 2) / diag[i])[:, None, None]
                else:
                    off_w[0, y0:y1, x0:x1] = 1.0 / diag[i]

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

    def candidates(self, heatmaps: Tensor, offsets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Top-k centers and their regressed poses, batched.

        Args:
            heatmaps: ``(B, K+1, h, w)``; offsets: ``(B, 2K, h, w)``.

        Returns:
            ``centers (B, T, 2)`` and ``joints (B, T, K, 2)`` in input pixels, ``valid (B, T)`` bool
            (center score > ``center_threshold``), with ``T = min(max_people, h*w)``.
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
        cx, cy = (idx % w).to(heatmaps.dtype), torch.div(idx, w, rounding_mode="floor").to(heatmaps.dtype)
        sel = torch.gather(offsets.flatten(2), 2, idx[:, None, :].expand(b, 2 * k, -1))  # (B, 2K, T)
        sel = sel.view(b, k, 2, -1).permute(0, 3, 1, 2)  # (B, T, K, 2)
        centers = torch.stack([cx, cy], -1)  # grid pixels
        joints = centers[:, :, None, :] + sel
        return self.to_input(centers.float()), self.to_input(joints.float()), score > self.center_threshold

    def with_checkpoint_defaults(self, stored: Mapping[str, Any] | None) -> BAPoseCodec:
        """Decode knobs left ``None`` take the value a checkpoint's ``bapose.codec`` entry stored at training."""
        stored = stored or {}
        changes: dict[str, Any] = {}
        if self.refine_radius is None and stored.get("refine_radius") is not None:
            changes["refine_radius"] = int(stored["refine_radius"])
        # a net decodes only in the grid convention it was trained in
        if self.grid_align is None and stored.get("grid_align") in GRID_ALIGNS:
            changes["grid_align"] = stored["grid_align"]
        return dataclasses.replace(self, **changes) if changes else self

    def refine(self, heatmaps: Tensor, joints: Tensor) -> Tensor:
        """Move regressed joints to their joint heatmap's maximum within ``refine_radius`` grid pixels.

        Args:
            heatmaps: ``(B, K+1, h, w)``; joints: ``(B, T, K, 2)`` in input pixels.

        Returns:
            ``(B, T, K, 2)`` in input pixels: the best grid pixel of a ``(2r+1)^2`` window around each joint (read
            from that joint's own map), shifted by a per-axis quadratic fit through its neighbours (at most ±0.5).
        """
        r = int(self.refine_radius or 0)
        if r <= 0 or joints.numel() == 0:
            return joints
        b, c, h, w = heatmaps.shape
        k = c - 1
        hm = heatmaps[:, :k].float()
        t = joints.shape[1]
        grid_xy = self.to_grid(joints.float()).round()
        steps = torch.arange(-r, r + 1, device=joints.device, dtype=torch.float32)
        dy, dx = torch.meshgrid(steps, steps, indexing="ij")
        window = torch.stack([dx.flatten(), dy.flatten()], -1)  # (n, 2)
        n = window.shape[0]
        cand = grid_xy[:, :, :, None, :] + window  # (B, T, K, n, 2)
        # keep candidates on the map: clamped duplicates of edge pixels never beat the pixel itself
        cand[..., 0].clamp_(0, w - 1)
        cand[..., 1].clamp_(0, h - 1)
        vals = _sample(hm, cand.permute(0, 1, 3, 2, 4).reshape(b, t * n, k, 2)).view(b, t, n, k)
        best = vals.argmax(2)  # (B, T, K)
        peak = torch.gather(cand, 3, best[..., None, None].expand(b, t, k, 1, 2)).squeeze(3)  # (B, T, K, 2)

        def at(dxy: tuple[float, float]) -> Tensor:
            return _sample(hm, peak + peak.new_tensor(dxy))

        centre = at((0.0, 0.0))
        sub = []
        for lo, hi in (at((-1.0, 0.0)), at((1.0, 0.0))), (at((0.0, -1.0)), at((0.0, 1.0))):
            curv = 2 * centre - lo - hi
            # vertex of the parabola through (-1, lo), (0, centre), (1, hi); flat or convex: stay on the pixel
            shift = torch.where(curv > 1e-6, 0.5 * (hi - lo) / curv.clamp(min=1e-6), torch.zeros_like(curv))
            sub.append(shift.clamp(-0.5, 0.5))
        return self.to_input(peak + torch.stack(sub, -1))

    def score(self, heatmaps: Tensor, centers: Tensor, joints: Tensor) -> tuple[Tensor, Tensor]:
        """Joint scores = center score x joint heatmap (both bilinearly sampled); pose score = their mean.

        Args:
            heatmaps: ``(B, K+1, h, w)`` on the grid of the input image (``h = H / stride``).
            centers: ``(B, T, 2)``; joints: ``(B, T, K, 2)``, input pixels.

        Returns:
            ``poses (B, T, K, 3)`` (x, y, joint score) and ``scores (B, T)``.
        """
        b, c, h, w = heatmaps.shape
        k = c - 1
        hm = heatmaps.float()
        ctr = _sample(hm[:, k:], self.to_grid(centers)[:, :, None, :])[..., 0]  # (B, T)
        heat = _sample(hm[:, :k], self.heat_grid(joints, (h, w)))  # (B, T, K)
        joint_scores = ctr[..., None] * heat
        poses = torch.cat([joints, joint_scores[..., None]], -1)
        return poses, joint_scores.mean(-1)

    def pose_nms(self, poses: Tensor, scores: Tensor) -> Tensor:
        """Greedy pose NMS: indices (sorted by score) of poses that are not duplicates of a better one.

        A pose duplicates a kept one when more than ``pose_nms_fraction * K`` joints lie within
        ``pose_nms_ratio * diagonal`` of the kept pose's joints (diagonal of the kept pose's joint box).
        """
        m, k = poses.shape[:2]
        if m == 0:
            return torch.zeros(0, dtype=torch.long, device=poses.device)
        order = torch.argsort(scores, descending=True)
        xy = poses[order, :, :2]
        diag = (xy.amax(1) - xy.amin(1)).norm(dim=-1)  # (M,)
        dist = (xy[:, None] - xy[None]).norm(dim=-1)  # (M, M, K)
        dup = ((dist < self.pose_nms_ratio * diag[:, None, None]).sum(-1) > self.pose_nms_fraction * k).cpu().numpy()
        alive = np.ones(m, bool)
        for i in range(m):  # M <= max_people * scales: a tiny loop over people, not pixels
            if alive[i]:
                alive[i + 1:] &= ~dup[i, i + 1:]
        return order[torch.from_numpy(np.nonzero(alive)[0]).to(order.device)]

    def rescore(self, poses: Tensor, scores: Tensor) -> Tensor:
        """``scores (B, T)`` x the OKS that the ``rescore_path`` net predicts for ``poses (B, T, K, 3)``.

        Unchanged when ``rescore_path`` is ``None``; a net trained for another K raises ``DataError``.
        """
        if self.rescore_path is None or poses.numel() == 0:
            return scores
        b, t, k, _ = poses.shape
        net = _rescore_net(self.rescore_path, os.stat(self.rescore_path).st_mtime_ns, str(poses.device))
        if net.num_keypoints != k:
            raise DataError(f"codec: rescore file '{self.rescore_path}' field 'num_keypoints' is "
                            f"{net.num_keypoints}; the network outputs {k} joints")
        return scores * net.predict_oks(poses.reshape(b * t, k, 3).float()).view(b, t).to(scores.dtype)

    def _finish(self, poses: Tensor, scores: Tensor, valid: Tensor) -> list[Poses]:
        scores = self.rescore(poses, scores)
        out = []
        for p, s, v in zip(poses, scores, valid):
            p, s = p[v], s[v]
            keep = self.pose_nms(p, s)
            out.append(Poses(p[keep], s[keep]))
        return out

    def decode(self, heatmaps: Tensor, offsets: Tensor) -> list[Poses]:
        """Network outputs -> people, one :class:`Poses` per image, in input pixels (on the outputs' device).

        Args:
            heatmaps: ``(B, K+1, h, w)`` (center last); offsets: ``(B, 2K, h, w)`` in grid pixels.
        """
        with torch.no_grad():
            centers, joints, valid = self.candidates(heatmaps, offsets)
            poses, scores = self.score(heatmaps, centers, self.refine(heatmaps, joints))
            return self._finish(poses, scores, valid)

    def decode_multiscale(self, outputs: Sequence[tuple[Tensor, Tensor]], scales: Sequence[tuple[float, float]],
                          base_hw: tuple[int, int]) -> list[Poses]:
        """Merge several scales: heatmaps averaged on the base grid, poses pooled from every scale, then NMS.

        Args:
            outputs: per scale ``(heatmaps (B, K+1, h_s, w_s), offsets (B, 2K, h_s, w_s))``.
            scales: per scale ``(sy, sx)`` = that scale's input size / the base input size.
            base_hw: ``(H, W)`` of the base input image; poses come back in its pixels.
        """
        with torch.no_grad():
            grid = (base_hw[0] // self.stride, base_hw[1] // self.stride)
            avg = None
            all_c, all_j, all_v = [], [], []
            for (hm, off), (sy, sx) in zip(outputs, scales):
                c, j, v = self.candidates(hm, off)
                s = c.new_tensor([sx, sy])
                # input pixels of scale s -> base input pixels (pixel-area aligned, like the image resize)
                all_c.append((c + 0.5) / s - 0.5)
                all_j.append((j + 0.5) / s - 0.5)
                all_v.append(v)
                up = hm.float() if tuple(hm.shape[-2:]) == grid else \
                    F.interpolate(hm.float(), size=grid, mode="bilinear", align_corners=False)
                avg = up if avg is None else avg + up
            avg = avg / len(outputs)
            poses, scores = self.score(avg, torch.cat(all_c, 1), self.refine(avg, torch.cat(all_j, 1)))
            return self._finish(poses, scores, torch.cat(all_v, 1))


@functools.lru_cache(maxsize=8)
def _rescore_net(path: str, mtime_ns: int, device: str) -> RescoreNet:
    """The rescoring net of ``path`` on ``device``, read once (the mtime in the key reloads a retrained file)."""
    return load_rescore(path).to(device)


def _sample(maps: Tensor, pts: Tensor) -> Tensor:
    """Bilinear value of channel ``c`` of ``maps (B, C, h, w)`` at ``pts[:, :, c] (B, T, C, 2)`` grid pixels -> ``(B, T, C)``.

    Points outside the map read 0 (``padding_mode='zeros'``).
    """
    b, c, h, w = maps.shape
    t = pts.shape[1]
    # align_corners=True: -1 / +1 are the centres of the first / last grid pixel
    norm = torch.stack([pts[..., 0] * (2.0 / max(w - 1, 1)) - 1, pts[..., 1] * (2.0 / max(h - 1, 1)) - 1], -1)
    norm = norm.permute(0, 2, 1, 3).reshape(b * c, t, 1, 2)
    out = F.grid_sample(maps.reshape(b * c, 1, h, w), norm.to(maps.dtype), mode="bilinear", padding_mode="zeros",
                        align_corners=True)
    return out.view(b, c, t).permute(0, 2, 1)


def flip_back(heatmaps: Tensor, offsets: Tensor, flip_index: Sequence[int]) -> tuple[Tensor, Tensor]:
    """Outputs of a mirrored image -> outputs of the original image.

    The grid is mirrored, heatmap channels permuted by ``flip_index`` + center (``meta.flip_index_with_center()``
    minus its last entry is ``flip_index``), and offsets permuted the same way with x negated: a joint at
    ``p' + o'`` in the mirrored grid is at ``p + (-o'_x, o'_y)`` in the original.

    Args:
        heatmaps: ``(B, K+1, h, w)``; offsets: ``(B, 2K, h, w)``; flip_index: length K.
    """
    k = len(flip_index)
    if heatmaps.shape[1] != k + 1 or offsets.shape[1] != 2 * k:
        raise DataError(f"flip: flip_index has {k} joints but heatmaps have {heatmaps.shape[1]} channels and offsets "
                        f"{offsets.shape[1]}; expected K+1 and 2K")
    hm_index = list(flip_index) + [k]
    hm = heatmaps.flip(-1)[:, hm_index]
    b, _, h, w = offsets.shape
    off = offsets.flip(-1).view(b, k, 2, h, w)[:, list(flip_index)]
    off = off * off.new_tensor([-1.0, 1.0]).view(1, 1, 2, 1, 1)
    return hm, off.reshape(b, 2 * k, h, w)


def merge_flip(heatmaps: Tensor, offsets: Tensor, heatmaps_flipped: Tensor, offsets_flipped: Tensor,
               flip_index: Sequence[int]) -> tuple[Tensor, Tensor]:
    """Flip test: average the outputs with those of the mirrored image (mapped back by :func:`flip_back`)."""
    hf, of = flip_back(heatmaps_flipped, offsets_flipped, flip_index)
    return (heatmaps + hf) / 2, (offsets + of) / 2
