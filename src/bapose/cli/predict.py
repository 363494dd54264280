"""``bapose-predict``: poses drawn on images / a video and one COCO-format results json, from a checkpoint.

``predict(cfg)`` is a plain function; ``main()`` the thin Hydra entry point over ``conf/predict.yaml``::

    bapose-predict ckpt_path=outputs/train/runs/<stamp>/checkpoints/last.ckpt input=photos/
    bapose-predict ckpt_path=... input=clip.mp4 flip=true scales=[0.5,1,2] device=cuda
    bapose-predict ckpt_path=... input=/data/coco/val2017 ann_file=/data/coco/person_keypoints_val2017.json
    bapose-score /data/coco/person_keypoints_val2017.json outputs/predict/runs/<stamp>/results.json

The checkpoint is loaded with ``torch.load(weights_only=True)``; the net is rebuilt from the model config, K and
dataset name it carries. Images are resized as evaluation does (short side = ``input_size``, padded to multiples of
32), run in batches (flip / multi-scale optional) and decoded by the codec; poses are mapped back to original pixels.

Writes into ``output_dir``: the drawn images (same file names) or ``<video stem>_poses.mp4``, ``results.json``
(COCO results: ``image_id``, ``category_id``, ``keypoints``, ``score``) and, without ``ann_file``, ``images.json``
(``{"images": [{"id", "file_name", "width", "height"}]}``: which running id is which file / video frame).
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

import bapose.utils.logging as blog  # registers the ${bapose.*} resolvers before Hydra composes
from bapose.codecs import BAPoseCodec
from bapose.data.metadata import DatasetMeta
from bapose.data.transforms import EvalTransform
from bapose.errors import CheckpointError, ConfigError, DataError, exit_on_error
from bapose.evaluation import to_coco_results
from bapose.inference import predict as run_inference
from bapose.inference import to_original
from bapose.paths import config_dir
from bapose.utils.checkpoint import check_state_dict_compatible, extract_net_state, load_checkpoint_safely
from bapose.vis import draw_poses

log = logging.getLogger("bapose")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".jp2")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")


# ---------------------------------------------------------------------------------------------------- the model
@dataclass
class LoadedModel:
    """A net rebuilt from a checkpoint, with what decoding and drawing need.

    Attributes:
        net: the network in eval mode on ``device``.
        codec: decode knobs (``conf/codec``) at the checkpoint's (or the requested) input size.
        meta: dataset metadata (K, names, flip permutation, skeleton).
        input_size: short side images are resized to.
        info: the checkpoint's ``bapose`` entry (model config, K, meta name, input size, ...).
    """

    net: nn.Module
    codec: BAPoseCodec
    meta: DatasetMeta
    input_size: int
    path: Path
    info: dict[str, Any] = field(default_factory=dict)


def _meta_for(path: Path, info: Mapping[str, Any], k: int, meta: str | None, ann_file: str | None) -> DatasetMeta:
    """Dataset metadata: ``meta=`` preset, else the ``ann_file`` category, else the checkpoint's dataset name."""
    if meta:
        found, source = DatasetMeta.preset(str(meta)), f"meta={meta}"
    elif ann_file:
        cats = [c for c in _read_json(Path(ann_file)).get("categories", []) or []
                if isinstance(c, dict) and "keypoints" in c]
        if not cats:
            raise DataError(f"file '{ann_file}': no keypoint category (field 'categories[].keypoints'); expected a "
                            f"COCO keypoint annotation file")
        found, source = DatasetMeta.from_coco_category(cats[0]), f"ann_file={ann_file}"
    elif isinstance(info.get("meta_spec"), Mapping):
        found, source = DatasetMeta.build(**info["meta_spec"]), "the checkpoint"
    elif info.get("meta") in ("coco", "crowdpose"):
        found, source = DatasetMeta.preset(info["meta"]), "the checkpoint"
    else:
        # a custom joint set stores only its name: draw with generic names and no skeleton
        warnings.warn(f"checkpoint '{path}': dataset {info.get('meta')!r} is not a preset and no ann_file= was given; "
                      f"using {k} unnamed joints without a skeleton (pass ann_file= for names and skeleton)",
                      stacklevel=3)
        return DatasetMeta.build(str(info.get("meta") or "custom"), [f"joint_{i}" for i in range(k)])
    if found.num_keypoints != k:
        raise CheckpointError(f"checkpoint '{path}' was trained for K={k} joints (field 'bapose.num_keypoints', "
                              f"dataset {info.get('meta')!r}), but dataset '{found.name}' from {source} has "
                              f"{found.num_keypoints}; expected the same joint set")
    return found


def _checkpoint_k(path: Path, info: Mapping[str, Any], state: Mapping[str, torch.Tensor]) -> int:
    if info.get("num_keypoints"):
        return int(info["num_keypoints"])
    final = state.get("heatmap_head.final.weight")
    if final is None:
        raise CheckpointError(f"checkpoint '{path}' has no field 'bapose.num_keypoints' and no "
                              f"'heatmap_head.final.weight'; expected a bapose checkpoint")
    return int(final.shape[0]) - 1


def resolve_device(device: str) -> torch.device:
    """``auto`` -> ``cuda`` when available, else ``cpu``; anything else is passed to ``torch.device``."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(str(device))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"field 'device' is {device!r} but CUDA is not available; expected cpu or auto")
    return dev


def load_model(ckpt_path: str | Path, model: Mapping[str, Any] | None = None, model_from_checkpoint: bool = True,
               meta: str | None = None, ann_file: str | None = None, input_size: int | None = None,
               codec: Mapping[str, Any] | None = None, prefer_ema: bool = True,
               device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild the net a checkpoint was trained as and load its weights (EMA when present), safely.

    Args:
        ckpt_path: a bapose Lightning checkpoint (loaded with ``weights_only=True``).
        model: a model config node (``conf/model``) used when the checkpoint has none or ``model_from_checkpoint``
            is false; its ``num_keypoints`` is set to the checkpoint's K.
        meta: dataset preset name (``coco`` | ``crowdpose``) to draw / flip with; default from ``ann_file`` or the
            checkpoint.
        input_size: short side of the resized images; default the checkpoint's training input size, else 512.
        codec: ``BAPoseCodec`` keyword arguments except ``input_size`` (``conf/codec/default.yaml``).

    Raises:
        CheckpointError: unreadable file, or a checkpoint of another architecture / K (names keys, shapes, K).
    """
    path = Path(str(ckpt_path))
    ckpt = load_checkpoint_safely(path)
    info = dict(ckpt.get("bapose") or {})
    state = extract_net_state(ckpt, prefer_ema=prefer_ema)
    k = _checkpoint_k(path, info, state)
    dmeta = _meta_for(path, info, k, meta, ann_file)

    stored = info.get("model")
    if model_from_checkpoint and stored:
        model_cfg = dict(stored)
    elif model is not None:
        model_cfg = OmegaConf.to_container(model, resolve=False) if OmegaConf.is_config(model) else dict(model)
    else:
        raise ConfigError(f"checkpoint '{path}' has no field 'bapose.model' and no model= was given; expected one "
                          f"of them to say which net to build")
    # the checkpoint holds the weights (nothing may be downloaded); K comes from the checkpoint, not from data=
    model_cfg.update(num_keypoints=k, **({"pretrained": False} if "pretrained" in model_cfg else {}))
    try:
        net = hydra.utils.instantiate(model_cfg)
    except Exception as e:  # noqa: BLE001 - Hydra wraps the real error; name the config that failed
        raise CheckpointError(f"checkpoint '{path}': could not build the model from config "
                              f"{model_cfg.get('_target_')!r} ({type(e).__name__}: {e})") from e
    # expected_meta carries the built net's K: a stored K that disagrees is named before the key/shape lists
    check_state_dict_compatible(net.state_dict(), state, source=str(path),
                                expected_meta={"num_keypoints": getattr(net, "num_keypoints", k)},
                                found_meta={"num_keypoints": info.get("num_keypoints")})
    net.load_state_dict(state, strict=True)
    net.eval().to(resolve_device(str(device)) if not isinstance(device, torch.device) else device)

    stored_size = info.get("input_size")
    if input_size is None:
        if isinstance(stored_size, int):
            input_size = stored_size
        elif isinstance(stored_size, (list, tuple)) and stored_size:
            input_size = int(min(stored_size))  # a (H, W) training size: resize the short side to its short side
        else:
            input_size = 512
    input_size = int(input_size)
    if input_size <= 0 or input_size % 32:
        raise ConfigError(f"field 'input_size' is {input_size}; expected a positive multiple of 32")
    knobs = {key: v for key, v in dict(codec or {}).items() if key != "input_size"}
    if knobs.get("oks_sigmas") is None:  # pose NMS by OKS with the joint set's own sigmas
        knobs["oks_sigmas"] = tuple(dmeta.sigmas)
    codec_obj = BAPoseCodec(input_size=input_size, **knobs).with_checkpoint_defaults(info.get("codec"))
    return LoadedModel(net=net, codec=codec_obj, meta=dmeta,
                       input_size=input_size, path=path, info=info)


# ---------------------------------------------------------------------------------------------------- inputs
@dataclass
class Frame:
    """One image to predict on: its name (file name, or ``<video>#<frame>``), RGB uint8 ``(H, W, 3)``, source."""

    name: str
    image: np.ndarray
    index: int


def _read_json(path: Path) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise DataError(f"file '{path}': not found") from None
    except json.JSONDecodeError as e:
        raise DataError(f"file '{path}': not valid json ({e})") from None
    if not isinstance(data, dict):
        raise DataError(f"file '{path}': expected a COCO json object, got {type(data).__name__}")
    return data


def read_image(path: Path) -> np.ndarray | None:
    """RGB uint8 ``(H, W, 3)``, or None when the file cannot be decoded (corrupt or not an image)."""
    data = np.fromfile(str(path), dtype=np.uint8)  # not cv2.imread: it cannot open non-ASCII paths everywhere
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None or image.ndim != 3 or image.size == 0:
        return None
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def list_images(folder: Path) -> list[Path]:
    """Image files of a folder (sorted, not recursive); every other file is skipped with a warning naming it."""
    files, skipped = [], []
    for p in sorted(folder.iterdir()):
        if p.is_dir() or p.name.startswith("."):
            continue
        (files if p.suffix.lower() in IMAGE_EXTENSIONS else skipped).append(p)
    for p in skipped:
        hint = " (a video: give it as input= on its own)" if p.suffix.lower() in VIDEO_EXTENSIONS else ""
        warnings.warn(f"bapose-predict: skipping '{p}': not an image file (extension '{p.suffix}'; expected one of "
                      f"{', '.join(IMAGE_EXTENSIONS)}){hint}", stacklevel=2)
    return files


def iter_images(paths: Sequence[Path]) -> Iterator[Frame]:
    """Decode images one at a time; a corrupt one is skipped with a warning naming it."""
    for i, p in enumerate(paths):
        image = read_image(p)
        if image is None:
            warnings.warn(f"bapose-predict: skipping '{p}': cannot be decoded as an image (corrupt or truncated?)",
                          stacklevel=2)
            continue
        yield Frame(p.name, image, i)


def iter_video(path: Path, capture: cv2.VideoCapture) -> Iterator[Frame]:
    i = 0
    while True:
        ok, bgr = capture.read()
        if not ok:
            return
        yield Frame(f"{path.name}#{i}", cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), i)
        i += 1


def _batches(frames: Iterator[Frame], size: int) -> Iterator[list[Frame]]:
    batch: list[Frame] = []
    for f in frames:
        batch.append(f)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


# ---------------------------------------------------------------------------------------------------- inference
@torch.no_grad()
def predict_batch(model: LoadedModel, images: Sequence[np.ndarray], flip: bool = False,
                  scales: Sequence[float] = (1.0,)) -> list[tuple[np.ndarray, np.ndarray]]:
    """People in RGB uint8 images of any sizes -> per image ``(poses (M, K, 3), scores (M,))`` in original pixels.

    Each image is resized like evaluation (short side ``input_size``, padded to multiples of 32); the batch is padded
    to its largest image (as the eval collate does), run with flip / scales and decoded by the codec.
    """
    transform = EvalTransform(model.input_size, getattr(model.net, "size_divisor", 32))
    items = [transform(im) for im in images]
    hp = max(it["image"].shape[0] for it in items)
    wp = max(it["image"].shape[1] for it in items)
    batch = np.zeros((len(items), hp, wp, 3), np.uint8)
    for b, it in enumerate(items):
        batch[b, :it["image"].shape[0], :it["image"].shape[1]] = it["image"]
    device = next(model.net.parameters()).device
    x = torch.from_numpy(batch).to(device).permute(0, 3, 1, 2).float().div_(255.0)
    results = run_inference(model.net, x, model.codec, meta=model.meta, flip=flip, scales=scales)
    out = []
    for r, it in zip(results, items, strict=True):
        poses = to_original(r.poses.float().cpu().numpy(), it["input_to_orig"])
        scores = r.scores.float().cpu().numpy().astype(np.float64)
        # people regressed entirely into the zero padding (of this image or of a larger one in the batch) are not
        # in the picture: keep those with at least one joint inside the original image
        h, w = it["orig_size"]
        x, y = poses[..., 0], poses[..., 1]
        keep = ((x >= -0.5) & (x < w - 0.5) & (y >= -0.5) & (y < h - 0.5)).any(-1)
        out.append((poses[keep], scores[keep]))
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


def _ann_ids(ann_file: Path) -> dict[str, int]:
    gt = _read_json(ann_file)
    ids = {}
    for img in gt.get("images", []) or []:
        if isinstance(img, dict) and "file_name" in img and "id" in img:
            ids[Path(str(img["file_name"])).name] = int(img["id"])
    if not ids:
        raise DataError(f"file '{ann_file}': field 'images' has no entries with 'file_name' and 'id'; expected a "
                        f"COCO annotation file")
    return ids


def predict(cfg: DictConfig) -> dict[str, Any]:
    """Run ``cfg.ckpt_path`` on ``cfg.input`` (image, folder or video); write drawings and ``results.json``.

    Returns:
        ``{"results": path, "images_json": path | None, "drawn": [paths], "video": path | None, "num_images": n,
        "num_people": n (drawn, above score_threshold), "num_results": n (in results.json), "skipped": [names]}``.
    """
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    source = Path(str(cfg.input))
    if not source.exists():
        raise DataError(f"field 'input': '{source}' does not exist; expected an image, a folder of images or a video")
    batch_size = int(cfg.get("batch_size", 4))
    if batch_size < 1:
        raise ConfigError(f"field 'batch_size' is {batch_size}; expected >= 1")
    scales = [float(s) for s in cfg.get("scales", [1.0])]
    ann_file = Path(str(cfg.ann_file)) if cfg.get("ann_file") else None
    model = load_model(cfg.ckpt_path, model=cfg.get("model"), model_from_checkpoint=cfg.get("model_from_checkpoint", True),
                       meta=cfg.get("meta"), ann_file=str(ann_file) if ann_file else None,
                       input_size=cfg.get("input_size"),
                       codec=OmegaConf.to_container(cfg.codec, resolve=True) if cfg.get("codec") else None,
                       prefer_ema=bool(cfg.get("prefer_ema", True)), device=str(cfg.get("device", "auto")))
    out_dir = Path(str(cfg.output_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    log.info("bapose-predict: %s (K=%d, %s) at input size %d on %s", model.path, model.meta.num_keypoints,
             model.meta.name, model.input_size, next(model.net.parameters()).device)

    video = source.is_file() and source.suffix.lower() in VIDEO_EXTENSIONS
    capture, writer, video_path, total = None, None, None, None
    if video:
        capture = cv2.VideoCapture(str(source))
        if not capture.isOpened():
            raise DataError(f"field 'input': cannot open video '{source}' with OpenCV")
        fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
        total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
        frames: Iterator[Frame] = iter_video(source, capture)
    else:
        if source.is_dir():
            paths = list_images(source)
        elif source.suffix.lower() in IMAGE_EXTENSIONS:
            paths = [source]
        else:
            raise DataError(f"field 'input': '{source}' is neither an image ({', '.join(IMAGE_EXTENSIONS)}), a video "
                            f"({', '.join(VIDEO_EXTENSIONS)}) nor a folder")
        if not paths:
            raise DataError(f"field 'input': folder '{source}' holds no image files")
        total = len(paths)
        frames = iter_images(paths)

    ids_from_ann = _ann_ids(ann_file) if ann_file else None
    draw_dir = out_dir / str(cfg.get("draw_dir", "images"))
    draw = bool(cfg.get("draw", True))
    kw = {"score_threshold": float(cfg.get("score_threshold", 0.3)),
          "kpt_threshold": float(cfg.get("kpt_threshold", 0.05))}
    results: list[dict[str, Any]] = []
    images_index: list[dict[str, Any]] = []
    drawn: list[str] = []
    skipped: list[str] = []
    people = 0
    seen = 0
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="frame" if video else "img", desc="bapose-predict",
               disable=not bool(cfg.get("progress", True)))
    try:
        for batch in _batches(frames, batch_size):
            preds = predict_batch(model, [f.image for f in batch], flip=bool(cfg.get("flip", False)), scales=scales)
            for f, (poses, scores) in zip(batch, preds, strict=True):
                h, w = f.image.shape[:2]
                if ids_from_ann is not None:
                    image_id = ids_from_ann.get(f.name)
                    if image_id is None:
                        warnings.warn(f"bapose-predict: '{f.name}' is not in field 'images' of '{ann_file}'; drawn "
                                      f"but left out of results.json", stacklevel=2)
                        skipped.append(f.name)
                else:
                    image_id = f.index if video else seen
                    images_index.append({"id": image_id, "file_name": f.name, "width": w, "height": h})
                if image_id is not None:
                    results.extend(to_coco_results([image_id], [poses], [scores]))
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
                        draw_dir.mkdir(parents=True, exist_ok=True)
                        target = draw_dir / f.name
                        if not cv2.imwrite(str(target), bgr):  # an odd extension cv2 cannot encode: png instead
                            target = target.with_suffix(".png")
                            cv2.imwrite(str(target), bgr)
                        drawn.append(str(target))
            bar.update(len(batch))
    finally:
        bar.close()
        if capture is not None:
            capture.release()
        if writer is not None:
            writer.release()
    if seen == 0:
        raise DataError(f"field 'input': no readable image in '{source}' (every file was skipped)")

    results_path = blog.write_json(out_dir / "results.json", results)
    images_path = blog.write_json(out_dir / "images.json", {"images": images_index}) if ids_from_ann is None else None
    summary = {"results": str(results_path), "images_json": str(images_path) if images_path else None,
               "drawn": drawn, "video": str(video_path) if video_path else None, "num_images": seen,
               "num_people": people, "num_results": len(results), "skipped": skipped}
    print(f"bapose-predict: {seen} {'frames' if video else 'images'}, {people} people with score >= "
          f"{kw['score_threshold']}; results: {results_path}" + (f"; video: {video_path}" if video_path else
                                                                 f"; drawings: {draw_dir}" if drawn else ""),
          flush=True)
    return summary


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="predict")
def main(cfg: DictConfig) -> None:
    logging.captureWarnings(True)  # skipped files etc. as log lines, not source excerpts
    exit_on_error("bapose-predict", lambda: predict(cfg))


if __name__ == "__main__":
    main()
