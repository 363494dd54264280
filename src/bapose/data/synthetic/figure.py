"""One person: a sampled front-facing pose, placed in the image, as a list of coloured drawing primitives.

How a figure looks is described in :mod:`bapose.data.synthetic`; :func:`make_figure` is the entry, the rest are its
steps (pose in body units, colours, primitives back to front).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np

from bapose.data.metadata import COCO_KEYPOINTS
from bapose.data.synthetic.draw import fixed

# Named points every figure carries: COCO-17, then CrowdPose's head top and neck. A keypoint set picks by name.
ANATOMY = COCO_KEYPOINTS + ("head", "neck")
JOINT = {name: i for i, name in enumerate(ANATOMY)}

_SKIN = np.array([[255, 224, 196], [234, 192, 160], [198, 145, 105], [160, 105, 70], [110, 70, 45], [80, 52, 36]],
                 dtype=np.float64)


@dataclass(eq=False)
class Figure:
    """One drawn person: named points (19, 2) in image pixels, drawing primitives, depth key."""

    points: np.ndarray
    prims: list[tuple]
    depth: float
    mask: np.ndarray | None = None  # (H, W) bool, the whole in-image body


class _Limb(NamedTuple):
    """A two-segment limb of one side and how its pose is drawn.

    Angles: 0 hangs straight down, pi/2 points outward (towards the person's own side), pi points up; the second
    segment turns by ``bend`` from the first.
    """

    joints: tuple[str, str, str]  # root, middle, end joint (without the side)
    fold_prob: float  # chance of the folded pose
    folded: tuple[tuple[float, float], tuple[float, float]]  # (root angle, bend) ranges of the folded pose
    usual: tuple[tuple[float, float], tuple[float, float]]  # (root angle, bend) ranges otherwise
    segments: tuple[tuple[float, float], tuple[float, float]]  # per segment: full length, least fraction of it


_LIMBS = (
    # folded: hands on hips / arms crossed, the forearm bends back towards the body
    _Limb(("shoulder", "elbow", "wrist"), 0.15, ((0.2, 0.9), (-2.6, -1.4)), ((-0.25, 2.9), (-1.0, 2.0)),
          ((0.165, 0.65), (0.15, 0.65))),
    # folded: a raised knee
    _Limb(("hip", "knee", "ankle"), 0.12, ((0.6, 1.5), (-1.8, -0.8)), ((-0.15, 0.55), (-0.45, 0.3)),
          ((0.235, 0.8), (0.235, 0.8))),
)


def _rot(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s], [s, c]])


def _hsv(rng: np.random.Generator, hue: float, sat: tuple[float, float], val: tuple[float, float]) -> np.ndarray:
    """One RGB colour (3,) float in [0, 255] from a hue in [0, 1) and saturation/value ranges."""
    hsv = np.uint8([[[int(hue % 1.0 * 180), int(rng.uniform(*sat) * 255), int(rng.uniform(*val) * 255)]]])
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float64)


def _limb_end(origin: np.ndarray, s: int, angle: float, length: float, lean: float) -> np.ndarray:
    """The end of a segment of ``length`` from ``origin`` at ``angle`` (see :class:`_Limb`) on side ``s`` (+1 left,
    -1 right) of a body leaning by ``lean``."""
    return origin + length * _rot(lean) @ np.array([s * np.sin(angle), -np.cos(angle)])


def _pose_limb(rng: np.random.Generator, p: np.ndarray, limb: _Limb, s: int, side: str, lean: float) -> None:
    """Sample ``limb``'s pose on ``side`` and write its middle and end joints into ``p`` (root already placed)."""
    angle_range, bend_range = limb.folded if rng.random() < limb.fold_prob else limb.usual
    angle, bend = rng.uniform(*angle_range), rng.uniform(*bend_range)
    root, middle, end = (JOINT[f"{side}_{joint}"] for joint in limb.joints)
    (upper, upper_least), (lower, lower_least) = limb.segments
    p[middle] = _limb_end(p[root], s, angle, upper * rng.uniform(upper_least, 1.0), lean)
    p[end] = _limb_end(p[middle], s, angle + bend, lower * rng.uniform(lower_least, 1.0), lean)


def _sample_pose(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
    """A front-facing pose in body units (height ~1, y up, pelvis at the origin).

    Returns:
        points (19, 2) in ``ANATOMY`` order, head centre (2,), head radius. The person's left is +x (image right).
    """
    p = np.zeros((len(ANATOMY), 2))
    turn = rng.uniform(0.65, 1.0)  # body yaw shortens the shoulder and hip line
    lean = rng.normal(0.0, 0.1)
    up_t = _rot(lean) @ np.array([0.0, 1.0])
    side_t = _rot(lean) @ np.array([1.0, 0.0])
    neck_base = up_t * 0.29
    for s, sho, hip in ((1, "left_shoulder", "left_hip"), (-1, "right_shoulder", "right_hip")):
        p[JOINT[sho]] = neck_base + s * side_t * 0.105 * turn
        p[JOINT[hip]] = s * _rot(lean * 0.3) @ np.array([0.075 * turn, 0.0])
    p[JOINT["neck"]] = neck_base + up_t * 0.03
    tilt = lean + rng.normal(0.0, 0.12)
    head_r = 0.062
    head_c = neck_base + _rot(tilt) @ np.array([0.0, 0.115])
    p[JOINT["head"]] = head_c + _rot(tilt) @ np.array([0.0, head_r])
    # face points on a sphere: azimuth 0 faces the camera; yaw turns the face so the nose is off-centre
    yaw = rng.uniform(-0.3, 0.3)
    for name, az, el in (("nose", 0.0, -0.3), ("left_eye", 0.5, 0.12), ("right_eye", -0.5, 0.12),
                         ("left_ear", 1.35, 0.02), ("right_ear", -1.35, 0.02)):
        local = head_r * np.array([np.cos(el) * np.sin(az + yaw), np.sin(el)])
        p[JOINT[name]] = head_c + _rot(tilt) @ local
    for s, side in ((1, "left"), (-1, "right")):
        for limb in _LIMBS:  # the arm, then the leg
            _pose_limb(rng, p, limb, s, side, lean)
    return p, head_c, head_r


def _capsule(a: np.ndarray, b: np.ndarray, wa: float, wb: float) -> list[tuple]:
    """A tapered limb from ``a`` (width ``wa``) to ``b`` (width ``wb``): a quad and two round ends."""
    d = b - a
    n = np.array([-d[1], d[0]]) / max(float(np.hypot(*d)), 1e-6)
    quad = np.stack([a + n * wa / 2, b + n * wb / 2, b - n * wb / 2, a - n * wa / 2])
    return [("poly", quad), ("circle", a, wa / 2), ("circle", b, wb / 2)]


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.hypot(*v)), 1e-6)


def _palette(rng: np.random.Generator) -> dict:
    """A person's colours: left/right families are opposite hues; which side gets which is a coin flip (see
    :mod:`bapose.data.synthetic`). ``arm`` and ``leg`` map a side to its colour."""
    hue = rng.random()
    sides = [hue, hue + 0.5 + rng.uniform(-0.08, 0.08)]
    if rng.random() < 0.5:
        sides.reverse()
    arm = {s: _hsv(rng, sides[i], (0.55, 1.0), (0.6, 1.0)) for i, s in enumerate(("left", "right"))}
    leg = {s: arm[s] * rng.uniform(0.55, 0.8) for s in ("left", "right")}
    torso = _hsv(rng, rng.random(), (0.0, 0.8), (0.3, 1.0))
    skin = _SKIN[rng.integers(len(_SKIN))] * rng.uniform(0.9, 1.05)
    hair = _hsv(rng, rng.random(), (0.2, 0.8), (0.05, 0.45))
    shoe = _hsv(rng, rng.random(), (0.0, 0.5), (0.05, 0.35))
    return {"arm": arm, "leg": leg, "torso": torso, "skin": skin, "hair": hair, "shoe": shoe}


def _body_prims(P: dict[str, np.ndarray], head_c: np.ndarray, head_r: float, h: float, col: dict,
                detail: bool) -> list[tuple]:
    """The drawing primitives of a figure of height ``h`` px with named points ``P``, back to front, in fixed-point
    form with their colour last."""
    prims: list[tuple] = []

    def add(shapes: list[tuple], colour: np.ndarray) -> None:
        rgb = tuple(float(c) for c in np.clip(colour, 0, 255))
        prims.extend(fixed(s) + (rgb,) for s in shapes)

    for side in ("left", "right"):
        add(_capsule(P[f"{side}_hip"], P[f"{side}_knee"], 0.08 * h, 0.065 * h), col["leg"][side])
        add(_capsule(P[f"{side}_knee"], P[f"{side}_ankle"], 0.065 * h, 0.05 * h), col["leg"][side])
        if detail:
            add([("circle", P[f"{side}_knee"], 0.024 * h)], col["leg"][side] * 0.55)
        # shoe: an ellipse just below the ankle, toes turned outward
        s = 1 if side == "left" else -1
        down = _unit(P[f"{side}_ankle"] - P[f"{side}_knee"])
        out = np.array([-down[1], down[0]]) * s * (1 if down[1] >= 0 else -1)
        add([("ellipse", P[f"{side}_ankle"] + down * 0.02 * h + out * 0.02 * h, (0.05 * h, 0.025 * h),
              np.degrees(np.arctan2(out[1], out[0])))], col["shoe"])
    mid_sho = (P["left_shoulder"] + P["right_shoulder"]) / 2
    add(_capsule(mid_sho, P["neck"] + (P["neck"] - mid_sho) * 0.5, 0.05 * h, 0.045 * h), col["skin"] * 0.9)
    # torso: shoulders and hips pushed outward so the joints sit where limbs meet the body
    out_s = _unit(P["left_shoulder"] - P["right_shoulder"])
    out_h = _unit(P["left_hip"] - P["right_hip"])
    torso = np.stack([P["left_shoulder"] + out_s * 0.025 * h, P["right_shoulder"] - out_s * 0.025 * h,
                      P["right_hip"] - out_h * 0.035 * h, P["left_hip"] + out_h * 0.035 * h])
    add([("poly", torso)], col["torso"])
    if detail:  # belt: marks the hip line
        add(_capsule(P["right_hip"], P["left_hip"], 0.025 * h, 0.025 * h), col["torso"] * 0.45)
    for side in ("left", "right"):
        add(_capsule(P[f"{side}_shoulder"], P[f"{side}_elbow"], 0.06 * h, 0.05 * h), col["arm"][side])
        add(_capsule(P[f"{side}_elbow"], P[f"{side}_wrist"], 0.05 * h, 0.04 * h), col["arm"][side] * 0.9)
        if detail:
            add([("circle", P[f"{side}_elbow"], 0.02 * h)], col["arm"][side] * 0.5)
        fore = _unit(P[f"{side}_wrist"] - P[f"{side}_elbow"])
        add([("circle", P[f"{side}_wrist"] + fore * 0.022 * h, 0.03 * h)], col["skin"])
    r_px = head_r * h
    add([("circle", P["left_ear"], 0.22 * r_px), ("circle", P["right_ear"], 0.22 * r_px)], col["skin"] * 0.85)
    add([("circle", head_c, r_px)], col["skin"])
    # hair: the upper half of the head, tilted with it, so "up" and the head top are visible
    up = P["head"] - head_c
    base = np.arctan2(up[1], up[0])
    arc = base + np.linspace(-1.25, 1.25, 16)  # a cap cut ~0.3 r above the centre: the eyes stay on skin
    add([("poly", head_c + 1.04 * r_px * np.stack([np.cos(arc), np.sin(arc)], 1))], col["hair"])
    if detail:
        add([("circle", P["left_eye"], 0.13 * r_px), ("circle", P["right_eye"], 0.13 * r_px)], col["hair"] * 0.3)
        add([("circle", P["nose"], 0.14 * r_px)], col["skin"] * 0.6)
    return prims


def make_figure(rng: np.random.Generator, height_px: float, centre_x: float, foot_y: float,
                detail: bool = True) -> Figure:
    """Sample a pose, place it in the image and list its drawing primitives, back to front."""
    pts, head_c, head_r = _sample_pose(rng)
    # mostly upright, sometimes strongly tilted (bending, dancing, falling)
    angle = rng.normal(0.0, 0.1) if rng.random() < 0.9 else rng.uniform(-0.8, 0.8)
    r = _rot(angle)
    pts, head_c = pts @ r.T, head_c @ r.T
    lowest = min(pts[:, 1].min(), head_c[1] - head_r)
    to_img = np.array([1.0, -1.0]) * height_px
    offset = np.array([centre_x, foot_y + lowest * height_px])
    pts, head_c = pts * to_img + offset, head_c * to_img + offset
    P = {name: pts[i] for name, i in JOINT.items()}
    prims = _body_prims(P, head_c, head_r, height_px, _palette(rng), detail)
    return Figure(points=pts, prims=prims, depth=float(foot_y))
