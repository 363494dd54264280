"""Crowd placement: one image's people (labelled, stacked, far and tiny), drawn far to near, with the labels their
visibility gives (see :mod:`bapose.data.synthetic`). :func:`render_scene` is the entry."""

from __future__ import annotations

import cv2
import numpy as np

from bapose.data.synthetic.draw import background, body_mask, draw
from bapose.data.synthetic.figure import JOINT, Figure, make_figure
from bapose.data.synthetic.spec import SynthSpec


def _image_shape(spec: SynthSpec, rng: np.random.Generator) -> tuple[int, int]:
    aspect = rng.uniform(*spec.aspect_range) if spec.aspect_range[0] < spec.aspect_range[1] else spec.aspect_range[0]
    s = spec.image_size
    return (int(round(s / aspect)), s) if aspect >= 1 else (s, int(round(s * aspect)))


def _visibility(fig: Figure, nearer: np.ndarray, h: int, w: int) -> np.ndarray:
    """Per named point: 2 visible, 1 covered by a nearer person, 0 outside the image. (19,) int."""
    xy = fig.points
    inside = (xy[:, 0] >= 0) & (xy[:, 0] <= w - 1) & (xy[:, 1] >= 0) & (xy[:, 1] <= h - 1)
    v = np.where(inside, 2, 0)
    ix = np.clip(np.round(xy).astype(int), 0, [w - 1, h - 1])
    covered = nearer[ix[:, 1], ix[:, 0]]
    return np.where(inside & covered, 1, v)


def _layout_ok(figs: list[Figure], spec: SynthSpec, kp_index: np.ndarray, h: int, w: int) -> bool:
    """Far-to-near sorted ``figs``: is every person recognisable once nearer people cover it?"""
    nearer = np.zeros((h, w), bool)
    k = len(kp_index)
    centers = []
    for fig in reversed(figs):  # nearest first: its occluders are already in ``nearer``
        total = int(fig.mask.sum())
        seen = int((fig.mask & ~nearer).sum())
        v = _visibility(fig, nearer, h, w)[kp_index]
        if (total < 16 or seen < max(spec.min_visible * total, spec.min_area) or (v > 0).sum() < (k + 1) // 2
                or (v == 2).sum() < 3):
            return False
        centers.append(fig.points[kp_index][v > 0].mean(axis=0))
        nearer |= fig.mask
    c = np.asarray(centers)
    gap = np.abs(c[:, None] - c[None]).max(axis=-1) + np.eye(len(c)) * 1e9
    return bool(gap.min() >= spec.min_center_gap * max(h, w))


def _place(rng: np.random.Generator, spec: SynthSpec, h: int, w: int, lo: float, hi: float,
           detail: bool = True) -> Figure:
    """A figure whose size and ground position follow a camera at head height: bigger = lower = nearer."""
    t = rng.random()
    height = h * float(np.exp(np.log(lo) + t * (np.log(hi) - np.log(lo))))
    foot_y = h * (0.45 + 0.6 * t + rng.normal(0, 0.07))
    fig = make_figure(rng, height, rng.uniform(-0.05, 1.05) * w, foot_y, detail)
    fig.mask = body_mask(fig.prims, (h, w))
    return fig


def _stack(rng: np.random.Generator, spec: SynthSpec, h: int, w: int, other: Figure,
           kp_index: np.ndarray) -> Figure:
    """A figure of a new size whose center (mean of its joints) is ``other``'s within ``stack_spread``, just in
    front of or behind it (``stack_prob``)."""
    lo, hi = spec.height_range
    height = h * float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    target = other.points[kp_index].mean(0) + rng.uniform(-1.0, 1.0, 2) * spec.stack_spread * max(h, w)
    seed = int(rng.integers(2**62))
    # a figure's points move rigidly with (centre_x, foot_y): draw it at 0, then again shifted onto the target
    probe = make_figure(np.random.default_rng(seed), height, 0.0, 0.0)
    dx, dy = target - probe.points[kp_index].mean(0)
    fig = make_figure(np.random.default_rng(seed), height, float(dx), float(dy))
    fig.depth = other.depth + float(rng.choice([-1.0, 1.0]) * rng.uniform(0.005, 0.05) * h)
    fig.mask = body_mask(fig.prims, (h, w))
    return fig



def _labelled_people(rng: np.random.Generator, spec: SynthSpec, h: int, w: int, kp_index: np.ndarray) -> list[Figure]:
    """The labelled people, far to near: each new one (placed freely or stacked on one already there) is kept when
    the layout stays recognisable (:func:`_layout_ok`); up to ``8 x`` the drawn count of tries."""
    labelled: list[Figure] = []
    target = int(rng.integers(spec.people[0], spec.people[1] + 1))
    for _ in range(8 * target):
        if len(labelled) == target:
            break
        if labelled and spec.stack_prob > 0 and rng.random() < spec.stack_prob:
            new = _stack(rng, spec, h, w, labelled[int(rng.integers(len(labelled)))], kp_index)
        else:
            new = _place(rng, spec, h, w, *spec.height_range)
        trial = sorted(labelled + [new], key=lambda f: f.depth)
        if _layout_ok(trial, spec, kp_index, h, w):
            labelled = trial
    return labelled


def _far_people(rng: np.random.Generator, spec: SynthSpec, h: int, w: int) -> tuple[list[Figure], list[Figure]]:
    """Tiny far people, each list far to near: a crowd cluster (one iscrowd region) and a few loose unlabelled
    ones."""
    crowd: list[Figure] = []
    if rng.random() < spec.crowd_prob:
        cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.3, 0.5) * h
        for _ in range(int(rng.integers(5, 12))):
            fig = make_figure(rng, h * rng.uniform(0.07, 0.12), cx + rng.normal(0, 0.08) * w,
                              cy + rng.normal(0, 0.03) * h, detail=False)
            fig.mask = body_mask(fig.prims, (h, w))
            crowd.append(fig)
    n_bg = int(rng.integers(spec.background_people[0], spec.background_people[1] + 1))
    loose = [_place(rng, spec, h, w, 0.07, 0.16, detail=False) for _ in range(n_bg)]
    loose = [f for f in loose if f.mask.any()]
    crowd.sort(key=lambda f: f.depth)
    loose.sort(key=lambda f: f.depth)
    return crowd, loose


def _paint(rng: np.random.Generator, image: np.ndarray, order: list[Figure]) -> np.ndarray:
    """Draw the figures far to near onto the (float) background, then sensor noise and sometimes a blur: uint8."""
    for fig in order:
        draw(image, fig.prims)
    image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(rng.uniform(2, 8))
    image = np.clip(image, 0, 255).astype(np.uint8)
    if rng.random() < 0.3:
        image = cv2.GaussianBlur(image, (3, 3), 0)
    return image


def _annotate(order: list[Figure], labelled: list[Figure], n_crowd: int, kp_index: np.ndarray, h: int,
              w: int) -> list[dict]:
    """Per annotated region of the far-to-near ``order`` (its first ``n_crowd`` figures are the crowd cluster): the
    visible body mask and the joints with their visibility, as :func:`render_scene` returns them."""
    nearer = np.zeros((h, w), bool)
    visible: list[np.ndarray] = [None] * len(order)  # type: ignore[list-item]
    points_v: list[np.ndarray] = [None] * len(order)  # type: ignore[list-item]
    for i in range(len(order) - 1, -1, -1):
        points_v[i] = _visibility(order[i], nearer, h, w)
        visible[i] = order[i].mask & ~nearer
        nearer |= order[i].mask

    is_labelled = {id(f) for f in labelled}
    people: list[dict] = []
    if n_crowd:
        region = np.logical_or.reduce(visible[:n_crowd])
        if region.sum() >= 16:
            people.append({"keypoints": np.zeros((len(kp_index), 3)), "mask": region, "iscrowd": True})
    for i in range(n_crowd, len(order)):
        if visible[i].sum() < 4:
            continue
        kps = np.zeros((len(kp_index), 3))
        if id(order[i]) in is_labelled:
            v = points_v[i][kp_index]
            kps[:, :2] = np.where(v[:, None] > 0, order[i].points[kp_index], 0.0)
            kps[:, 2] = v
        people.append({"keypoints": kps, "mask": visible[i], "iscrowd": False})
    return people


def render_scene(spec: SynthSpec, rng: np.random.Generator) -> tuple[np.ndarray, list[dict]]:
    """One crowd image and its people.

    Returns:
        image (H, W, 3) uint8 RGB, and per annotated region (far to near) a dict with ``keypoints`` (K, 3) float
        (zeros for unlabelled people), ``mask`` (H, W) bool of the visible body, ``iscrowd`` bool.
    """
    kp_index = np.array([JOINT[n] for n in spec.meta.keypoints])
    h, w = _image_shape(spec, rng)
    image = background(rng, h, w)
    labelled = _labelled_people(rng, spec, h, w, kp_index)
    crowd, loose = _far_people(rng, spec, h, w)
    # draw everything far to near; masks of what is nearer decide visibility and occluded joints
    order = crowd + loose + labelled
    image = _paint(rng, image, order)
    return image, _annotate(order, labelled, len(crowd), kp_index, h, w)
