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
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from bapose.codecs.ownership import CENTER_STATUS  # noqa: F401  (re-exported: Layout.status indexes it)
from bapose.codecs.ownership import (BLOCKED, OK, OUTSIDE, SMALL, DekrOffsets, dekr_offsets, person_owners,
                                     place_centers)
from bapose.codecs.targets import (HEATMAP_WINDOWS, box_diagonals, downsample_mask, heatmap_weights, joint_centers,
                                  offset_targets, on_map, splat_gaussians)
from bapose.errors import ConfigError, DataError


# grid conventions (codec field ``grid_align``): ours, and DEKR's for checkpoints converted from its code
GRID_ALIGNS = ("center", "dekr")




# Rule names (codec fields ``offset_owner``, ``center_collision``, ``pose_nms``); the first of each is DEKR's.
OFFSET_OWNERS = ("smaller", "center_first", "nearest_center")
CENTER_COLLISIONS = ("ignore", "nearest_free")
POSE_NMS_RULES = ("dekr", "oks", "none")

# OKS sigma of every joint when a codec is built without the dataset's (COCO's shoulders; CrowdPose's mean)
DEFAULT_OKS_SIGMA = 0.079


class Layout(NamedTuple):
    """Where :meth:`BAPoseCodec.encode` puts each of the ``N`` people of one image, in output-grid pixels.

    ``grid (N, K, 2)`` joints; ``labelled (N, K)`` bool; ``center (N, 2)`` mean of the labelled joints (NaN without
    any); ``peak (N, 2)`` where the person's center Gaussian is centred (the center, or the pixel it was moved or
    snapped to; NaN: no center); ``pixel (N, 2)`` int64 center pixel, whose offsets the decoder reads (-1: none);
    ``status (N,)`` int64 index into :data:`CENTER_STATUS`; ``diag (N,)`` diagonal of the labelled-joint box (>= 1);
    ``owner (h, w)`` int64 person whose offsets each grid pixel carries (-1: none; under ``offset_owner=smaller``
    the last person to write any joint there, DEKR's ``area_map``); ``dekr``: under ``offset_owner=smaller``
    DEKR's offset maps with their per-joint ownership (:class:`~bapose.codecs.ownership.DekrOffsets`), else None.
    """

    grid: np.ndarray
    labelled: np.ndarray
    center: np.ndarray
    peak: np.ndarray
    pixel: np.ndarray
    status: np.ndarray
    diag: np.ndarray
    owner: np.ndarray
    dekr: DekrOffsets | None = None

    @property
    def joint_owner(self) -> np.ndarray | None:
        """``(K, h, w)`` whose joint ``k`` each pixel carries under DEKR's per-joint rule; None: ``owner`` holds for
        every joint."""
        return None if self.dekr is None else self.dekr.joint_owner

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
    losses by cause); ``conf/codec/dekr.yaml`` selects DEKR's rules (``offset_owner=smaller``,
    ``center_collision=ignore``, ``pose_nms=dekr``, ``heatmap_window=dekr``), which the paper rows use. The
    targets themselves are the pure functions of :mod:`bapose.codecs.targets` and :mod:`bapose.codecs.ownership`.

    Args:
        input_size: training input size, ``S`` (square) or ``(H, W)``; the grid is ``input_size / stride``.
        stride: output stride of the network (4).
        keypoint_sigma: Gaussian sigma of joint heatmaps, in grid pixels (DEKR 2; BAPose §4: 3).
        center_sigma: Gaussian sigma of the center heatmap, in grid pixels.
        offset_radius: offsets are regressed in a ``(2r+1)^2`` square of grid pixels around each person's center.
        background_weight: heatmap loss weight outside every Gaussian (1 inside, 0 in ignore regions).
        min_center_area: people whose area (``encode``'s ``areas``: the annotation's own area in original-image
            pixels, not scaled by the augmentation, as DEKR's ``get_joints`` compares ``obj['area'] < 32**2``) is
            below this get no center and no offsets; their joints still get heatmaps.
        per_joint_offset_weights: ``True`` (default, DEKR) gives
            ``(2K, h, w)`` with 0 for unlabelled joints (broadcasts the same way in a loss, and stops the net from
            learning a 0 offset for joints nobody labelled).
        offset_owner: who regresses a grid pixel where offset squares overlap. ``smaller``: DEKR's
            ``OffsetGenerator`` (:func:`~bapose.codecs.ownership.dekr_offsets`): per joint channel, the
            smaller person (labelled-joint box diagonal) among those that labelled the joint wins, even at a larger
            neighbour's center pixel (the one pixel the decoder reads for that neighbour); its square is DEKR's
            ``[int(c) - r, int(c) + r)`` and joints off the output map are not regressed. ``center_first``: every
            person owns their whole own center pixel, the rest of their ``(2r+1)^2`` square goes to the smaller;
            ``nearest_center`` (default): own center pixel first, every other pixel to the person whose center
            (Gaussian peak) is nearest, ties to the smaller. The last two regress every labelled joint, on the map
            or not, from whole pixels.
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
        heatmap_window: ``3sigma`` (default): each Gaussian fills ``round(g) ± ceil(3 sigma)`` and is drawn when
            its pixel is on the map; ``dekr``: DEKR's ``HeatmapGenerator`` window ``floor(g - 3 sigma - 1) ..
            ceil(g + 3 sigma + 2) - 1``, drawn only for ``0 <= g < size`` (:mod:`bapose.codecs.targets`).
        min_center_diagonal: people whose labelled-joint box diagonal (grid pixels, as augmented) is below this
            get no center and no offsets (MMPose's SPR ``minimal_diagonal_length``, sqrt(32) in its DEKR configs;
            it bounds the offset weight 1 / diagonal, which is otherwise clamped at 1). 0: no such rule.
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
    heatmap_window: str = "3sigma"
    min_center_diagonal: float = 0.0

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
        if self.heatmap_window not in HEATMAP_WINDOWS:
            raise ConfigError(f"codec: field 'heatmap_window' is {self.heatmap_window!r}; expected one of "
                              f"{list(HEATMAP_WINDOWS)}")
        if not self.min_center_diagonal >= 0:
            raise ConfigError(f"codec: field 'min_center_diagonal' is {self.min_center_diagonal!r}; expected >= 0 "
                              "grid pixels (MMPose: sqrt(32) = 5.657; 0: no rule)")
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
            keypoints: ``(N, K, 3)`` (x, y, v) in input pixels; areas: ``(N,)`` the small-person rule's areas
                (see ``min_center_area``). grid_hw: ``(h, w)`` of the output grid.
        """
        kp = np.asarray(keypoints, dtype=np.float64)
        if kp.ndim != 3 or kp.shape[2] != 3:
            raise DataError(f"encode: field 'keypoints' has shape {kp.shape}; expected (N, K, 3)")
        area = np.asarray(areas, dtype=np.float64).reshape(-1)
        if area.shape[0] != kp.shape[0]:
            raise DataError(f"encode: field 'areas' has {area.shape[0]} entries; expected {kp.shape[0]} (one per "
                            "person)")
        h, w = grid_hw
        g = self.to_grid(kp[..., :2])  # (N, K, 2)
        labelled = (kp[..., 2] > 0) & np.isfinite(g).all(-1)
        center = joint_centers(g, labelled)  # (N, 2), NaN without labelled joints
        size = box_diagonals(g, labelled)  # raw: 0 for one joint, NaN for none
        # offset weight 1 / diagonal of the labelled-joint box (grid pixels), MMPose's SPR; clamped at 1 px
        diag = np.maximum(np.nan_to_num(size, nan=1.0), 1.0)
        ci = np.clip(np.round(np.nan_to_num(center, nan=-1.0)).astype(np.int64), -1, [w, h])
        if self.heatmap_window == "dekr":  # DEKR draws a center Gaussian for 0 <= c < size only
            inside = labelled.any(1) & on_map(center[:, 0], center[:, 1], grid_hw, "dekr")
            ci = np.minimum(ci, [w - 1, h - 1])  # the Gaussian's top pixel when w - 0.5 <= c < w
        else:
            inside = labelled.any(1) & (ci[:, 0] >= 0) & (ci[:, 0] < w) & (ci[:, 1] >= 0) & (ci[:, 1] < h)
        small = (area < self.min_center_area) | (np.nan_to_num(size, nan=0.0) < self.min_center_diagonal)
        status = np.where(~inside, OUTSIDE, np.where(small, SMALL, OK)).astype(np.int64)

        has = status == OK
        peak = np.where(has[:, None], center, np.nan)
        pixel = np.where(has[:, None], ci, -1)
        # larger people first: they keep their natural center pixel, smaller neighbours give way
        order = np.nonzero(has)[0][np.argsort(-diag[has], kind="stable")]
        if self.center_collision == "nearest_free" and len(order) > 1:
            order = place_centers(order, center, ci, (h, w), peak, pixel, status, self._kernel(h, w) // 2,
                                  self.center_sigma, max(self.offset_radius, self._kernel(h, w) // 2 + 1))
        if self.offset_owner != "smaller":
            owner = person_owners(order, peak, pixel, diag, (h, w), self.offset_radius, self.offset_owner)
            return Layout(g, labelled, center, peak, pixel, status, diag, owner)
        # DEKR: every person with a center row (not small) regresses, in annotation order, from its square at
        # int(center) (the moved peak under nearest_free), even when its Gaussian is off the map
        eligible = labelled.any(1) & (status != SMALL) & (status != BLOCKED)
        origin = np.where(np.isfinite(peak), peak, center)
        dekr = dekr_offsets(g, labelled, origin, eligible, np.nan_to_num(size, nan=0.0), 1.0 / diag, (h, w),
                            self.offset_radius)
        return Layout(g, labelled, center, peak, pixel, status, diag, dekr.last, dekr)

    def encode(self, keypoints: np.ndarray, areas: np.ndarray, ignore_mask: np.ndarray | None = None,
               image_size: tuple[int, int] | None = None,
               valid_mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Training targets of one image.

        Args:
            keypoints: ``(N, K, 3)`` (x, y, v) in input pixels; ``v > 0`` means labelled. ``N`` may be 0 (shape
                ``(0, K, 3)``, so K is known).
            areas: ``(N,)`` the small-person rule's person areas: the annotation's area in original-image pixels
                (``min_center_area``; the dataset passes the json's own, unscaled by the augmentation).
            ignore_mask: ``(H, W)`` (or grid ``(h, w)``) bool, True where the loss must ignore heatmaps
                (crowd / unlabelled people).
            image_size: ``(H, W)`` of this image when it differs from ``input_size`` (e.g. eval-shaped images).
            valid_mask: ``(H, W)`` (or grid) bool, True where the input shows the source image; grid cells mostly
                outside it (the augmentation's padding) get heatmap weight 0 and no offsets. None: all valid.

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
        g, labelled, window = lay.grid, lay.labelled, self.heatmap_window
        k = g.shape[1]

        heat = np.zeros((k + 1, h, w), np.float32)
        person, joint = np.nonzero(labelled & on_map(g[..., 0], g[..., 1], (h, w), window))
        splat_gaussians(heat, joint, g[person, joint, 0], g[person, joint, 1], self.keypoint_sigma, window)
        # small people get no center (their joints were drawn above)
        idx = np.nonzero(lay.has_center)[0]
        splat_gaussians(heat, np.full(len(idx), k), lay.peak[idx, 0], lay.peak[idx, 1], self.center_sigma, window)

        if lay.dekr is None:
            offsets, off_w = offset_targets(g, labelled, 1.0 / lay.diag, lay.owner, self.per_joint_offset_weights)
        else:  # DEKR's OffsetGenerator made them with the ownership
            offsets, off_w = lay.dekr.offsets, lay.dekr.weights
            if not self.per_joint_offset_weights:
                off_w = off_w.max(0, keepdims=True)
        ignore = None if ignore_mask is None else downsample_mask(np.asarray(ignore_mask), (h, w), self.stride)
        invalid = None
        if valid_mask is not None:
            invalid = downsample_mask(~np.asarray(valid_mask, bool), (h, w), self.stride, "valid_mask")
            offsets[:, invalid] = 0.0  # no offsets where the input shows padding, as no heatmap loss there
            off_w[:, invalid] = 0.0
        weights = heatmap_weights(heat, self.background_weight, ignore, invalid)
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
