"""Image files as RGB arrays, in the orientation of their annotations (EXIF), with truncated JPEGs caught.

A training image, its masks and its keypoints must share one frame. COCO-style annotations are drawn on the stored
pixels (DEKR decodes with ``IMREAD_IGNORE_ORIENTATION``), while a photo's EXIF Orientation tag asks viewers (and
``cv2.imread`` by default) to turn it: :func:`orient_image` lets the size the json declares decide.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import cv2
import numpy as np

from bapose.errors import ConfigError, DataError, where

__all__ = ["IMAGE_FRAMES", "exif_orientation", "orient_image", "read_image"]

_JPEG_TAIL = 256  # bytes at the end of a JPEG searched for its end-of-image marker
_IMREAD_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)

# EXIF orientation (tag 0x0112) -> the array operation that shows the stored pixels upright (tags 5-8 transpose)
_ORIENT = {
    2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1), 7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}
IMAGE_FRAMES = ("stored", "exif")  # read_image(default=...): the frame taken when no declared size decides


def exif_orientation(source: str | os.PathLike | bytes) -> int:
    """The EXIF Orientation tag (1-8) of an image file (a path or its bytes); 1 when it has none or cannot say."""
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else os.fspath(source)) as im:
            tag = int(im.getexif().get(0x0112, 1))
    except (OSError, ValueError, TypeError):
        return 1
    return tag if tag in _ORIENT else 1


def orient_image(raw: np.ndarray, orientation: Callable[[], int], size: tuple[int, int] | None = None,
                 default: str = "stored") -> np.ndarray:
    """The orientation of an image its annotations were made in, from the stored pixels ``raw (H, W, 3)``.

    Annotations (and the masks drawn from them) live in the frame whose size the json declares: ``size`` =
    ``(height, width)`` equal to the stored pixels' keeps them as stored (COCO's frame; DEKR decodes with
    ``IMREAD_IGNORE_ORIENTATION``); equal only to the EXIF-oriented size (a 90-degree tag) applies the tag, so
    image, masks and keypoints agree either way. A size that fits both (no tag, a 180-degree or mirror tag, a square
    image) keeps the stored pixels; one that fits neither keeps them too (the caller reports the mismatch). Without
    a declared size: ``default`` ``stored`` (datasets, as DEKR) or ``exif`` (the image as shown: ``bapose-predict``
    without an annotation file). ``orientation()`` reads the tag; it is called only when it can matter.
    """
    if default not in IMAGE_FRAMES:
        raise ConfigError(f"read_image: default frame '{default}'; expected one of {list(IMAGE_FRAMES)}")
    stored = tuple(raw.shape[:2])
    if (size is None and default == "stored") or (size is not None and tuple(size) == stored):
        return raw
    tag = orientation()
    if tag == 1:
        return raw
    turned = np.ascontiguousarray(_ORIENT[tag](raw))
    if size is None or tuple(turned.shape[:2]) == tuple(size):
        return turned
    return raw


def read_image(path: str | os.PathLike, size: tuple[int, int] | None = None, default: str = "stored") -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB; a missing, empty or undecodable file raises DataError naming it.

    ``size``: the ``(height, width)`` its annotation file declares, which decides whether the EXIF orientation is
    applied (:func:`orient_image`; without it, ``default`` decides).
    """
    path = os.fspath(path)
    declared = size
    try:
        size = os.path.getsize(path)
    except OSError as err:
        raise DataError(f"{where(path)}: image cannot be read ({err.strerror}); expected an image file") from None
    if size == 0:
        raise DataError(f"{where(path)}: image file is empty (0 bytes); expected a JPEG/PNG image")
    # colour decoding drops alpha and expands grey so every sample has 3 channels; IMREAD_COLOR_RGB (OpenCV >= 4.10)
    # lets libjpeg emit RGB directly: the same pixels as IMREAD_COLOR + BGR2RGB, without the extra pass
    # the stored pixels: the orientation is decided below, against the annotation's declared size
    flags = (_IMREAD_RGB if _IMREAD_RGB is not None else cv2.IMREAD_COLOR) | cv2.IMREAD_IGNORE_ORIENTATION
    image = cv2.imread(path, flags)
    if image is None or image.size == 0:
        raise DataError(f"{where(path)}: image is corrupt or not in a format OpenCV can decode "
                        f"({size} bytes); expected a JPEG/PNG image")
    if _jpeg_truncated(path, size):
        raise DataError(f"{where(path)}: JPEG is truncated ({size} bytes, no end-of-image marker; the decoder would "
                        "fill the missing rows grey); expected a complete JPEG/PNG image")
    if _IMREAD_RGB is None:
        cv2.cvtColor(image, cv2.COLOR_BGR2RGB, dst=image)
    return orient_image(image, lambda: exif_orientation(path), declared, default)


def _jpeg_truncated(path: str, size: int) -> bool:
    """Whether a JPEG file lost its end (an interrupted copy or download).

    libjpeg, hence ``cv2.imread``, decodes such a file without an error and fills the missing rows grey, so training
    would silently learn from half images. Entropy-coded JPEG data never holds the bytes FF D9 (a data FF is stuffed
    as FF 00), so an end-of-image marker in the last bytes means the file is whole. Without one the file is either
    truncated or followed by a large trailer (e.g. a motion photo's video); PIL's decoder, which does raise on missing
    data, decides those rare cases. PNG and the other formats already fail in ``cv2.imread`` when truncated.
    """
    with open(path, "rb") as f:
        if f.read(2) != b"\xff\xd8":  # not a JPEG
            return False
        f.seek(max(0, size - _JPEG_TAIL))
        if b"\xff\xd9" in f.read():
            return False
    try:
        from PIL import Image

        with Image.open(path) as im:
            im.load()
    except ImportError:  # pragma: no cover - pillow ships with torchvision
        return True
    except OSError:  # "image file is truncated" and friends
        return True
    return False
