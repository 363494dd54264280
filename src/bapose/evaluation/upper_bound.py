"""Codec upper bound: encode the ground truth, decode the targets with the real decoder (no network), score the result.

What a perfect network could reach with this codec at this input size, and who is lost on the way and why. Every
scored ground-truth person (not crowd, at least one labelled joint) ends in exactly one of:

- ``found``: decoded from their own center pixel, kept by pose NMS, OKS >= ``oks_threshold`` with their annotation;
- ``no_center``: the encoder gave them no center (small-person rule ``min_center_area``, or the center is off the
  grid);
- ``center_collision``: their center shares a grid pixel with another person's, or another center's Gaussian hides
  their peak from center NMS, or no free pixel was left for it (``center_collision=nearest_free``);
- ``max_people``: their peak is a peak, but not among the ``max_people`` best;
- ``offsets_owned``: the offsets at their center pixel belong to another person (``offset_owner``);
- ``pose_nms``: decoded, then removed as a duplicate by pose NMS (``pose_nms``) or the ``max_people_after_nms`` cap;
- ``low_oks``: decoded and kept, but at OKS < ``oks_threshold`` (e.g. joints moved by ``refine_radius``).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from bapose.codecs.bapose_codec import CENTER_STATUS, BAPoseCodec, Layout
from bapose.codecs.oks import gt_oks_scale
from bapose.codecs.rescore import oks
from bapose.codecs.build import build_codec
from bapose.io import read_json_object
from bapose.data.metadata import DatasetMeta
from bapose.data.transforms import apply_affine, eval_resize_matrix, invert_affine
from bapose.evaluation.keypoints import KeypointEvaluator
from bapose.predictor import DecodeTrace, to_original, trace

LOSS_CAUSES = ("no_center", "center_collision", "max_people", "offsets_owned", "pose_nms", "low_oks")


class UpperBound(NamedTuple):
    """``stats``: the evaluator's AP table; ``people``: scored ground-truth people; ``lost``: people lost, by
    cause (every key of :data:`LOSS_CAUSES`); ``centers``: what a ``nearest_free`` encoder does with the natural
    centers of the people that get one (``ok`` / ``snapped`` / ``moved`` / ``blocked``: the last three collide),
    whatever rule ``codec`` itself uses; ``images``: images with at least one scored person."""

    stats: dict[str, float]
    people: int
    lost: dict[str, int]
    centers: dict[str, int]
    images: int

    def summary(self) -> str:
        """Two lines: people lost by cause, and how often natural centers collide."""
        lost = sum(self.lost.values())
        causes = ", ".join(f"{k} {v}" for k, v in self.lost.items())
        placed = sum(self.centers.values())
        collide = placed - self.centers.get("ok", 0)
        moves = ", ".join(f"{k} {self.centers.get(k, 0)}" for k in ("snapped", "moved", "blocked"))
        return (f"lost {lost} of {self.people} people ({causes})\n"
                f"center collisions: {collide} of {placed} centers ({collide / max(placed, 1):.2%}; {moves})")


def upper_bound(gt: str | Path | Mapping, meta: DatasetMeta, mode: str = "coco", input_size: int = 512,
                codec: BAPoseCodec | None = None, backend: str | None = None, size_divisor: int = 32,
                oks_threshold: float = 0.95) -> UpperBound:
    """AP of decode(encode(ground truth)) for every image of ``gt`` (sizes from the json, no pixels needed), and who
    was lost why.

    Each image is planned as evaluation resizes it (short side = ``input_size``, padded to ``size_divisor``
    multiples, ``bapose.data.transforms.eval_resize_matrix``); people are encoded in that input frame (the
    small-person rule on the json's own ``area``, bbox w*h where it has none), decoded, mapped back to original
    pixels and scored.
    """
    data = read_json_object(gt) if not isinstance(gt, Mapping) else gt
    # by default the small-person rule of the scoring rule set (COCO 32^2, CrowdPose none), as training resolves it
    codec = codec or build_codec({"min_center_area": None}, input_size=input_size, rule_set=mode)
    if codec.oks_sigmas is None:
        codec = dataclasses.replace(codec, oks_sigmas=meta.sigmas)
    probe = dataclasses.replace(codec, center_collision="nearest_free")
    k = meta.num_keypoints
    evaluator = KeypointEvaluator(data, meta, mode=mode, backend=backend,
                                  file=None if isinstance(gt, Mapping) else gt)
    per_image: dict[int, list[Mapping]] = {img["id"]: [] for img in data["images"]}
    for ann in data["annotations"]:
        if not ann.get("iscrowd", 0):
            per_image[ann["image_id"]].append(ann)
    lost: Counter = Counter({cause: 0 for cause in LOSS_CAUSES})
    centers: Counter = Counter()
    people = images = 0
    for img in data["images"]:
        (rh, rw), padded, input_to_orig = eval_resize_matrix(img["height"], img["width"], input_size, size_divisor)
        anns = per_image[img["id"]]
        orig = np.asarray([a["keypoints"] for a in anns], np.float64).reshape(len(anns), k, 3)
        kp = orig.copy()
        kp[..., :2] = apply_affine(kp[..., :2], invert_affine(input_to_orig))
        # the small-person rule reads the annotation's own area (original pixels), as DEKR and the dataset do
        areas = np.asarray([a["area"] if "area" in a else a["bbox"][2] * a["bbox"][3] for a in anns], np.float64)
        scales = np.asarray([gt_oks_scale(a, mode) for a in anns])
        out = outcomes(codec, kp, areas, padded, meta.sigmas, scales, oks_threshold, orig, input_to_orig)
        evaluator.update([img["id"]], [to_original(out.trace.poses.numpy(), input_to_orig)],
                         [out.trace.scores.numpy()])
        scored = (orig[..., 2] > 0).any(1)
        people += int(scored.sum())
        images += int(scored.any())
        grid = (padded[0] // codec.stride, padded[1] // codec.stride)
        for s in probe.layout(kp, areas, grid).status[scored]:
            if CENTER_STATUS[s] in ("ok", "snapped", "moved", "blocked"):
                centers[CENTER_STATUS[s]] += 1
        for cause in out.causes[scored]:
            if cause != "found":
                lost[cause] += 1
    return UpperBound(evaluator.compute(), people, dict(lost), dict(centers), images)


class Outcome(NamedTuple):
    """One image through the codec: ``causes (N,)`` str per person (``found`` or one of :data:`LOSS_CAUSES`), the
    encoder's :class:`~bapose.codecs.bapose_codec.Layout`, the decoder's
    :class:`~bapose.predictor.DecodeTrace` (input pixels) and the targets."""

    causes: np.ndarray
    layout: Layout
    trace: DecodeTrace
    targets: dict[str, np.ndarray]


def outcomes(codec: BAPoseCodec, keypoints: np.ndarray, areas: np.ndarray, image_size: tuple[int, int],
             sigmas: Sequence[float], oks_scales: np.ndarray, oks_threshold: float = 0.95,
             original: np.ndarray | None = None, input_to_orig: np.ndarray | None = None) -> Outcome:
    """Encode one image's people, decode the targets, and say what became of each person.

    Args:
        keypoints: ``(N, K, 3)`` in input pixels; areas: ``(N,)`` the small-person rule's (original) areas;
        image_size: ``(H, W)`` of the input image; sigmas: ``(K,)`` OKS sigmas;
        oks_scales: ``(N,)`` the evaluator's OKS scale per person, in the pixels of ``original``;
        original: ``(N, K, 3)`` the annotation in original pixels (default: ``keypoints``), with
        input_to_orig: ``(2, 3)`` the affine from input to original pixels (default: identity).
    """
    kp = np.asarray(keypoints, np.float64)
    orig = kp if original is None else np.asarray(original, np.float64)
    affine = np.array([[1.0, 0, 0], [0, 1.0, 0]]) if input_to_orig is None else np.asarray(input_to_orig)
    targets = codec.encode(kp, areas, image_size=image_size)
    lay = codec.layout(kp, areas, (image_size[0] // codec.stride, image_size[1] // codec.stride))
    decoded, = trace(codec, torch.from_numpy(targets["heatmaps"])[None], torch.from_numpy(targets["offsets"])[None])
    center_map = targets["heatmaps"][-1]
    n = len(kp)
    out = np.full(n, "found", dtype=object)
    pixels, valid, keep = decoded.pixels.numpy(), decoded.valid.numpy(), decoded.keep.numpy()
    h, w = center_map.shape
    r = codec._kernel(h, w) // 2
    # who each kept candidate decodes: the owner of the offsets at its pixel (every pixel a person owns regresses
    # exactly that person's joints)
    kept_owner = lay.owner[pixels[keep, 1], pixels[keep, 0]] if len(keep) else np.zeros(0, np.int64)
    scales = np.asarray(oks_scales, np.float64)
    for p in range(n):
        status = CENTER_STATUS[lay.status[p]]
        if status in ("small", "outside"):
            out[p] = "no_center"
            continue
        if status == "blocked":
            out[p] = "center_collision"
            continue
        rows = np.nonzero(kept_owner == p)[0]
        if len(rows):
            pose = to_original(decoded.poses[rows].numpy(), affine)
            if oks(pose, orig[p:p + 1], scales[p:p + 1], sigmas).max() < oks_threshold:
                out[p] = "low_oks"
            continue
        # not decoded: what happened at their own center pixel
        x, y = lay.pixel[p]
        hit = np.nonzero(valid & (pixels == [x, y]).all(1))[0]
        shared = (lay.pixel == [x, y]).all(1).sum() > 1
        if shared and lay.owner[y, x] != p:
            out[p] = "center_collision"
        elif not len(hit):
            window = center_map[max(y - r, 0):y + r + 1, max(x - r, 0):x + r + 1]
            is_peak = center_map[y, x] >= window.max() and center_map[y, x] > codec.center_threshold
            out[p] = "max_people" if is_peak else "center_collision"
        elif lay.owner[y, x] != p:
            out[p] = "offsets_owned"
        else:
            out[p] = "pose_nms"
    return Outcome(out, lay, decoded, targets)


def codec_upper_bound(gt: str | Path | Mapping, meta: DatasetMeta, mode: str = "coco", input_size: int = 512,
                      codec: BAPoseCodec | None = None, backend: str | None = None,
                      size_divisor: int = 32) -> dict[str, float]:
    """The AP table of :func:`upper_bound` alone."""
    return upper_bound(gt, meta, mode, input_size, codec, backend, size_divisor).stats
