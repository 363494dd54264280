"""Load a trained bapose checkpoint as a ready-to-run model: ``bapose.load_model`` (shared by eval, predict, export).

    import bapose
    from bapose.predictor import Predictor
    model = bapose.load_model("outputs/train/runs/<stamp>/checkpoints/epoch_139.ckpt", device="cuda")
    predictor = Predictor(model.net, model.codec, model.meta.flip_index, flip=True)
    people = predictor(images01)     # (B, 3, H, W) floats in [0, 1] -> one Poses(poses (M, K, 3), scores (M,)) each

The checkpoint is read with ``torch.load(weights_only=True)``; the net is rebuilt from the model config the checkpoint
carries (never with downloaded weights), its K and joint set checked, and the EMA weights preferred when present.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import OmegaConf
from torch import nn

from bapose.codecs import BAPoseCodec
from bapose.data.metadata import DatasetMeta
from bapose.errors import CheckpointError, ConfigError, DataError
from bapose.utils.checkpoint import check_state_dict_compatible, extract_net_state, load_checkpoint_safely

__all__ = ["LoadedModel", "load_model", "read_json", "resolve_device"]


@dataclass
class LoadedModel:
    """A net rebuilt from a checkpoint, with what decoding and drawing need.

    Attributes:
        net: the network in eval mode on ``device``.
        codec: decode knobs (``conf/codec``) at the checkpoint's (or the requested) input size.
        meta: dataset metadata (K, names, flip permutation, skeleton).
        input_size: short side images are resized to.
        info: the checkpoint's ``bapose`` entry (model config, K, meta name, input size, ...).
        epoch, global_step: where training was when the checkpoint was written (None when it does not say).
    """

    net: nn.Module
    codec: BAPoseCodec
    meta: DatasetMeta
    input_size: int
    path: Path
    info: dict[str, Any] = field(default_factory=dict)
    epoch: int | None = None
    global_step: int | None = None


def _meta_for(path: Path, info: Mapping[str, Any], k: int, meta: str | DatasetMeta | None,
              ann_file: str | None) -> DatasetMeta:
    """Dataset metadata: ``meta=`` (a DatasetMeta or a preset name), else the ``ann_file`` category, else the
    checkpoint's joint set."""
    if isinstance(meta, DatasetMeta):
        found, source = meta, f"dataset '{meta.name}'"
    elif meta:
        found, source = DatasetMeta.preset(str(meta)), f"meta={meta}"
    elif ann_file:
        cats = [c for c in read_json(Path(ann_file)).get("categories", []) or []
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
    spec = info.get("meta_spec")
    trained = list(spec["keypoints"]) if isinstance(spec, Mapping) and spec.get("keypoints") else None
    if found.num_keypoints != k or (trained is not None and list(found.keypoints) != trained):
        joint_set = (DatasetMeta.build(**spec).describe() if trained is not None and len(trained) == k
                     else f"{info.get('meta')!r}")
        raise CheckpointError(f"checkpoint '{path}' was trained on joint set {joint_set} (K={k}, field "
                              f"'bapose.meta_spec'), but {source} has joint set {found.describe()}; expected the "
                              f"same joint set (score a checkpoint on a dataset of its own joints)")
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
        meta: the joint set to draw / flip with: a ``DatasetMeta`` or a preset name (``coco`` | ``crowdpose``);
            default from ``ann_file``, else the joint set the checkpoint carries. Another K raises CheckpointError.
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
    if model_cfg.get("init_from"):  # the checkpoint's own weights replace whatever the run started from
        model_cfg["init_from"] = None
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
    # min_center_area only shapes training targets; its null ("by the dataset's rule set") has no dataset here
    knobs = {key: v for key, v in dict(codec or {}).items()
             if key != "input_size" and not (key == "min_center_area" and v is None)}
    if knobs.get("oks_sigmas") is None:  # pose NMS by OKS with the joint set's own sigmas
        knobs["oks_sigmas"] = tuple(dmeta.sigmas)
    codec_obj = BAPoseCodec(input_size=input_size, **knobs).with_checkpoint_defaults(info.get("codec"))
    return LoadedModel(net=net, codec=codec_obj, meta=dmeta, input_size=input_size, path=path, info=info,
                       epoch=ckpt.get("epoch"), global_step=ckpt.get("global_step"))



def read_json(path: Path) -> dict:
    """A json object from ``path``; DataError naming the file when it is missing, not json or not an object."""
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
