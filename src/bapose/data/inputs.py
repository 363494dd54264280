"""Images outside a dataset json: decoding a file that may not be an image, walking a folder tree or a glob, video
frames, and a real photo for checks (``bapose-predict``, ``bapose-export``).

The dataset's own reader (:func:`bapose.data.images.read_image`) raises on a bad file; here a file that cannot be
decoded is reported and skipped, as a user's folder of photos holds other files too. Both orient an image by the same
rule (:func:`bapose.data.images.orient_image`).
"""

from __future__ import annotations

import glob
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from bapose.data.images import exif_orientation, orient_image
from bapose.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".jp2")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
_GLOB_CHARS = "*?["


@dataclass
class Frame:
    """One image to predict on: its name (path relative to the input folder, or ``<video>#<frame>``), RGB uint8
    ``(H, W, 3)``, and its position in the input order (the running image id without an annotation file)."""

    name: str
    image: np.ndarray
    index: int


def try_read_image(path: Path, size: tuple[int, int] | None = None) -> np.ndarray | None:
    """RGB uint8 ``(H, W, 3)``, or None when the file cannot be decoded (corrupt or not an image).

    Oriented as the datasets orient it: ``size``, the ``(height, width)`` an annotation file declares, keeps the
    stored pixels or applies the EXIF orientation, whichever it matches, so results.json is in the frame of the
    annotations; without one the image as shown (EXIF applied)."""
    data = np.fromfile(str(path), dtype=np.uint8)  # not cv2.imread: it cannot open non-ASCII paths everywhere
    image = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION) if data.size else None
    if image is None or image.ndim != 3 or image.size == 0:
        return None
    rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return orient_image(rgb, lambda: exif_orientation(data.tobytes()), size, default="exif")


def is_video(path: Path) -> bool:
    """``path`` is a file with a video extension."""
    return path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS


def _why_skipped(path: Path) -> str:
    if path.suffix.lower() in VIDEO_EXTENSIONS:
        return "a video: give it as input= on its own"
    return f"not an image file, extension '{path.suffix}'"


def list_images(folder: Path, recursive: bool = True) -> tuple[list[Path], dict[Path, str]]:
    """Image files under a folder, sorted by relative path (hidden files and folders left out).

    Returns:
        ``(images, skipped)``: the image paths, and every other file with the reason it is skipped.
    """
    files, skipped = [], {}
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    for p in sorted(candidates, key=lambda q: q.relative_to(folder).as_posix()):
        rel = p.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or p.is_dir():
            continue
        if p.suffix.lower() in IMAGE_EXTENSIONS:
            files.append(p)
        else:
            skipped[p] = _why_skipped(p)
    return files, skipped


def _resolve_glob(text: str, recursive: bool) -> tuple[Path, list[Path], dict[Path, str]]:
    parts = Path(text).parts
    fixed = next((i for i, part in enumerate(parts) if any(c in part for c in _GLOB_CHARS)), len(parts))
    root = Path(*parts[:fixed]) if fixed else Path(".")
    images, skipped = [], {}
    for match in sorted(glob.glob(text, recursive=True)):
        p = Path(match)
        if p.is_dir():
            sub, sub_skipped = list_images(p, recursive)
            images += sub
            skipped.update(sub_skipped)
        elif p.suffix.lower() in IMAGE_EXTENSIONS:
            images.append(p)
        else:
            skipped[p] = _why_skipped(p)
    if not images:
        raise DataError(f"field 'input': the pattern '{text}' matches no image file")
    return root, sorted(dict.fromkeys(images), key=lambda q: q.relative_to(root).as_posix()), skipped


def resolve_input(text: str, recursive: bool = True) -> tuple[Path, list[Path], dict[Path, str]]:
    """``input=`` -> ``(root, images, skipped)``: a folder (walked), one image, or a glob. Names are kept relative
    to ``root`` (the folder, the image's folder, or the glob's folders before its first wildcard)."""
    if any(c in text for c in _GLOB_CHARS) and not Path(text).exists():
        return _resolve_glob(text, recursive)
    source = Path(text)
    if not source.exists():
        raise DataError(f"field 'input': '{source}' does not exist; expected an image, a folder of images, a glob "
                        "or a video")
    if source.is_dir():
        images, skipped = list_images(source, recursive)
        if not images:
            where = "under" if recursive else "in"
            raise DataError(f"field 'input': no image files {where} folder '{source}'"
                            + ("" if recursive else " (recursive=false: subfolders not searched)"))
        return source, images, skipped
    if source.suffix.lower() in IMAGE_EXTENSIONS:
        return source.parent, [source], {}
    raise DataError(f"field 'input': '{source}' is neither an image ({', '.join(IMAGE_EXTENSIONS)}), a video "
                    f"({', '.join(VIDEO_EXTENSIONS)}), a folder nor a glob")


def iter_images(paths: Sequence[Path], root: Path | None = None, skipped: dict[Path, str] | None = None,
                size_of: Callable[[str], tuple[int, int] | None] | None = None) -> Iterator[Frame]:
    """Decode images one at a time (``Frame.name`` relative to ``root``); a file that cannot be decoded is recorded
    in ``skipped`` (or warned about when no dict is given) and left out. ``size_of(name)``: the declared
    ``(height, width)`` that orients an image (:func:`try_read_image`)."""
    n = 0
    for p in paths:
        name = p.relative_to(root).as_posix() if root is not None else p.name
        image = try_read_image(p, size_of(name) if size_of is not None else None)
        if image is None:
            reason = "cannot be decoded as an image (corrupt or truncated?)"
            if skipped is None:
                warnings.warn(f"bapose-predict: skipping '{p}': {reason}", stacklevel=2)
            else:
                skipped[p] = reason
            continue
        yield Frame(name, image, n)
        n += 1


def iter_video(path: Path, capture: cv2.VideoCapture) -> Iterator[Frame]:
    """The frames of an open video, named ``<file name>#<frame index>``."""
    i = 0
    while True:
        ok, bgr = capture.read()
        if not ok:
            return
        yield Frame(f"{path.name}#{i}", cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), i)
        i += 1


def generated_image(height: int = 480, width: int = 640, seed: int = 0) -> np.ndarray:
    """A deterministic RGB uint8 test picture with edges, flat areas and texture (not a constant: parity on a
    constant image would hide errors in the sampling of the adaptive convs)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack([xx / width, yy / height, 0.5 + 0.5 * np.sin(xx / 23 + yy / 31)], -1) * 255
    img = img.astype(np.uint8)
    for _ in range(12):
        c = tuple(int(v) for v in rng.integers(0, 256, 3))
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        cv2.circle(img, (x, y), int(rng.integers(10, 80)), c, -1)
        cv2.line(img, (x, y), (int(rng.integers(0, width)), int(rng.integers(0, height))), c, 3)
    noise = rng.normal(0, 8, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def default_image() -> tuple[np.ndarray, str]:
    """A real photo for checks: a COCO sample image from ``$BAPOSE_SHARED/data`` or ``../shared/data`` beside the
    checkout; when neither exists, a generated picture (:func:`generated_image`). Returns ``(image, source)``."""
    repo = Path(__file__).resolve().parents[3]
    roots = [Path(os.environ["BAPOSE_SHARED"])] if os.environ.get("BAPOSE_SHARED") else []
    roots.append(repo.parent / "shared")
    for root in roots:
        for p in sorted((root / "data" / "coco_sample").glob("*.jpg")):
            image = try_read_image(p)
            if image is not None:
                return image, str(p)
    return generated_image(), "generated"
