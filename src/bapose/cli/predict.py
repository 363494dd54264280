"""``bapose-predict``: poses drawn on images / a video and one COCO-format results json, from a checkpoint.

``predict(cfg)`` is a plain function; ``main()`` the thin Hydra entry point over ``conf/predict.yaml``::

    bapose-predict ckpt_path=outputs/train/runs/<stamp>/checkpoints/last.ckpt input=photos/
    bapose-predict ckpt_path=... input=clip.mp4 flip=true scales=[0.5,1,2] device=cuda
    bapose-predict ckpt_path=... input=/data/coco/val2017 ann_file=/data/coco/person_keypoints_val2017.json
    bapose-predict ckpt_path=... 'input=/data/art/**/*.png' recursive=false
    bapose-score /data/coco/person_keypoints_val2017.json outputs/predict/runs/<stamp>/results.json

The checkpoint is loaded with ``torch.load(weights_only=True)``; the net is rebuilt from the model config, K and
dataset name it carries. Images are resized as evaluation does (short side = ``input_size``, padded to multiples of
32), run in batches of images of the same padded size (flip / multi-scale optional) and decoded by the codec; poses
are mapped back to original pixels. A batch never pads an image beyond its own size: D-WASP's image-pool branch
averages over the whole input, so padding added for a larger neighbour would change this image's poses.

A folder is walked recursively (``recursive=false``: its top level only); a glob (``*``, ``?``, ``[..]``, ``**``)
selects files. Files that are not images, images that cannot be decoded and images missing from ``ann_file`` are
named in one summary line at the end.

Writes into ``output_dir``: the drawn images under ``draw_dir`` at their path relative to the input folder (so
same-named files of different subfolders never overwrite each other) or ``<video stem>_poses.mp4``, ``results.json``
(COCO results: ``image_id``, ``category_id``, ``keypoints``, ``score``) and, without ``ann_file``, ``images.json``
(``{"images": [{"id", "file_name", "width", "height"}]}``: which running id is which file (its relative path) or
video frame).
"""

from __future__ import annotations

import glob
import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

import bapose.utils.logging as blog  # registers the ${bapose.*} resolvers before Hydra composes
from bapose.data.images import exif_orientation, orient_image
from bapose.data.transforms import EvalTransform, eval_resize_matrix
from bapose.errors import ConfigError, DataError, exit_on_error
from bapose.evaluation import to_coco_results
from bapose.inference import predict as run_inference
from bapose.inference import to_original
from bapose.loading import LoadedModel, load_model, read_json
from bapose.paths import config_dir
from bapose.vis import draw_poses

log = logging.getLogger("bapose")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".jp2")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
_GLOB_CHARS = "*?["
# decoded images waiting for a full batch of their padded size, in batches: bounds memory on folders of many sizes
_MAX_PENDING_BATCHES = 4


# ---------------------------------------------------------------------------------------------------- inputs
@dataclass
class Frame:
    """One image to predict on: its name (path relative to the input folder, or ``<video>#<frame>``), RGB uint8
    ``(H, W, 3)``, and its position in the input order (the running image id without ``ann_file``)."""

    name: str
    image: np.ndarray
    index: int


def read_image(path: Path, size: tuple[int, int] | None = None) -> np.ndarray | None:
    """RGB uint8 ``(H, W, 3)``, or None when the file cannot be decoded (corrupt or not an image).

    Oriented as the datasets orient it (``bapose.data.dataset.orient_image``): ``size``, the ``(height, width)`` that
    ``ann_file`` declares, keeps the stored pixels or applies the EXIF orientation, whichever it matches, so
    results.json is in the frame of the annotations; without one the image as shown (EXIF applied)."""
    data = np.fromfile(str(path), dtype=np.uint8)  # not cv2.imread: it cannot open non-ASCII paths everywhere
    image = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION) if data.size else None
    if image is None or image.ndim != 3 or image.size == 0:
        return None
    rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return orient_image(rgb, lambda: exif_orientation(data.tobytes()), size, default="exif")


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


def resolve_input(text: str, recursive: bool = True) -> tuple[Path, list[Path], dict[Path, str]]:
    """``input=`` -> ``(root, images, skipped)``: a folder (walked), one image, or a glob. Names are kept relative
    to ``root`` (the folder, the image's folder, or the glob's folders before its first wildcard)."""
    if any(c in text for c in _GLOB_CHARS) and not Path(text).exists():
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
    ``(height, width)`` that orients an image (:func:`read_image`)."""
    n = 0
    for p in paths:
        name = p.relative_to(root).as_posix() if root is not None else p.name
        image = read_image(p, size_of(name) if size_of is not None else None)
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
    i = 0
    while True:
        ok, bgr = capture.read()
        if not ok:
            return
        yield Frame(f"{path.name}#{i}", cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), i)
        i += 1


def _padded_size(model: LoadedModel, image: np.ndarray) -> tuple[int, int]:
    return eval_resize_matrix(image.shape[0], image.shape[1], model.input_size,
                              getattr(model.net, "size_divisor", 32))[1]


def same_size_batches(frames: Iterator[Frame], size: int, key: Any) -> Iterator[list[Frame]]:
    """Batches of up to ``size`` frames with equal ``key(frame)`` (the padded input size), in input order as far as
    the grouping allows; at most ``_MAX_PENDING_BATCHES * size`` frames wait for company at any time."""
    pending: dict[Any, list[Frame]] = {}
    waiting = 0
    for f in frames:
        k = key(f)
        group = pending.setdefault(k, [])
        group.append(f)
        waiting += 1
        if len(group) == size:
            yield pending.pop(k)
            waiting -= size
        elif waiting > _MAX_PENDING_BATCHES * size:
            fullest = max(pending, key=lambda k: len(pending[k]))
            waiting -= len(pending[fullest])
            yield pending.pop(fullest)
    yield from (g for g in pending.values() if g)


# ---------------------------------------------------------------------------------------------------- inference
@torch.no_grad()
def predict_batch(model: LoadedModel, images: Sequence[np.ndarray], flip: bool = False,
                  scales: Sequence[float] = (1.0,)) -> list[tuple[np.ndarray, np.ndarray]]:
    """People in RGB uint8 images of any sizes -> per image ``(poses (M, K, 3), scores (M,))`` in original pixels.

    Each image is resized like evaluation (short side ``input_size``, padded to multiples of 32); images of the same
    padded size run together, each size separately, so an image is never padded for a larger neighbour and its
    people do not depend on what else is in the batch (D-WASP's image-pool branch sees padding).
    """
    # resized as the checkpoint's evaluation resizes (DEKR's centred warp for a converted DEKR checkpoint)
    transform = EvalTransform(model.input_size, getattr(model.net, "size_divisor", 32), model.info.get("eval_resize"))
    items = [transform(im) for im in images]
    groups: dict[tuple[int, int], list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault(it["image"].shape[:2], []).append(i)
    device = next(model.net.parameters()).device
    out: list[Any] = [None] * len(items)
    for members in groups.values():
        batch = np.stack([items[i]["image"] for i in members])
        x = torch.from_numpy(batch).to(device).permute(0, 3, 1, 2).float().div_(255.0)
        results = run_inference(model.net, x, model.codec, meta=model.meta, flip=flip, scales=scales)
        for i, r in zip(members, results, strict=True):
            it = items[i]
            poses = to_original(r.poses.float().cpu().numpy(), it["input_to_orig"])
            scores = r.scores.float().cpu().numpy().astype(np.float64)
            # people regressed entirely into the image's own zero padding (its right / bottom up to the next
            # multiple of 32) are not in the picture: keep those with at least one joint inside the image
            h, w = it["orig_size"]
            px, py = poses[..., 0], poses[..., 1]
            keep = ((px >= -0.5) & (px < w - 0.5) & (py >= -0.5) & (py < h - 0.5)).any(-1)
            out[i] = (poses[keep], scores[keep])
    return out


def _video_writer(path: Path, fps: float, size: tuple[int, int]) -> tuple[cv2.VideoWriter, Path]:
    """An open writer: mp4 (``mp4v``) where this OpenCV build has it, else MJPG in an ``.avi``."""
    for suffix, code in ((".mp4", "mp4v"), (".avi", "MJPG")):
        out = path.with_suffix(suffix)
        writer = cv2.VideoWriter(str(out), cv2.VideoWriter.fourcc(*code), fps, size)
        if writer.isOpened():
            return writer, out
        writer.release()
    raise DataError(f"bapose-predict: OpenCV cannot write a video at '{path}' (tried mp4v and MJPG)")


class AnnIds:
    """Image ids of an annotation file, looked up by relative path: the longest trailing part of the path that names
    exactly one of the json's ``file_name`` entries (``val2017/x.jpg`` and ``x.jpg`` both find ``val2017/x.jpg``)."""

    def __init__(self, ann_file: Path) -> None:
        gt = read_json(ann_file)
        self.file = ann_file
        self._by_suffix: dict[str, Any] = {}
        self._sizes: dict[Any, tuple[int, int]] = {}
        ambiguous = object()
        for img in gt.get("images", []) or []:
            if isinstance(img, dict) and "file_name" in img and "id" in img:
                if isinstance(img.get("height"), (int, float)) and isinstance(img.get("width"), (int, float)):
                    self._sizes[img["id"]] = (int(img["height"]), int(img["width"]))
                parts = Path(str(img["file_name"]).replace("\\", "/")).parts
                for i in range(len(parts)):
                    key = "/".join(parts[i:])
                    self._by_suffix[key] = ambiguous if key in self._by_suffix else img["id"]
        self._by_suffix = {k: v for k, v in self._by_suffix.items() if v is not ambiguous}
        if not self._by_suffix:
            raise DataError(f"file '{ann_file}': field 'images' has no entries with 'file_name' and 'id'; expected a "
                            f"COCO annotation file")

    def size(self, name: str) -> tuple[int, int] | None:
        """The ``(height, width)`` the file declares for the image ``name`` (None: not in it, or not declared)."""
        image_id = self.get(name)
        return None if image_id is None else self._sizes.get(image_id)

    def get(self, name: str) -> Any:
        parts = Path(name).parts
        for i in range(len(parts)):
            found = self._by_suffix.get("/".join(parts[i:]))
            if found is not None:
                return found
        return None


def predict(cfg: DictConfig) -> dict[str, Any]:
    """Run ``cfg.ckpt_path`` on ``cfg.input`` (image, folder tree, glob or video); write drawings and
    ``results.json``.

    Returns:
        ``{"results": path, "images_json": path | None, "drawn": [paths], "video": path | None, "num_images": n,
        "num_people": n (drawn, above score_threshold), "num_results": n (in results.json), "skipped": [names]}``.
    """
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    text = str(cfg.input)
    batch_size = int(cfg.get("batch_size", 4))
    if batch_size < 1:
        raise ConfigError(f"field 'batch_size' is {batch_size}; expected >= 1")
    scales = [float(s) for s in cfg.get("scales", [1.0])]
    recursive = bool(cfg.get("recursive", True))
    ann_file = Path(str(cfg.ann_file)) if cfg.get("ann_file") else None
    source = Path(text)
    video = source.is_file() and source.suffix.lower() in VIDEO_EXTENSIONS
    skipped: dict[Path, str] = {}
    if not video:  # input problems are reported before the model is loaded
        root, paths, skipped = resolve_input(text, recursive)
    model = load_model(cfg.ckpt_path, model=cfg.get("model"), model_from_checkpoint=cfg.get("model_from_checkpoint", True),
                       meta=cfg.get("meta"), ann_file=str(ann_file) if ann_file else None,
                       input_size=cfg.get("input_size"),
                       codec=OmegaConf.to_container(cfg.codec, resolve=True) if cfg.get("codec") else None,
                       prefer_ema=bool(cfg.get("prefer_ema", True)), device=str(cfg.get("device", "auto")))
    out_dir = Path(str(cfg.output_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    log.info("bapose-predict: %s (K=%d, %s) at input size %d on %s", model.path, model.meta.num_keypoints,
             model.meta.name, model.input_size, next(model.net.parameters()).device)

    ids_from_ann = AnnIds(ann_file) if ann_file else None
    capture, writer, video_path, total = None, None, None, None
    if video:
        capture = cv2.VideoCapture(str(source))
        if not capture.isOpened():
            raise DataError(f"field 'input': cannot open video '{source}' with OpenCV")
        fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
        total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
        frames: Iterator[Frame] = iter_video(source, capture)
    else:
        total = len(paths)
        frames = iter_images(paths, root, skipped, ids_from_ann.size if ids_from_ann is not None else None)
        log.info("bapose-predict: %d images under '%s'%s", total, text, "" if recursive else " (top level only)")
    draw_dir = out_dir / str(cfg.get("draw_dir", "images"))
    draw = bool(cfg.get("draw", True))
    kw = {"score_threshold": float(cfg.get("score_threshold", 0.3)),
          "kpt_threshold": float(cfg.get("kpt_threshold", 0.05))}
    per_frame: dict[int, list[dict[str, Any]]] = {}
    images_index: dict[int, dict[str, Any]] = {}
    used_ids: dict[Any, str] = {}
    drawn: list[str] = []
    not_in_ann: list[str] = []
    people = 0
    seen = 0
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="frame" if video else "img", desc="bapose-predict",
               disable=not bool(cfg.get("progress", True)))
    try:
        # video frames share one size; images are grouped by padded size so a batch never pads them
        batches = same_size_batches(frames, batch_size, key=lambda f: _padded_size(model, f.image))
        for batch in batches:
            preds = predict_batch(model, [f.image for f in batch], flip=bool(cfg.get("flip", False)), scales=scales)
            for f, (poses, scores) in zip(batch, preds, strict=True):
                h, w = f.image.shape[:2]
                if ids_from_ann is not None:
                    image_id = ids_from_ann.get(f.name)
                    if image_id is None or image_id in used_ids:
                        not_in_ann.append(f.name if image_id is None
                                          else f"{f.name} (its id {image_id} is already '{used_ids[image_id]}')")
                        image_id = None
                    else:
                        used_ids[image_id] = f.name
                else:
                    image_id = f.index
                    images_index[f.index] = {"id": image_id, "file_name": f.name, "width": w, "height": h}
                if image_id is not None:
                    per_frame[f.index] = to_coco_results([image_id], [poses], [scores])
                people += int((scores >= kw["score_threshold"]).sum())
                seen += 1
                if draw or video:
                    canvas = draw_poses(f.image, poses, scores, model.meta, **kw)
                    bgr = cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR)
                    if video:
                        if writer is None:
                            writer, video_path = _video_writer(out_dir / f"{source.stem}_poses", fps, (w, h))
                        writer.write(bgr)
                    else:
                        # the input's relative path: same-named files of two subfolders stay apart
                        target = draw_dir / f.name
                        target.parent.mkdir(parents=True, exist_ok=True)
                        if not cv2.imwrite(str(target), bgr):  # an extension cv2 cannot encode: <name>.png
                            target = target.with_name(target.name + ".png")
                            cv2.imwrite(str(target), bgr)
                        drawn.append(str(target))
            bar.update(len(batch))
    finally:
        bar.close()
        if capture is not None:
            capture.release()
        if writer is not None:
            writer.release()
    base = root if not video else source.parent
    names = {p: (p.relative_to(base).as_posix() if p.is_relative_to(base) else str(p)) for p in skipped}
    skipped_names = [names[p] for p in sorted(skipped, key=lambda q: names[q])]
    if skipped or not_in_ann:
        parts = [f"{names[p]} ({skipped[p]})" for p in sorted(skipped, key=lambda q: names[q])]
        parts += [f"{n} (not in field 'images' of '{ann_file}': drawn, left out of results.json)" for n in not_in_ann]
        warnings.warn(f"bapose-predict: skipped {len(parts)} file(s) under '{text}': " + "; ".join(parts),
                      stacklevel=2)
    if seen == 0:
        raise DataError(f"field 'input': no readable image in '{text}' (every file was skipped)")

    results = [r for i in sorted(per_frame) for r in per_frame[i]]
    results_path = blog.write_json(out_dir / "results.json", results)
    images_path = blog.write_json(out_dir / "images.json", {"images": [images_index[i] for i in sorted(images_index)]}) \
        if ids_from_ann is None else None
    summary = {"results": str(results_path), "images_json": str(images_path) if images_path else None,
               "drawn": drawn, "video": str(video_path) if video_path else None, "num_images": seen,
               "num_people": people, "num_results": len(results), "skipped": skipped_names + not_in_ann}
    print(f"bapose-predict: {seen} {'frames' if video else 'images'}, {people} people with score >= "
          f"{kw['score_threshold']}; results: {results_path}" + (f"; video: {video_path}" if video_path else
                                                                 f"; drawings: {draw_dir}" if drawn else "")
          + (f"; {len(skipped) + len(not_in_ann)} skipped (listed above)" if skipped or not_in_ann else ""),
          flush=True)
    return summary


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="predict")
def main(cfg: DictConfig) -> None:
    logging.captureWarnings(True)  # skipped files etc. as log lines, not source excerpts
    exit_on_error("bapose-predict", lambda: predict(cfg))


if __name__ == "__main__":
    main()
