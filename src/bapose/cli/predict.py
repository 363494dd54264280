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

import logging
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from bapose.io import write_json
from bapose.data.inputs import Frame, is_video, iter_images, iter_video, resolve_input
from bapose.data.transforms import EvalTransform, eval_resize_matrix
from bapose.errors import ConfigError, DataError
from bapose.evaluation import to_coco_results
from bapose.io import read_json_object
from bapose.loading import LoadedModel, load_model
from bapose.predictor import Predictor, same_size_batches
from bapose.utils.entry import hydra_entry
from bapose.vis import draw_poses

log = logging.getLogger("bapose")


def _size_divisor(model: LoadedModel) -> int:
    return int(getattr(model.net, "size_divisor", 32))


def predict_batch(model: LoadedModel, images: Sequence[np.ndarray], flip: bool = False,
                  scales: Sequence[float] = (1.0,)) -> list[tuple[np.ndarray, np.ndarray]]:
    """People in RGB uint8 images of any sizes -> per image ``(poses (M, K, 3), scores (M,))`` in original pixels:
    :meth:`bapose.predictor.Predictor.on_images` with the checkpoint's net, codec, joint set and evaluation resize
    (DEKR's centred warp for a converted DEKR checkpoint)."""
    predictor = Predictor(model.net, model.codec, model.meta.flip_index, flip, scales, _size_divisor(model))
    transform = EvalTransform(model.input_size, _size_divisor(model), model.info.eval_resize)
    return predictor.on_images(images, transform)


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
        gt = read_json_object(ann_file)
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


class _Outputs:
    """What ``bapose-predict`` writes, frame by frame: ``results.json`` entries (ids from ``ann_file`` or running),
    ``images.json`` entries, drawings or the video, and the names of frames ``ann_file`` does not know."""

    def __init__(self, cfg: DictConfig, model: LoadedModel, out_dir: Path, ann_file: Path | None,
                 video: tuple[Path, float] | None) -> None:
        self.model, self.out_dir, self.ann_file, self.video = model, out_dir, ann_file, video
        self.ids = AnnIds(ann_file) if ann_file else None
        self.draw_dir = out_dir / str(cfg.draw_dir)
        self.draw = bool(cfg.draw) or video is not None
        self.kw = {"score_threshold": float(cfg.score_threshold), "kpt_threshold": float(cfg.kpt_threshold)}
        self.per_frame: dict[int, list[dict[str, Any]]] = {}
        self.images_index: dict[int, dict[str, Any]] = {}
        self.used_ids: dict[Any, str] = {}
        self.drawn: list[str] = []
        self.not_in_ann: list[str] = []
        self.people = self.seen = 0
        self.writer: cv2.VideoWriter | None = None
        self.video_path: Path | None = None

    def size_of(self, name: str) -> tuple[int, int] | None:
        """The ``(height, width)`` ``ann_file`` declares for the image ``name``: it orients the image as the
        annotations are (:func:`bapose.data.images.orient_image`); None without an annotation file."""
        return self.ids.size(name) if self.ids is not None else None

    def _image_id(self, f: Frame) -> Any:
        if self.ids is None:
            h, w = f.image.shape[:2]
            self.images_index[f.index] = {"id": f.index, "file_name": f.name, "width": w, "height": h}
            return f.index
        image_id = self.ids.get(f.name)
        if image_id is None or image_id in self.used_ids:
            self.not_in_ann.append(f.name if image_id is None
                                   else f"{f.name} (its id {image_id} is already '{self.used_ids[image_id]}')")
            return None
        self.used_ids[image_id] = f.name
        return image_id

    def add(self, f: Frame, poses: np.ndarray, scores: np.ndarray) -> None:
        image_id = self._image_id(f)
        if image_id is not None:
            self.per_frame[f.index] = to_coco_results([image_id], [poses], [scores])
        self.people += int((scores >= self.kw["score_threshold"]).sum())
        self.seen += 1
        if not self.draw:
            return
        bgr = cv2.cvtColor(draw_poses(f.image, poses, scores, self.model.meta, **self.kw), cv2.COLOR_RGB2BGR)
        if self.video is not None:
            if self.writer is None:
                h, w = f.image.shape[:2]
                self.writer, self.video_path = _video_writer(self.out_dir / f"{self.video[0].stem}_poses",
                                                             self.video[1], (w, h))
            self.writer.write(bgr)
            return
        # the input's relative path: same-named files of two subfolders stay apart
        target = self.draw_dir / f.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(target), bgr):  # an extension cv2 cannot encode: <name>.png
            target = target.with_name(target.name + ".png")
            cv2.imwrite(str(target), bgr)
        self.drawn.append(str(target))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()

    def write(self, text: str, skipped: dict[Path, str], base: Path) -> dict[str, Any]:
        """Warn about what was skipped, write ``results.json`` (+ ``images.json``), print and return the summary."""
        names = {p: (p.relative_to(base).as_posix() if p.is_relative_to(base) else str(p)) for p in skipped}
        order = sorted(skipped, key=lambda q: names[q])
        if skipped or self.not_in_ann:
            parts = [f"{names[p]} ({skipped[p]})" for p in order]
            parts += [f"{n} (not in field 'images' of '{self.ann_file}': drawn, left out of results.json)"
                      for n in self.not_in_ann]
            warnings.warn(f"bapose-predict: skipped {len(parts)} file(s) under '{text}': " + "; ".join(parts),
                          stacklevel=3)
        if self.seen == 0:
            raise DataError(f"field 'input': no readable image in '{text}' (every file was skipped)")
        results = [r for i in sorted(self.per_frame) for r in self.per_frame[i]]
        results_path = write_json(self.out_dir / "results.json", results)
        images_path = None if self.ids is not None else write_json(
            self.out_dir / "images.json", {"images": [self.images_index[i] for i in sorted(self.images_index)]})
        n_skipped = len(skipped) + len(self.not_in_ann)
        print(f"bapose-predict: {self.seen} {'frames' if self.video else 'images'}, {self.people} people with score "
              f">= {self.kw['score_threshold']}; results: {results_path}"
              + (f"; video: {self.video_path}" if self.video_path else f"; drawings: {self.draw_dir}" if self.drawn
                 else "") + (f"; {n_skipped} skipped (listed above)" if n_skipped else ""), flush=True)
        return {"results": str(results_path), "images_json": str(images_path) if images_path else None,
                "drawn": self.drawn, "video": str(self.video_path) if self.video_path else None,
                "num_images": self.seen, "num_people": self.people, "num_results": len(results),
                "skipped": [names[p] for p in order] + self.not_in_ann}


def _load(cfg: DictConfig, ann_file: Path | None) -> LoadedModel:
    model = load_model(cfg.ckpt_path, model=cfg.get("model"), model_from_checkpoint=bool(cfg.model_from_checkpoint),
                       meta=cfg.meta, ann_file=str(ann_file) if ann_file else None, input_size=cfg.input_size,
                       codec=OmegaConf.to_container(cfg.codec, resolve=True) if cfg.get("codec") else None,
                       prefer_ema=bool(cfg.prefer_ema), device=str(cfg.device))
    log.info("bapose-predict: %s (K=%d, %s) at input size %d on %s", model.path, model.meta.num_keypoints,
             model.meta.name, model.input_size, next(model.net.parameters()).device)
    return model


def predict(cfg: DictConfig) -> dict[str, Any]:
    """Run ``cfg.ckpt_path`` on ``cfg.input`` (image, folder tree, glob or video); write drawings and
    ``results.json``.

    Returns:
        ``{"results": path, "images_json": path | None, "drawn": [paths], "video": path | None, "num_images": n,
        "num_people": n (drawn, above score_threshold), "num_results": n (in results.json), "skipped": [names]}``.
    """
    if cfg.num_threads:
        torch.set_num_threads(int(cfg.num_threads))
    text, batch_size = str(cfg.input), int(cfg.batch_size)
    if batch_size < 1:
        raise ConfigError(f"field 'batch_size' is {batch_size}; expected >= 1")
    ann_file = Path(str(cfg.ann_file)) if cfg.ann_file else None
    source = Path(text)
    video = is_video(source)
    skipped: dict[Path, str] = {}
    if not video:  # input problems are reported before the model is loaded
        root, paths, skipped = resolve_input(text, bool(cfg.recursive))
    model = _load(cfg, ann_file)
    out_dir = Path(str(cfg.output_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    capture = None
    if video:
        capture = cv2.VideoCapture(str(source))
        if not capture.isOpened():
            raise DataError(f"field 'input': cannot open video '{source}' with OpenCV")
        total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
        frames: Iterator[Frame] = iter_video(source, capture)
        outputs = _Outputs(cfg, model, out_dir, ann_file, (source, capture.get(cv2.CAP_PROP_FPS) or 25.0))
    else:
        outputs = _Outputs(cfg, model, out_dir, ann_file, None)
        total, frames = len(paths), iter_images(paths, root, skipped, outputs.size_of)
        log.info("bapose-predict: %d images under '%s'%s", total, text, "" if cfg.recursive else " (top level only)")
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="frame" if video else "img", desc="bapose-predict", disable=not bool(cfg.progress))
    padded = lambda f: eval_resize_matrix(*f.image.shape[:2], model.input_size, _size_divisor(model))[1]  # noqa: E731
    try:
        # video frames share one size; images are grouped by padded size so a batch never pads them
        for batch in same_size_batches(frames, batch_size, key=padded):
            people = predict_batch(model, [f.image for f in batch], flip=bool(cfg.flip), scales=list(cfg.scales))
            for f, (poses, scores) in zip(batch, people, strict=True):
                outputs.add(f, poses, scores)
            bar.update(len(batch))
    finally:
        bar.close()
        if capture is not None:
            capture.release()
        outputs.close()
    return outputs.write(text, skipped, source.parent if video else root)


# the console script `bapose-predict`
main = hydra_entry("predict", "bapose-predict", predict, capture_warnings=True)

if __name__ == "__main__":
    main()
