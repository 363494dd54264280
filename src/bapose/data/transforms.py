"""Training augmentation and evaluation resizing: every coordinate/affine formula of the data pipeline lives here.

Coordinate convention (ARCHITECTURE.md): pixel centres sit at integer coordinates, so an image of width W spans
x in [-0.5, W - 0.5) and its centre is ((W - 1) / 2, (H - 1) / 2). ``cv2.warpAffine`` samples destination pixel
``p`` at source ``M^-1 p`` with the same convention, so the matrix that warps the image also maps keypoints
exactly (``apply_affine``). A horizontal flip of an S-wide image is ``x' = S - 1 - x`` (DEKR's convention; the codec
encodes with the same integer pixel centres).

Training (DEKR's ``RandomAffineTransform`` + ``RandomHorizontalFlip``, folded into ONE ``warpAffine``):
a square crop of side ``c = aug_scale * short_side`` (``scale_type="short"``, DEKR's COCO/CrowdPose setting), centred
on the image centre shifted by ``(dx, dy)``, rotated by ``angle`` and resized to ``input_size``²; optional flip.
Translation unit: DEKR draws ``dx, dy`` uniformly in ``±max_translate * c / 200`` source pixels, i.e.
``max_translate`` is measured in a crop rescaled to 200 px, so the crop centre moves by up to
``max_translate / 200`` of the output side (±102 input pixels at 512 for the default 40), whatever the image size.
``max_translate_px`` (if set) overrides this with a shift in input (output-image) pixels instead.
The affine is our own matrix applied by ``cv2.warpAffine``, not albumentations' ``Affine``: that one keeps the source
size, so reaching the square input would take a second warp, and it clips or drops out-of-frame keypoints unless told
otherwise. Keypoints outside the output frame keep their coordinates and visibility here: only the codec's bounds
check decides they are unusable.
Areas scale by the zoom squared. The optional photometric jitter is albumentations'
``ColorJitter`` (off by default, as in DEKR; it costs ~2 ms at 512).
The *valid* mask says which input pixels show the source image (the rest is the warp's zero padding): DEKR
(``COCOKeypoints.get_mask`` warped with border 0) and MMPose (``BottomupRandomAffine`` on the image mask) give that
padding weight 0 in the heatmap loss rather than training it as background; it is ``None`` when the whole crop lies
inside the source (most zoomed-in draws), so such samples pay nothing for it.

Evaluation: resize with the short side = ``input_size`` (aspect kept), zero-pad right/bottom to multiples of
``size_divisor``; ``input_to_orig`` (2, 3) maps input pixel centres back to original pixel centres.
``resize="dekr"`` reproduces DEKR's test resize instead (``resize_align_multi_scale`` at scale 1, for checkpoints
converted from DEKR): one ``warpAffine`` (bilinear) that scales by ``input_size / short side`` about the integer
image centre ``(int(w/2 + 0.5), int(h/2 + 0.5))``, placed at the centre of an output whose short side is
``input_size`` and long side the resized long side rounded up to a multiple of 64.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from bapose.errors import ConfigError

__all__ = [
    "AffineParams", "EVAL_RESIZES", "EvalTransform", "TrainTransform", "apply_affine", "dekr_resize_matrix",
    "eval_resize_matrix", "flip_keypoints", "invert_affine", "train_affine_matrix", "valid_mask",
]

# evaluation resize rules (``EvalTransform.resize``, data field ``eval_resize``)
EVAL_RESIZES = ("pad", "dekr")


# ---------------------------------------------------------------------------------------------------- affine math
def apply_affine(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Map ``(..., 2)`` points through a (2, 3) affine; returns float64 ``(..., 2)``."""
    pts = np.asarray(points, dtype=np.float64)
    m = np.asarray(matrix, dtype=np.float64)
    return pts @ m[:, :2].T + m[:, 2]


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a (2, 3) affine, as (2, 3)."""
    full = np.vstack([np.asarray(matrix, dtype=np.float64), [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def _compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """``outer ∘ inner`` for (2, 3) affines (apply ``inner`` first)."""
    return outer[:, :2] @ inner + np.array([[0.0, 0.0, outer[0, 2]], [0.0, 0.0, outer[1, 2]]])


def hflip_matrix(width: int) -> np.ndarray:
    """Horizontal mirror of a ``width``-wide image with integer pixel centres: ``x' = width - 1 - x``."""
    return np.array([[-1.0, 0.0, width - 1.0], [0.0, 1.0, 0.0]])


@dataclass(frozen=True)
class AffineParams:
    """One draw of the training augmentation.

    Args:
        scale: crop side / reference side (``>1`` zooms out: people get smaller), DEKR's ``aug_scale``.
        rotation: degrees, counter-clockwise on screen.
        shift: ``(dx, dy)`` of the crop centre in source-image pixels.
        flip: mirror the output horizontally (and swap left/right joints).
    """

    scale: float = 1.0
    rotation: float = 0.0
    shift: tuple[float, float] = (0.0, 0.0)
    flip: bool = False


def train_affine_matrix(height: int, width: int, output_size: int, params: AffineParams,
                        scale_type: str = "short") -> tuple[np.ndarray, float]:
    """The (2, 3) matrix mapping source pixels to the ``output_size``² training crop, and its zoom factor.

    ``M = [flip] · T(out_centre) · R(rotation) · zoom · T(-(src_centre + shift))``; ``zoom = output_size / crop``
    with ``crop = params.scale * (short or long side)``. Areas in the output are ``zoom²`` times the source ones.
    """
    if scale_type not in ("short", "long"):
        raise ConfigError(f"augmentation field 'scale_type' is '{scale_type}'; expected 'short' or 'long'")
    side = min(height, width) if scale_type == "short" else max(height, width)
    zoom = output_size / (params.scale * side)
    cx = (width - 1) / 2.0 + params.shift[0]
    cy = (height - 1) / 2.0 + params.shift[1]
    theta = math.radians(params.rotation)
    # y points down: this rotation turns the picture counter-clockwise on screen for a positive angle (cv2's sign)
    cos, sin = zoom * math.cos(theta), zoom * math.sin(theta)
    linear = np.array([[cos, sin], [-sin, cos]])
    out_c = (output_size - 1) / 2.0
    trans = np.array([out_c, out_c]) - linear @ np.array([cx, cy])
    matrix = np.hstack([linear, trans[:, None]])
    if params.flip:
        matrix = _compose(hflip_matrix(output_size), matrix)
    return matrix, zoom


def valid_mask(height: int, width: int, matrix: np.ndarray, output_size: int) -> np.ndarray | None:
    """``(S, S)`` bool: which pixels of the ``output_size``² warp of a ``height`` x ``width`` image come from it
    (nearest sampling, as the image's own border test: a pixel centre mapped to ``[-0.5, side - 0.5)``), or None when
    all of them do (the four corner pixels map inside; the source rectangle is convex)."""
    last = output_size - 1.0
    corners = apply_affine(np.array([[0.0, 0.0], [last, 0.0], [0.0, last], [last, last]]), invert_affine(matrix))
    if ((corners >= -0.5) & (corners < [width - 0.5, height - 0.5])).all():
        return None
    ones = np.ones((height, width), np.uint8)
    return cv2.warpAffine(ones, matrix, (output_size, output_size), flags=cv2.INTER_NEAREST,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0).view(bool)


def flip_keypoints(keypoints: np.ndarray, flip_index: Sequence[int], width: int) -> np.ndarray:
    """Mirror ``(N, K, 3)`` keypoints of a ``width``-wide image: ``x' = width - 1 - x``, joints permuted by
    ``flip_index`` (left <-> right). Visibility moves with its joint."""
    out = np.asarray(keypoints)[:, list(flip_index)].copy()
    out[..., 0] = width - 1 - out[..., 0]
    return out


def eval_resize_matrix(height: int, width: int, input_size: int, size_divisor: int = 32
                       ) -> tuple[tuple[int, int], tuple[int, int], np.ndarray]:
    """Resize plan for evaluation: short side -> ``input_size``, aspect kept, padded to ``size_divisor``.

    Returns ``(resized_hw, padded_hw, input_to_orig (2, 3))``. ``cv2.resize`` maps destination pixel centre ``i`` to
    source ``(i + 0.5) / s - 0.5`` per axis with ``s = resized / original``, which is what ``input_to_orig`` encodes.
    """
    s = input_size / min(height, width)
    rh, rw = max(1, round(height * s)), max(1, round(width * s))
    ph = -(-rh // size_divisor) * size_divisor
    pw = -(-rw // size_divisor) * size_divisor
    sx, sy = rw / width, rh / height
    input_to_orig = np.array([[1.0 / sx, 0.0, 0.5 / sx - 0.5], [0.0, 1.0 / sy, 0.5 / sy - 0.5]])
    return (rh, rw), (ph, pw), input_to_orig


def dekr_resize_matrix(height: int, width: int, input_size: int) -> tuple[tuple[int, int], np.ndarray, np.ndarray]:
    """DEKR's test resize at scale 1 (``lib/utils/transforms.py``: ``get_multi_scale_size`` + ``get_affine_transform``).

    The short side becomes ``input_size`` rounded up to a multiple of 64, the long side that times the aspect, rounded
    up to a multiple of 64; the uniform scale ``s = out short / short`` is centred on ``(int(w/2 + 0.5),
    int(h/2 + 0.5))``, which lands on the output's centre ``(W'/2, H'/2)``. Both matrices come from
    ``cv2.getAffineTransform`` on float32 point triples, as DEKR computes them (its warp and its mapping back).

    Returns:
        ``(out_hw, orig_to_input (2, 3), input_to_orig (2, 3))``.
    """
    short = int((input_size + 63) // 64 * 64)
    if width < height:
        out_w, out_h = short, int((short / width * height + 63) // 64 * 64)
        src_w = float(width)
    else:
        out_h, out_w = short, int((short / height * width + 63) // 64 * 64)
        src_w = out_w / out_h * height  # DEKR's scale_w * 200: the source width the output width covers
    centre = np.array([int(width / 2.0 + 0.5), int(height / 2.0 + 0.5)], dtype=np.float32)
    # three points: the centre, the point half a source width above it, and the one at right angles (the affine is
    # the similarity fixed by the first two); the same triple in the output
    src = np.zeros((3, 2), np.float32)
    dst = np.zeros((3, 2), np.float32)
    src[0] = centre
    src[1] = centre + np.array([0.0, -0.5 * src_w], np.float32)
    dst[0] = [out_w * 0.5, out_h * 0.5]
    dst[1] = np.array([out_w * 0.5, out_h * 0.5], np.float32) + np.array([0.0, -0.5 * out_w], np.float32)
    for pts in (src, dst):
        d = pts[0] - pts[1]
        pts[2] = pts[1] + np.array([-d[1], d[0]], np.float32)
    forward = cv2.getAffineTransform(src, dst)
    back = cv2.getAffineTransform(dst, src)
    return (out_h, out_w), forward, back


# ---------------------------------------------------------------------------------------------------- transforms
class TrainTransform:
    """Random affine + flip (one ``warpAffine``) and optional colour jitter for a training sample.

    Args:
        input_size: side S of the square network input.
        flip_index: ``DatasetMeta.flip_index`` (length K).
        min_scale, max_scale: range of the crop-size factor (DEKR: 0.75–1.5).
        max_rotation: degrees, uniform in ±max_rotation.
        max_translate: DEKR's shift, in pixels of a 200-px reference crop (see module doc).
        max_translate_px: if given, shift uniformly in ±this many *input* pixels instead of ``max_translate``.
        flip_prob: probability of a horizontal flip.
        scale_type: crop side from the "short" (DEKR COCO/CrowdPose) or "long" image side.
        color_jitter: brightness/contrast/saturation strength for albumentations ``ColorJitter`` (0 = off).
        hue_jitter: hue strength for the same (only used when ``color_jitter > 0``).
    """

    def __init__(self, input_size: int, flip_index: Sequence[int], min_scale: float = 0.75, max_scale: float = 1.5,
                 max_rotation: float = 30.0, max_translate: float = 40.0, max_translate_px: float | None = None,
                 flip_prob: float = 0.5, scale_type: str = "short", color_jitter: float = 0.0,
                 hue_jitter: float = 0.0) -> None:
        if input_size <= 0:
            raise ConfigError(f"augmentation field 'input_size' is {input_size}; expected a positive integer")
        if not 0 < min_scale <= max_scale:
            raise ConfigError(f"augmentation fields 'min_scale'/'max_scale' are {min_scale}/{max_scale}; "
                              "expected 0 < min_scale <= max_scale")
        if not 0.0 <= flip_prob <= 1.0:
            raise ConfigError(f"augmentation field 'flip_prob' is {flip_prob}; expected a probability in [0, 1]")
        if scale_type not in ("short", "long"):
            raise ConfigError(f"augmentation field 'scale_type' is '{scale_type}'; expected 'short' or 'long'")
        self.input_size = int(input_size)
        self.flip_index = [int(i) for i in flip_index]
        self.min_scale, self.max_scale = float(min_scale), float(max_scale)
        self.max_rotation = float(max_rotation)
        self.max_translate = float(max_translate)
        self.max_translate_px = None if max_translate_px is None else float(max_translate_px)
        self.flip_prob = float(flip_prob)
        self.scale_type = scale_type
        self.photometric = None
        if color_jitter > 0:
            import albumentations as A  # only paid for when asked

            self.photometric = A.Compose([A.ColorJitter(brightness=color_jitter, contrast=color_jitter,
                                                        saturation=color_jitter, hue=hue_jitter, p=1.0)])

    def sample(self, height: int, width: int, rng: np.random.Generator) -> AffineParams:
        """Draw one augmentation for a ``height`` x ``width`` source image."""
        scale = rng.uniform(self.min_scale, self.max_scale)
        rotation = rng.uniform(-self.max_rotation, self.max_rotation)
        side = min(height, width) if self.scale_type == "short" else max(height, width)
        if self.max_translate_px is not None:
            # input pixels -> source pixels through the zoom of this draw
            limit = self.max_translate_px * scale * side / self.input_size
        else:
            limit = self.max_translate * scale * side / 200.0
        shift = rng.uniform(-limit, limit, size=2) if limit > 0 else np.zeros(2)
        flip = bool(rng.random() < self.flip_prob)
        return AffineParams(float(scale), float(rotation), (float(shift[0]), float(shift[1])), flip)

    def __call__(self, image: np.ndarray, keypoints: np.ndarray, areas: np.ndarray,
                 ignore_mask: np.ndarray | None = None, rng: np.random.Generator | None = None,
                 params: AffineParams | None = None) -> dict:
        """Augment one sample.

        Args:
            image: (H, W, 3) uint8 RGB.
            keypoints: (N, K, 3) float ``(x, y, v)`` in source pixels.
            areas: (N,) person areas in source pixels².
            ignore_mask: (H, W) bool, True where the loss must ignore (crowds, unlabelled people), or None.
            rng: random source (a fresh one if None); ``params`` fixes the draw instead (tests, visualisation).

        Returns:
            dict with ``image`` (S, S, 3) uint8, ``keypoints`` (N, K, 3) float32, ``areas`` (N,) float32 (scaled by
            the zoom squared), ``ignore_mask`` (S, S) bool or None, ``valid_mask`` (S, S) bool (True where the input
            shows the source image) or None (all of it does), ``matrix`` (2, 3) source -> input, ``params``.
        """
        rng = rng if rng is not None else np.random.default_rng()
        h, w = image.shape[:2]
        params = params if params is not None else self.sample(h, w, rng)
        matrix, zoom = train_affine_matrix(h, w, self.input_size, params, self.scale_type)
        size = (self.input_size, self.input_size)
        out = cv2.warpAffine(image, matrix, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                             borderValue=(0, 0, 0))
        mask = None
        if ignore_mask is not None:
            # nearest keeps the mask binary; outside the source image nothing is ignored (black padding = background)
            mask = cv2.warpAffine(ignore_mask.astype(np.uint8), matrix, size, flags=cv2.INTER_NEAREST,
                                  borderMode=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)
        valid = valid_mask(h, w, matrix, self.input_size)
        kpts = np.asarray(keypoints, dtype=np.float64).copy()
        if kpts.size:
            kpts[..., :2] = apply_affine(kpts[..., :2], matrix)  # flip already inside the matrix
            if params.flip:
                kpts = kpts[:, self.flip_index]  # the mirrored left wrist is the new right wrist
        if self.photometric is not None:
            self.photometric.set_random_state(rng, random.Random(int(rng.integers(2**31))))
            out = self.photometric(image=out)["image"]
        return {"image": out, "keypoints": kpts.astype(np.float32),
                "areas": (np.asarray(areas, dtype=np.float64) * zoom * zoom).astype(np.float32),
                "ignore_mask": mask, "valid_mask": valid, "matrix": matrix, "params": params}


class EvalTransform:
    """Validation/test resize: short side = ``input_size``, both sides zero-padded to ``size_divisor`` multiples.

    Args:
        input_size: target short side.
        size_divisor: both output sides are multiples of it (the network's total stride, 32).
        resize: ``"pad"`` (this) or ``"dekr"``: DEKR's centred warp (:func:`dekr_resize_matrix`; sides multiples
            of 64, ``size_divisor`` unused). ``None``: ``"pad"``.
    """

    def __init__(self, input_size: int, size_divisor: int = 32, resize: str | None = None) -> None:
        if input_size <= 0 or size_divisor <= 0:
            raise ConfigError(f"eval transform: 'input_size' {input_size} and 'size_divisor' {size_divisor} must be "
                              "positive")
        if resize not in (None, *EVAL_RESIZES):
            raise ConfigError(f"data field 'eval_resize' is {resize!r}; expected one of {list(EVAL_RESIZES)} or null")
        self.input_size = int(input_size)
        self.size_divisor = int(size_divisor)
        self.resize = resize or "pad"

    def __call__(self, image: np.ndarray) -> dict:
        """(H, W, 3) uint8 -> dict ``image`` (Hp, Wp, 3) uint8, ``input_to_orig`` (2, 3) float64,
        ``orig_size`` (H, W), ``valid_size`` (h, w) of the resized content before padding (``dekr``: the whole
        output, whose content is centred)."""
        h, w = image.shape[:2]
        if self.resize == "dekr":
            (oh, ow), forward, back = dekr_resize_matrix(h, w, self.input_size)
            # DEKR: cv2.warpAffine with its defaults (bilinear, constant 0 border)
            out = cv2.warpAffine(image, forward, (ow, oh))
            return {"image": out, "input_to_orig": back.astype(np.float64), "orig_size": (h, w),
                    "valid_size": (oh, ow)}
        (rh, rw), (ph, pw), input_to_orig = eval_resize_matrix(h, w, self.input_size, self.size_divisor)
        # INTER_AREA when shrinking avoids aliasing; linear when enlarging (both use cv2's half-pixel centres)
        interp = cv2.INTER_AREA if rh < h else cv2.INTER_LINEAR
        resized = cv2.resize(image, (rw, rh), interpolation=interp)
        out = np.zeros((ph, pw, image.shape[2]), dtype=image.dtype)
        out[:rh, :rw] = resized
        return {"image": out, "input_to_orig": input_to_orig, "orig_size": (h, w), "valid_size": (rh, rw)}
