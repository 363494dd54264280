"""Pixels: cv2 drawing of a figure's primitives (colour or mask) and the scene behind the people."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

_SHIFT = 4  # cv2 fixed-point bits: sub-pixel drawing, pixel centres at integer coordinates (COCO convention)


def fixed(shape: tuple) -> tuple:
    """A primitive in cv2's fixed-point form, converted once (each figure is drawn twice: mask and colour)."""
    k, scale = shape[0], float(1 << _SHIFT)
    if k == "poly":
        return (k, np.round(np.asarray(shape[1]) * scale).astype(np.int32).reshape(-1, 1, 2))
    centre = (int(round(float(shape[1][0]) * scale)), int(round(float(shape[1][1]) * scale)))
    if k == "circle":
        return (k, centre, int(round(max(float(shape[2]), 0.5) * scale)))
    axes = tuple(int(round(max(float(a), 0.5) * scale)) for a in shape[2])
    return (k, centre, axes, float(shape[3]))  # ellipse: centre, semi-axes, angle in degrees


def draw(canvas: np.ndarray, prims: list[tuple], colour: Any = None, aa: bool = True) -> None:
    """Draw fixed-point primitives in order; ``colour`` overrides each primitive's own colour (masks)."""
    line = cv2.LINE_AA if aa else cv2.LINE_8
    for prim in prims:
        kind, col = prim[0], (prim[-1] if colour is None else colour)
        if kind == "poly":
            cv2.fillPoly(canvas, [prim[1]], col, line, _SHIFT)
        elif kind == "circle":
            cv2.circle(canvas, prim[1], prim[2], col, -1, line, _SHIFT)
        else:
            cv2.ellipse(canvas, prim[1], prim[2], prim[3], 0, 360, col, -1, line, _SHIFT)


def body_mask(prims: list[tuple], shape: tuple[int, int]) -> np.ndarray:
    """The (H, W) bool pixels the primitives cover (no anti-aliasing)."""
    m = np.zeros(shape, np.uint8)
    draw(m, prims, colour=1, aa=False)
    return m.astype(bool)


# -------------------------------------------------------------------------------------------------- backgrounds
def background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A textured, cluttered, noisy scene (H, W, 3) float32 RGB in about [0, 255]: smooth colour field, floor/wall
    split, blobs, bars."""
    small = rng.uniform(30, 225, (int(rng.integers(2, 5)), int(rng.integers(2, 5)), 3)).astype(np.float32)
    # pull towards grey: scenes are mostly duller than clothes, as in real photos (but not always)
    grey = small.mean(axis=2, keepdims=True)
    small = grey + (small - grey) * np.float32(rng.uniform(0.2, 0.9))
    img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    if rng.random() < 0.6:  # a floor below a horizon line
        horizon = int(h * rng.uniform(0.3, 0.6))
        img[horizon:] = img[horizon:] * np.float32(rng.uniform(0.5, 0.9)) + rng.uniform(0, 60, 3).astype(np.float32)
    # mid-frequency texture: upsampled noise, in colour
    cell = int(rng.integers(4, 16))
    tex = rng.standard_normal((max(h // cell, 2), max(w // cell, 2), 1), dtype=np.float32)
    tex = tex * np.float32(1.0) + rng.standard_normal(tex.shape[:2] + (3,), dtype=np.float32) * np.float32(0.3)
    img += cv2.resize(tex, (w, h), interpolation=cv2.INTER_LINEAR) * np.float32(rng.uniform(4, 18))
    for _ in range(int(rng.integers(3, 12))):  # clutter: rectangles, ellipses and thin bars (poles, furniture)
        col = tuple(float(c) for c in rng.uniform(0, 255, 3))
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        kind = rng.integers(3)
        s = min(h, w)
        if kind == 0:
            x1, y1 = x + rng.uniform(0.05, 0.4) * s, y + rng.uniform(0.05, 0.4) * s
            cv2.rectangle(img, (int(x), int(y)), (int(x1), int(y1)), col, -1, cv2.LINE_AA)
        elif kind == 1:
            cv2.ellipse(img, (int(x), int(y)), (int(rng.uniform(0.02, 0.2) * s), int(rng.uniform(0.02, 0.2) * s)),
                        float(rng.uniform(0, 180)), 0, 360, col, -1, cv2.LINE_AA)
        else:
            a = rng.uniform(0, np.pi)
            length = rng.uniform(0.1, 0.6) * s
            cv2.line(img, (int(x), int(y)), (int(x + np.cos(a) * length), int(y + np.sin(a) * length)), col,
                     int(rng.integers(1, max(2, s // 40))), cv2.LINE_AA)
    return img
