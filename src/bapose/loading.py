"""Load a trained bapose checkpoint as a ready-to-run model: ``bapose.load_model`` (shared by eval, predict, export).

    import bapose
    from bapose.predictor import Predictor
    model = bapose.load_model("outputs/train/runs/<stamp>/checkpoints/best.ckpt", device="cuda")
    predictor = Predictor(model.net, model.codec, model.meta.flip_index, flip=True)
    people = predictor(images01)     # (B, 3, H, W) floats in [0, 1] -> one Poses(poses (M, K, 3), scores (M,)) each

The checkpoint is read with ``torch.load(weights_only=True)``; the net is rebuilt from the model config the checkpoint
carries (never with downloaded weights), its K and joint set checked, and the EMA weights preferred when present.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from bapose.build import build_codec, build_net
from bapose.checkpoints.io import check_state_dict_compatible, extract_net_state, load_checkpoint_safely
from bapose.checkpoints.schema import CheckpointInfo
from bapose.codecs import BAPoseCodec
from bapose.data.coco import resolve_joint_set
from bapose.data.metadata import DatasetMeta
from bapose.errors import CheckpointError, ConfigError

__all__ = ["LoadedModel", "load_model", "resolve_device"]


@dataclass
class LoadedModel:
    """A net rebuilt from a checkpoint, with what decoding and drawing need.

    Attributes:
        net: the network in eval mode on ``device``.
        codec: decode knobs (``conf/codec``) at the checkpoint's (or the requested) input size.
        meta: dataset metadata (K, names, flip permutation, skeleton).
        input_size: short side images are resized to.
        info: what the checkpoint says about itself (:class:`bapose.checkpoints.schema.CheckpointInfo`).
        epoch, global_step: where training was when the checkpoint was written (None when it does not say).
    """

    net: nn.Module
    codec: BAPoseCodec
    meta: DatasetMeta
    input_size: int
    path: Path
    info: CheckpointInfo = field(default_factory=CheckpointInfo)
    epoch: int | None = None
    global_step: int | None = None


def _meta_for(path: Path, info: CheckpointInfo, k: int, meta: str | DatasetMeta | None,
              ann_file: str | None) -> DatasetMeta:
    """Dataset metadata: ``meta=`` (a DatasetMeta or a preset name), else the ``ann_file`` category, else the
    checkpoint's joint set."""
    asked = resolve_joint_set(meta, ann_file)
    if asked is None:
        stored = info.joint_set()
        if stored is not None:
            asked = stored, "the checkpoint"
        else:
            # a custom joint set stores only its name: draw with generic names and no skeleton
            warnings.warn(f"checkpoint '{path}': dataset {info.meta!r} is not a preset and no ann_file= was given; "
                          f"using {k} unnamed joints without a skeleton (pass ann_file= for names and skeleton)",
                          stacklevel=3)
            return DatasetMeta.build(str(info.meta or "custom"), [f"joint_{i}" for i in range(k)])
    found, source = asked
    trained = info.trained_keypoints()
    if found.num_keypoints != k or (trained is not None and list(found.keypoints) != trained):
        joint_set = info.describe_joint_set() if trained is not None and len(trained) == k else f"{info.meta!r}"
        raise CheckpointError(f"checkpoint '{path}' was trained on joint set {joint_set} (K={k}, field "
                              f"'bapose.meta_spec'), but {source} has joint set {found.describe()}; expected the "
                              f"same joint set (score a checkpoint on a dataset of its own joints)")
    return found


def _checkpoint_k(path: Path, info: CheckpointInfo, state: Mapping[str, torch.Tensor]) -> int:
    if info.num_keypoints:
        return int(info.num_keypoints)
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


def _model_config(path: Path, info: CheckpointInfo, model: Mapping[str, Any] | None, model_from_checkpoint: bool,
                  k: int) -> dict[str, Any]:
    if model_from_checkpoint and info.model:
        model_cfg = dict(info.model)
    elif model is not None:
        model_cfg = OmegaConf.to_container(model, resolve=False) if OmegaConf.is_config(model) else dict(model)
    else:
        raise ConfigError(f"checkpoint '{path}' has no field 'bapose.model' and no model= was given; expected one "
                          f"of them to say which net to build")
    # the checkpoint holds the weights (nothing may be downloaded, no other checkpoint is read); K is the checkpoint's
    model_cfg.update(num_keypoints=k, init_from=None, **({"pretrained": False} if "pretrained" in model_cfg else {}))
    return model_cfg


def _input_size(info: CheckpointInfo, input_size: int | None) -> int:
    size = int(input_size) if input_size is not None else (info.short_side() or 512)
    if size <= 0 or size % 32:
        raise ConfigError(f"field 'input_size' is {size}; expected a positive multiple of 32")
    return size


def load_model(ckpt_path: str | Path, model: Mapping[str, Any] | None = None, model_from_checkpoint: bool = True,
               meta: str | DatasetMeta | None = None, ann_file: str | None = None, input_size: int | None = None,
               codec: Mapping[str, Any] | None = None, prefer_ema: bool = True,
               device: str | torch.device = "cpu", checkpoint: Mapping[str, Any] | None = None) -> LoadedModel:
    """Rebuild the net a checkpoint was trained as and load its weights (EMA when present), safely.

    Args:
        ckpt_path: a bapose Lightning checkpoint (loaded with ``weights_only=True``).
        model: a model config node (``conf/model``) used when the checkpoint has none or ``model_from_checkpoint``
            is false; its ``num_keypoints`` is set to the checkpoint's K.
        meta: the joint set to draw / flip with: a ``DatasetMeta`` or a preset name (``coco`` | ``crowdpose``);
            default from ``ann_file``, else the joint set the checkpoint carries. Another K raises CheckpointError.
        input_size: short side of the resized images; default the checkpoint's training input size, else 512.
        codec: ``BAPoseCodec`` keyword arguments except ``input_size`` (``conf/codec/default.yaml``).
        checkpoint: the file's content when the caller has already read it (``load_checkpoint_safely``): not read
            again.

    Raises:
        CheckpointError: unreadable file, or a checkpoint of another architecture / K (names keys, shapes, K).
    """
    path = Path(str(ckpt_path))
    ckpt = checkpoint if checkpoint is not None else load_checkpoint_safely(path)
    info = CheckpointInfo.of(ckpt, path)
    state = extract_net_state(ckpt, prefer_ema=prefer_ema)
    k = _checkpoint_k(path, info, state)
    dmeta = _meta_for(path, info, k, meta, ann_file)
    model_cfg = _model_config(path, info, model, model_from_checkpoint, k)
    try:
        net = build_net(model_cfg)
    except Exception as e:  # noqa: BLE001 - Hydra wraps the real error; name the config that failed
        raise CheckpointError(f"checkpoint '{path}': could not build the model from config "
                              f"{model_cfg.get('_target_')!r} ({type(e).__name__}: {e})") from e
    # expected_meta carries the built net's K: a stored K that disagrees is named before the key/shape lists
    check_state_dict_compatible(net.state_dict(), state, source=str(path),
                                expected_meta={"num_keypoints": getattr(net, "num_keypoints", k)},
                                found_meta={"num_keypoints": info.num_keypoints})
    net.load_state_dict(state, strict=True)
    net.eval().to(resolve_device(str(device)) if not isinstance(device, torch.device) else device)

    size = _input_size(info, input_size)
    # min_center_area only shapes training targets: without a dataset its null stays the codec's default
    knobs = {key: v for key, v in dict(codec or {}).items() if key != "input_size"}
    codec_obj = build_codec(knobs, input_size=size, sigmas=dmeta.sigmas, stored=info.codec)
    return LoadedModel(net=net, codec=codec_obj, meta=dmeta, input_size=size, path=path, info=info,
                       epoch=ckpt.get("epoch"), global_step=ckpt.get("global_step"))
