"""Drawing poses, heatmaps and offset fields on images (pure cv2 / numpy; used by ``bapose-predict`` and notebooks).

Every function takes and returns **RGB uint8** ``(H, W, 3)`` images and never modifies its input.

:func:`draw_poses` colours each person with its own hue (joints, box-less score label) and each limb by its side:
limbs whose joints are both ``left_*`` take a warm variant of the person's hue, both ``right_*`` a cool one, the
rest (head, torso links) the person's own colour, so left and right stay readable in a crowd. Joint confidence is
shown as opacity: a joint (and the limbs touching it) fades from opaque at score 1 to ``min_alpha`` at
``kpt_threshold``; below the threshold it is not drawn. All elements are rasterised into one colour layer and one
alpha layer and composited once, so the cost is one blend per image, not per element.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import cv2
import numpy as np

from bapose.data.metadata import DatasetMeta
from bapose.errors import DataError

__all__ = ["draw_heatmaps", "draw_offsets", "draw_ownership", "draw_poses", "joint_sides", "limb_sides", "person_color"]


def person_color(i: int, saturation: float = 0.85, value: float = 1.0) -> tuple[int, int, int]:
    """Distinct, stable RGB colour of person ``i``: golden-ratio hue steps (neighbours in the list differ most)."""
    r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, saturation, value)
    return int(r * 255), int(g * 255), int(b * 255)


def joint_sides(meta: DatasetMeta) -> np.ndarray:
    """``(K,)`` int: -1 for left joints, +1 for right joints, 0 for central ones, read from the joint names.

    A joint is lateral when the flip permutation moves it; its side is then given by a ``left``/``l_`` or
    ``right``/``r_`` name prefix (any other lateral naming counts as central for drawing only).
    """
    sides = np.zeros(meta.num_keypoints, np.int64)
    for k, name in enumerate(meta.keypoints):
        if meta.flip_index[k] == k:
            continue
        low = name.lower()
        if low.startswith(("left", "l_")):
            sides[k] = -1
        elif low.startswith(("right", "r_")):
            sides[k] = 1
    return sides


def limb_sides(meta: DatasetMeta) -> np.ndarray:
    """``(L,)`` int per skeleton limb: -1 both joints left, +1 both right, 0 otherwise (torso, head links)."""
    sides = joint_sides(meta)
    if not meta.skeleton:
        return np.zeros(0, np.int64)
    sk = np.asarray(meta.skeleton, np.int64)
    a, b = sides[sk[:, 0]], sides[sk[:, 1]]
    return np.where(a == b, a, 0)


def _side_color(base: tuple[int, int, int], side: int) -> tuple[int, int, int]:
    # left: hue shifted towards warm and lighter; right: shifted cool and darker; the person's hue stays recognisable
    if side == 0:
        return base
    h, s, v = colorsys.rgb_to_hsv(*(c / 255 for c in base))
    if side < 0:
        h, s, v = (h - 0.06) % 1.0, s * 0.55, 1.0
    else:
        h, s, v = (h + 0.06) % 1.0, 1.0, v * 0.6
    r, g, b = colorsys.hsv_to_rgb(h, s, v)
    return int(r * 255), int(g * 255), int(b * 255)


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise DataError(f"draw: field 'image' is {image.dtype} {image.shape}; expected RGB uint8 (H, W, 3)")
    return image


def _person_scores(poses: np.ndarray, scores: np.ndarray | None, meta: DatasetMeta) -> np.ndarray | None:
    """Check ``poses`` ``(M, K, 3)`` against the meta; ``scores`` as an ``(M,)`` float array, or None."""
    k = meta.num_keypoints
    if poses.ndim != 3 or poses.shape[1:] != (k, 3):
        raise DataError(f"draw_poses: field 'poses' has shape {poses.shape}; expected (M, {k}, 3) for dataset "
                        f"'{meta.name}'")
    m = poses.shape[0]
    person_scores = None if scores is None else np.asarray(scores, dtype=np.float64).reshape(-1)
    if person_scores is not None and person_scores.shape[0] != m:
        raise DataError(f"draw_poses: field 'scores' has {person_scores.shape[0]} entries; expected {m}")
    return person_scores


def _joint_alpha(pose: np.ndarray, kpt_threshold: float, min_alpha: float,
                 normalize: bool) -> tuple[np.ndarray, np.ndarray]:
    """Which joints of a ``(K, 3)`` pose are drawn (finite, score >= ``kpt_threshold``) and their opacity:
    ``min_alpha`` at the threshold, 1 at (relative, when ``normalize``) score 1."""
    conf = pose[:, 2].copy()
    ok = (conf >= kpt_threshold) & np.isfinite(pose[:, :2]).all(1)
    if normalize and ok.any() and conf[ok].max() > 0:
        conf = conf / conf[ok].max()
    return ok, np.clip(min_alpha + (1 - min_alpha) * conf, min_alpha, 1.0).astype(np.float32)


class _PoseLayers:
    """One colour layer and one alpha layer that every limb and joint is painted into; later elements overwrite
    earlier ones in both (like painting), and one composite puts them on the image."""

    def __init__(self, h: int, w: int, meta: DatasetMeta, thickness: int) -> None:
        self.color = np.zeros((h, w, 3), np.uint8)
        self.alpha = np.zeros((h, w), np.float32)
        self.thickness, self.radius = thickness, thickness + 1
        self.sides, self.jsides = limb_sides(meta), joint_sides(meta)
        self.skeleton = np.asarray(meta.skeleton, np.int64).reshape(-1, 2)

    def paint_person(self, pts: np.ndarray, ok: np.ndarray, a: np.ndarray, base: tuple[int, int, int]) -> None:
        """Limbs between drawn joints, then the joints (white rim), coloured by side from the person's ``base``."""
        t, radius = self.thickness, self.radius
        for (ja, jb), side in zip(self.skeleton, self.sides):
            if ok[ja] and ok[jb]:
                p0, p1 = tuple(map(int, pts[ja])), tuple(map(int, pts[jb]))
                # colour without anti-aliasing, alpha with it: edges keep the full colour at partial opacity
                # (anti-aliasing both would darken the edges towards the black empty layer)
                cv2.line(self.color, p0, p1, _side_color(base, int(side)), t, cv2.LINE_8)
                cv2.line(self.alpha, p0, p1, float(min(a[ja], a[jb])), t, cv2.LINE_AA)
        for j in np.nonzero(ok)[0]:
            c = tuple(map(int, pts[j]))
            cv2.circle(self.color, c, radius, _side_color(base, int(self.jsides[j])), -1, cv2.LINE_8)
            cv2.circle(self.color, c, radius, (255, 255, 255), 1, cv2.LINE_8)
            cv2.circle(self.alpha, c, radius, float(a[j]), -1, cv2.LINE_AA)

    def composite(self, image: np.ndarray) -> np.ndarray:
        a3 = self.alpha[..., None]
        return (image.astype(np.float32) * (1 - a3) + self.color.astype(np.float32) * a3).round().astype(np.uint8)


def _score_label(score: float, pts: np.ndarray, radius: int,
                 color: tuple[int, int, int]) -> tuple[str, tuple[int, int], tuple[int, int, int]]:
    """A person's score text and anchor: above the top-most of its drawn joints ``pts`` by a fraction of the
    person's height (clear of the head's joints)."""
    top = pts[np.argmin(pts[:, 1])]
    lift = 2 * radius + 2 + int(0.08 * np.ptp(pts[:, 1]))
    return f"{score:.2f}", (int(top[0]), int(top[1]) - lift), color


def _draw_labels(out: np.ndarray, labels: list[tuple[str, tuple[int, int], tuple[int, int, int]]]) -> None:
    """Score labels, opaque, on a dark box so they read on any background (in place)."""
    h, w = out.shape[:2]
    scale = max(0.3, min(h, w) / 900)
    for text, (x, y), col in labels:
        (tw, th), base_line = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        x = int(np.clip(x - tw // 2, 0, max(w - tw - 1, 0)))
        y = int(np.clip(y, th + 1, h - base_line - 1))
        cv2.rectangle(out, (x - 1, y - th - 1), (x + tw + 1, y + base_line), (0, 0, 0), -1)
        cv2.putText(out, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, col, 1, cv2.LINE_AA)


def draw_poses(image: np.ndarray, poses: np.ndarray, scores: np.ndarray | None, meta: DatasetMeta,
               score_threshold: float = 0.3, kpt_threshold: float = 0.05, min_alpha: float = 0.25,
               thickness: int | None = None, show_scores: bool = True,
               normalize_joint_scores: bool = True) -> np.ndarray:
    """Draw people on a copy of an image.

    Args:
        image: RGB uint8 ``(H, W, 3)``.
        poses: ``(M, K, 3)`` (x, y, joint score) in the image's pixels; ground truth ``(x, y, v)`` works too
            (``v = 2`` or 1 draws opaque, ``v = 0`` is skipped).
        scores: ``(M,)`` person scores, or None (every person drawn, no label).
        meta: dataset metadata (K, skeleton, left/right names).
        score_threshold: people scoring below it are skipped.
        kpt_threshold: joints whose score is below it are skipped (and so are their limbs).
        min_alpha: opacity of a joint exactly at ``kpt_threshold``; a score of 1 is opaque.
        thickness: limb width in pixels (default: from the image size).
        show_scores: write each person's score above its top-most joint.
        normalize_joint_scores: joint scores of a bottom-up model are center score x heatmap, rarely near 1; divide
            each person's joint scores by its best joint so opacity shows the *relative* confidence.

    Returns:
        RGB uint8 ``(H, W, 3)``, a new array.
    """
    out = _check_image(image).copy()
    poses = np.asarray(poses, dtype=np.float64)
    if poses.size == 0:
        return out
    person_scores = _person_scores(poses, scores, meta)
    h, w = out.shape[:2]
    layers = _PoseLayers(h, w, meta, thickness or max(1, round(min(h, w) / 200)))
    labels = []
    # lowest score first, so better people end on top where they overlap
    order = np.argsort(person_scores, kind="stable") if person_scores is not None else np.arange(poses.shape[0])
    for i in order:
        if person_scores is not None and person_scores[i] < score_threshold:
            continue
        ok, a = _joint_alpha(poses[i], kpt_threshold, min_alpha, normalize_joint_scores)
        if not ok.any():
            continue
        pts = np.round(poses[i][:, :2]).astype(np.int64)
        base = person_color(int(i))
        layers.paint_person(pts, ok, a, base)
        if show_scores and person_scores is not None:
            labels.append(_score_label(person_scores[i], pts[ok], layers.radius, base))
    out = layers.composite(out)
    _draw_labels(out, labels)  # last and opaque
    return out


def draw_heatmaps(image: np.ndarray, heatmaps: np.ndarray, channels: Sequence[int] | None = None,
                  opacity: float = 0.6, colormap: int = cv2.COLORMAP_JET) -> np.ndarray:
    """Overlay the max over ``channels`` of ``heatmaps (C, h, w)`` (values in [0, 1]) on an image.

    The maps are resized to the image (any stride); opacity grows with the heat value, so cold regions keep the image.
    """
    img = _check_image(image)
    hm = np.asarray(heatmaps, dtype=np.float32)
    if hm.ndim != 3:
        raise DataError(f"draw_heatmaps: field 'heatmaps' has shape {hm.shape}; expected (C, h, w)")
    sel = hm if channels is None else hm[list(channels)]
    peak = np.clip(sel.max(0), 0.0, 1.0)
    peak = cv2.resize(peak, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_LINEAR)
    heat = cv2.cvtColor(cv2.applyColorMap((peak * 255).astype(np.uint8), colormap), cv2.COLOR_BGR2RGB)
    a = (opacity * peak)[..., None]
    return (img.astype(np.float32) * (1 - a) + heat.astype(np.float32) * a).round().astype(np.uint8)


def draw_offsets(image: np.ndarray, offsets: np.ndarray, weights: np.ndarray, stride: int = 4,
                 joints: Sequence[int] | None = None, meta: DatasetMeta | None = None, step: int = 1,
                 thickness: int = 1) -> np.ndarray:
    """Draw the offset field: from each grid pixel with weight > 0, an arrow to every joint it regresses.

    Args:
        image: RGB uint8 ``(H, W, 3)`` of the input image (``H = h * stride``).
        offsets: ``(2K, h, w)`` as (x0, y0, x1, y1, ...) in grid pixels (the codec's layout).
        weights: ``(1, h, w)`` or ``(2K, h, w)``; arrows start only where it is > 0.
        joints: which joints to draw (default all); colours by side when ``meta`` is given.
        step: draw every ``step``-th grid pixel in each direction.
    """
    out = _check_image(image).copy()
    off = np.asarray(offsets, dtype=np.float64)
    k = off.shape[0] // 2
    wgt = np.asarray(weights).reshape(-1, *off.shape[1:]).max(0)
    ys, xs = np.nonzero(wgt[::step, ::step] > 0)
    ys, xs = ys * step, xs * step
    sides = joint_sides(meta) if meta is not None else np.zeros(k, np.int64)
    palette = {-1: (255, 140, 0), 0: (0, 220, 0), 1: (0, 120, 255)}
    to_input = lambda g: (g + 0.5) * stride - 0.5  # noqa: E731 - grid -> input pixels, as the codec
    for j in (range(k) if joints is None else joints):
        ex, ey = xs + off[2 * j, ys, xs], ys + off[2 * j + 1, ys, xs]
        for x0, y0, x1, y1 in zip(to_input(xs), to_input(ys), to_input(ex), to_input(ey)):
            cv2.arrowedLine(out, (round(x0), round(y0)), (round(x1), round(y1)), palette[int(sides[j])], thickness,
                            cv2.LINE_AA, tipLength=0.05)
    return out


def draw_ownership(image: np.ndarray, owner: np.ndarray, pixels: np.ndarray, centers: np.ndarray | None = None,
                   lost: np.ndarray | None = None, stride: int = 4, origin: tuple[int, int] = (0, 0),
                   zoom: int = 1) -> np.ndarray:
    """Who regresses offsets where: each grid pixel tinted with its owner's :func:`person_color`.

    Args:
        image: RGB uint8 input image, already cropped at grid pixel ``origin`` (x, y) and magnified ``zoom`` times
            (``(h * stride * zoom, w * stride * zoom, 3)`` for a crop of ``h x w`` grid pixels).
        owner: ``(H_g, W_g)`` int person index per grid pixel of the whole image, -1 for none (``Layout.owner``).
        pixels: ``(N, 2)`` each person's center pixel (x, y), -1 for none: a white-ringed dot in their colour.
        centers: ``(N, 2)`` natural centers (sub-pixel grid): an arrow to a center pixel that was moved.
        lost: ``(N,)`` bool: these people are crossed out in red at their natural center.
    """
    img = _check_image(image)
    cell = stride * zoom
    ox, oy = origin
    gh, gw = img.shape[0] // cell, img.shape[1] // cell
    own = np.asarray(owner)[oy:oy + gh, ox:ox + gw]
    pix = np.asarray(pixels, np.int64).reshape(-1, 2)
    colours = np.array([person_color(i) for i in range(max(len(pix), 1))], np.float32)
    big = np.repeat(np.repeat(own, cell, 0), cell, 1)
    out = img.astype(np.float32) * 0.35
    out[:big.shape[0], :big.shape[1]] = np.where(big[..., None] >= 0, out[:big.shape[0], :big.shape[1]] * 0.4
                                                 + colours[np.maximum(big, 0)] * 0.6, out[:big.shape[0], :big.shape[1]])
    out = out.astype(np.uint8)
    # outline cells on an owner boundary, so neighbouring squares stay apart
    edge = np.zeros(own.shape, bool)
    for a, b in ((np.s_[:, 1:], np.s_[:, :-1]), (np.s_[1:, :], np.s_[:-1, :])):
        differ = own[a] != own[b]
        edge[a] |= differ
        edge[b] |= differ
    for y, x in zip(*np.nonzero(edge & (own >= 0))):
        cv2.rectangle(out, (int(x * cell), int(y * cell)), (int(x * cell + cell - 1), int(y * cell + cell - 1)),
                      (20, 20, 20), 1)

    def at(g: np.ndarray) -> tuple[int, int]:  # grid position -> panel pixel (cell centres at integer g)
        return int(round((g[0] - ox + 0.5) * cell)), int(round((g[1] - oy + 0.5) * cell))

    for p, g in enumerate(pix):
        if g[0] < 0:
            continue
        if centers is not None and np.isfinite(centers[p]).all() and (g != np.round(centers[p])).any():
            cv2.arrowedLine(out, at(centers[p]), at(g), (255, 255, 255), 1, cv2.LINE_AA, tipLength=0.3)
        cv2.circle(out, at(g), max(cell // 2, 3), (255, 255, 255), -1, cv2.LINE_AA)
        cv2.circle(out, at(g), max(cell // 2 - 2, 2), tuple(int(v) for v in colours[p]), -1, cv2.LINE_AA)
    if lost is not None and centers is not None:
        r = max(cell // 2, 5)
        for p in np.nonzero(np.asarray(lost))[0]:
            if np.isfinite(centers[p]).all():
                x, y = at(centers[p])
                cv2.line(out, (x - r, y - r), (x + r, y + r), (255, 30, 30), 2, cv2.LINE_AA)
                cv2.line(out, (x - r, y + r), (x + r, y - r), (255, 30, 30), 2, cv2.LINE_AA)
    return out


def tile_images(images: Sequence[np.ndarray], cols: int = 4, pad: int = 2) -> np.ndarray:
    """Tile ``(H_i, W_i, 3)`` images into one grid image (cells sized to the largest image, black padding)."""
    if not images:
        raise ValueError("tile_images: no images to tile; expected at least one")
    h = max(im.shape[0] for im in images)
    w = max(im.shape[1] for im in images)
    cols = max(1, min(cols, len(images)))
    rows = -(-len(images) // cols)
    grid = np.zeros((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), np.uint8)
    for i, im in enumerate(images):
        y, x = pad + (i // cols) * (h + pad), pad + (i % cols) * (w + pad)
        grid[y:y + im.shape[0], x:x + im.shape[1]] = im
    return grid
