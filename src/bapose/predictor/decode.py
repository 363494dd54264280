"""Network outputs -> people: the decoding steps after the codec's candidates (torch, batched where it pays).

The codec (:class:`bapose.codecs.BAPoseCodec`) owns the grid geometry, the decode knobs and the candidates (center
NMS, top-k, the poses regressed there); this module does the rest, in the order DEKR does it:

1. :func:`refine` (``refine_radius > 0``: joints to their heatmap maximum nearby; :mod:`bapose.codecs.grouping`);
2. :func:`joint_scores`: joint score = center score x joint heatmap at the joint, pose score = their mean;
3. :func:`rescore` (``rescore_path``: pose score x the OKS a rescoring net predicts);
4. :func:`remove_duplicates`: pose NMS by the codec's ``pose_nms`` rule (:func:`bapose.codecs.grouping.pose_nms`),
   at most ``max_people_after_nms`` people.

:func:`decode` runs them on one scale, :func:`decode_multiscale` merges several as DEKR's ``tools/valid.py`` does,
:func:`trace` keeps which center pixels were read (the codec upper bound).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from bapose.codecs.bapose_codec import BAPoseCodec, Candidates
from bapose.codecs.grouping import pose_nms, refine_joints
from bapose.codecs.oks import resolve_sigmas
from bapose.codecs.rescore import RescoreNet, load_rescore
from bapose.errors import DataError


class Poses(NamedTuple):
    """Decoded people of one image: ``poses (M, K, 3)`` as (x, y, joint score) in input pixels, ``scores (M,)``."""

    poses: Tensor
    scores: Tensor


class DecodeTrace(NamedTuple):
    """One image's decode, step by step (for :mod:`bapose.evaluation.upper_bound`): ``pixels (T, 2)`` grid pixel of
    every top-k center, ``valid (T,)``, ``keep (M,)`` the candidates that survived pose NMS (indices into ``T``),
    and the people :func:`decode` returns, ``poses (M, K, 3)``, ``scores (M,)``."""

    pixels: Tensor
    valid: Tensor
    keep: Tensor
    poses: Tensor
    scores: Tensor


def sample(maps: Tensor, pts: Tensor) -> Tensor:
    """Bilinear value of channel ``c`` of ``maps (B, C, h, w)`` at ``pts[:, :, c] (B, T, C, 2)`` grid pixels ->
    ``(B, T, C)``. Points outside the map read 0 (``padding_mode='zeros'``)."""
    b, c, h, w = maps.shape
    t = pts.shape[1]
    # align_corners=True: -1 / +1 are the centres of the first / last grid pixel
    norm = torch.stack([pts[..., 0] * (2.0 / max(w - 1, 1)) - 1, pts[..., 1] * (2.0 / max(h - 1, 1)) - 1], -1)
    norm = norm.permute(0, 2, 1, 3).reshape(b * c, t, 1, 2)
    out = F.grid_sample(maps.reshape(b * c, 1, h, w), norm.to(maps.dtype), mode="bilinear", padding_mode="zeros",
                        align_corners=True)
    return out.view(b, c, t).permute(0, 2, 1)


def refine(codec: BAPoseCodec, heatmaps: Tensor, joints: Tensor) -> Tensor:
    """Regressed joints ``(B, T, K, 2)`` (input pixels) moved to their joint heatmap's maximum within
    ``codec.refine_radius`` grid pixels (:func:`bapose.codecs.grouping.refine_joints`); unchanged when it is 0."""
    r = int(codec.refine_radius or 0)
    if r <= 0 or joints.numel() == 0:
        return joints
    k = heatmaps.shape[1] - 1
    maps = heatmaps[:, :k].detach().float().cpu().numpy()
    grid = codec.to_grid(joints.detach().float()).cpu().numpy().astype(np.float64)
    out = np.empty_like(grid)
    for i in range(len(grid)):  # per image: T x K joints
        gx, gy = refine_joints(maps[i], grid[i, ..., 0], grid[i, ..., 1], r)
        out[i, ..., 0], out[i, ..., 1] = gx, gy
    return codec.to_input(torch.from_numpy(out).to(device=joints.device, dtype=torch.float32))


def joint_scores(codec: BAPoseCodec, heatmaps: Tensor, center_scores: Tensor, joints: Tensor
                 ) -> tuple[Tensor, Tensor, Tensor]:
    """Joint score = center score x joint heatmap (bilinear at ``codec.heat_grid``); pose score = mean joint score.

    Args:
        heatmaps: ``(B, K+1, h, w)`` on the grid of the input image; center_scores: ``(B, T)``;
        joints: ``(B, T, K, 2)`` in input pixels.

    Returns:
        ``poses (B, T, K, 3)`` (x, y, joint score), ``scores (B, T)``, and ``heat (B, T)`` the mean joint heatmap
        value alone (DEKR's ranking in pose NMS).
    """
    _, c, h, w = heatmaps.shape
    heat = sample(heatmaps[:, :c - 1].float(), codec.heat_grid(joints, (h, w)))  # (B, T, K)
    scores = center_scores[..., None] * heat
    return torch.cat([joints, scores[..., None]], -1), scores.mean(-1), heat.mean(-1)


@functools.lru_cache(maxsize=8)
def _rescore_net(path: str, mtime_ns: int, device: str) -> RescoreNet:
    """The rescoring net of ``path`` on ``device``, read once (the mtime in the key reloads a retrained file)."""
    return load_rescore(path).to(device)


def rescore(codec: BAPoseCodec, poses: Tensor, scores: Tensor) -> Tensor:
    """``scores (B, T)`` x the OKS that the ``codec.rescore_path`` net predicts for ``poses (B, T, K, 3)``.

    Unchanged when ``rescore_path`` is ``None``; a net trained for another K raises ``DataError``.
    """
    path = codec.rescore_path
    if path is None or poses.numel() == 0:
        return scores
    b, t, k, _ = poses.shape
    net = _rescore_net(path, os.stat(path).st_mtime_ns, str(poses.device))
    if net.num_keypoints != k:
        raise DataError(f"codec: rescore file '{path}' field 'num_keypoints' is {net.num_keypoints}; the network "
                        f"outputs {k} joints")
    return scores * net.predict_oks(poses.reshape(b * t, k, 3).float()).view(b, t).to(scores.dtype)


def remove_duplicates(codec: BAPoseCodec, poses: Tensor, scores: Tensor, heat: Tensor | None = None,
                      multiscale: bool = False) -> Tensor:
    """Indices of the poses ``(M, K, 2|3)`` (input pixels, candidate order) that are not duplicates, by the codec's
    ``pose_nms`` rule, at most ``max_people_after_nms``.

    Args:
        scores: ``(M,)`` pose scores (ranking of ``oks`` / ``none``); heat: ``(M,)`` mean joint heatmap value
            (``dekr``'s ranking; ``scores`` when not given).
        multiscale: the multi-scale thresholds (``ms_pose_nms_ratio`` / ``ms_pose_nms_oks``) instead of the
            single-scale ones (``pose_nms_ratio`` / ``pose_nms_oks``).
    """
    xy = poses[..., :2].detach().cpu().numpy()
    keep = pose_nms(xy, scores.detach().cpu().double().numpy(),
                    None if heat is None else heat.detach().cpu().double().numpy(), codec.nms_rule,
                    ratio=codec.ms_pose_nms_ratio if multiscale else codec.pose_nms_ratio,
                    fraction=codec.pose_nms_fraction,
                    oks_threshold=codec.ms_pose_nms_oks if multiscale else codec.pose_nms_oks,
                    sigmas=resolve_sigmas(codec.oks_sigmas, poses.shape[1]),
                    cap=codec.max_people_after_nms or codec.max_people)
    return torch.from_numpy(keep).to(poses.device)


def select(codec: BAPoseCodec, poses: Tensor, scores: Tensor, heat: Tensor, valid: Tensor,
           multiscale: bool = False) -> tuple[Tensor, list[Tensor]]:
    """Rescore, then pose NMS per image. Returns the scores and, per image, the kept candidates (into ``T``)."""
    scores = rescore(codec, poses, scores)
    kept = []
    for p, s, hs, v in zip(poses, scores, heat, valid):
        idx = torch.nonzero(v).flatten()
        kept.append(idx[remove_duplicates(codec, p[idx], s[idx], hs[idx], multiscale)])
    return scores, kept


@torch.no_grad()
def trace(codec: BAPoseCodec, heatmaps: Tensor, offsets: Tensor) -> list[DecodeTrace]:
    """:func:`decode`, keeping which center pixels it read and which survived pose NMS (one per image)."""
    cand = codec.candidates(heatmaps, offsets)
    poses, scores, heat = joint_scores(codec, heatmaps, cand.scores, refine(codec, heatmaps, cand.joints))
    scores, kept = select(codec, poses, scores, heat, cand.valid)
    pixels = codec.to_grid(cand.centers).round().long()
    return [DecodeTrace(pixels[i], cand.valid[i], keep, poses[i][keep], scores[i][keep])
            for i, keep in enumerate(kept)]


def decode(codec: BAPoseCodec, heatmaps: Tensor, offsets: Tensor) -> list[Poses]:
    """Network outputs of one scale -> people, one :class:`Poses` per image, in input pixels (on the outputs' device).

    Args:
        heatmaps: ``(B, K+1, h, w)`` (center last); offsets: ``(B, 2K, h, w)`` in grid pixels.
    """
    return [Poses(t.poses, t.scores) for t in trace(codec, heatmaps, offsets)]


def _best_center(c: Candidates) -> Tensor:
    """``(B, 1)`` best valid center score of each image, 1 where none (DEKR)."""
    top = torch.where(c.valid, c.scores, torch.full_like(c.scores, -math.inf)).amax(1, keepdim=True)
    return torch.where(torch.isfinite(top), top, torch.ones_like(top))


@torch.no_grad()
def decode_multiscale(codec: BAPoseCodec, outputs: Sequence[tuple[Tensor, Tensor]],
                      scales: Sequence[tuple[float, float]], base_hw: tuple[int, int]) -> list[Poses]:
    """Merge several scales as DEKR's ``tools/valid.py`` + ``lib/core/nms.py`` do.

    Candidates of every scale (largest scale first) are pooled in base-image pixels; heatmaps are averaged on the
    base grid and give every joint its heatmap value; the center scores of each scale but the one nearest 1 are
    rescaled so that their best equals ``ms_scale_decrease`` x that scale's best (DEKR ``TEST.DECREASE``); pose NMS
    runs with the multi-scale thresholds, which remove the same person found at several scales under every rule
    (``dekr``: ``ms_pose_nms_ratio``, DEKR's 0.15; ``oks``: ``ms_pose_nms_oks``), and keeps at most
    ``max_people_after_nms``.

    Args:
        outputs: per scale ``(heatmaps (B, K+1, h_s, w_s), offsets (B, 2K, h_s, w_s))``.
        scales: per scale ``(sy, sx)`` = that scale's input size / the base input size.
        base_hw: ``(H, W)`` of the base input image; poses come back in its pixels.
    """
    if len(outputs) != len(scales) or not outputs:
        raise DataError(f"decode_multiscale: {len(outputs)} outputs for {len(scales)} scales; expected one each")
    grid = (base_hw[0] // codec.stride, base_hw[1] // codec.stride)
    # DEKR walks the scales from the largest down; the reference scale is 1 (here: the nearest to 1)
    order = sorted(range(len(scales)), key=lambda i: -scales[i][0] * scales[i][1])
    ref = min(order, key=lambda i: abs(math.log(scales[i][0])) + abs(math.log(scales[i][1])))
    dekr = codec.align == "dekr"
    cands, avg = {}, None
    for i in order:
        hm, off = outputs[i]
        c = codec.candidates(hm, off)
        s = c.centers.new_tensor([scales[i][1], scales[i][0]])
        # input pixels of scale s -> base input pixels: pixel-area aligned, like the image resize; under
        # grid_align=dekr x / s and corner-aligned heatmaps, as DEKR's aggregate_results (reverse_scale)
        to_base = (lambda v, s=s: v / s) if dekr else (lambda v, s=s: (v + 0.5) / s - 0.5)  # noqa: E731
        cands[i] = Candidates(to_base(c.centers), to_base(c.joints), c.scores, c.valid)
        up = hm.float() if tuple(hm.shape[-2:]) == grid else \
            F.interpolate(hm.float(), size=grid, mode="bilinear", align_corners=dekr)
        avg = up if avg is None else avg + up
    avg = avg / len(outputs)
    ref_best = _best_center(cands[ref])
    center_scores = [cands[i].scores if i == ref else
                     cands[i].scores / _best_center(cands[i]) * ref_best * codec.ms_scale_decrease for i in order]
    joints = refine(codec, avg, torch.cat([cands[i].joints for i in order], 1))
    poses, scores, heat = joint_scores(codec, avg, torch.cat(center_scores, 1), joints)
    valid = torch.cat([cands[i].valid for i in order], 1)
    scores, kept = select(codec, poses, scores, heat, valid, multiscale=True)
    return [Poses(poses[i][keep], scores[i][keep]) for i, keep in enumerate(kept)]
