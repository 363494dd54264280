"""Published DEKR checkpoints (HRNet/DEKR, Geng et al. 2021) as bapose checkpoints: ``bapose-convert dekr``.

DEKR's release ships plain ``state_dict`` files (``pose_dekr_hrnetw32_coco.pth``, ...) of its ``hrnet_dekr`` model:
an HRNet whose four stage-4 branches are upsampled and concatenated, a heatmap head and a per-joint adaptive offset
head. That is exactly :class:`bapose.models.BAPoseNet` with ``decoder=None`` (the DEKR baseline), so a conversion is a
renaming plus three layout changes, all checked against the outputs DEKR's own code produced
(``../shared/data/dekr_reference``):

(the tensor remap is :mod:`bapose.models.dekr`'s: pure ``state_dict`` functions beside the model).

The checkpoint written carries the model config, the joint set and DEKR's decoding rules (``grid_align=dekr``: a
joint at grid ``g`` is at input pixel ``4·g``; ``pose_nms=dekr``; DEKR's eval resize), so ``bapose-eval``,
``bapose-predict``, ``bapose-export`` and ``model.init_from`` take it as they take our own.
``convert_dekr_rescore`` converts DEKR's pose rescoring net (``final_rescore_coco_kpt.pth``) the same way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from bapose.checkpoints.io import atomic_torch_save, check_state_dict_compatible, read_state_dict
from bapose.checkpoints.schema import CheckpointInfo
from bapose.data.coco import resolve_joint_set
from bapose.data.metadata import DatasetMeta
from bapose.errors import CheckpointError, ConfigError
from bapose.models.dekr import (
    check_dekr_keys,
    dekr_layout,
    dekr_model_config,
    dekr_to_bapose,
    timm_backbone_for,
)

__all__ = ["DEKR_LINKS", "DEKR_RESCORE_TORSO", "convert_dekr", "convert_dekr_rescore", "dekr_codec_spec", "describe"]

# DEKR's published test input sizes by HRNet width (experiments/coco/*/w*_..._512_... / _640_)
DEKR_INPUT_SIZES = {32: 512, 48: 640}
# DEKR's TEST.DECREASE (multi-scale): 0.9 for COCO, 0.8 for CrowdPose
DEKR_SCALE_DECREASE = {"coco": 0.9, "crowdpose": 0.8}
# the skeleton links DEKR's rescoring net reads (lib/utils/rescore.py JOINT_*_LINK_1/2), as (a, b): feature a - b
DEKR_LINKS = {
    "coco": ((0, 1), (0, 2), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 6), (5, 7), (5, 11), (6, 8), (6, 12),
             (7, 9), (8, 10), (11, 12), (11, 13), (12, 14), (13, 15), (14, 16)),
    "crowdpose": ((12, 13), (13, 0), (13, 1), (0, 2), (1, 3), (2, 4), (3, 5), (0, 6), (1, 7), (6, 8), (7, 9),
                  (8, 10), (9, 11), (6, 7), (0, 1)),
}
# the two links whose mean length normalises DEKR's rescoring features (indices into DEKR_LINKS[...])
DEKR_RESCORE_TORSO = (9, 11)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------- checkpoint
def dekr_codec_spec(meta: DatasetMeta, input_size: int) -> dict[str, Any]:
    """The decode settings of DEKR's ``tools/valid.py`` (experiments/coco|crowdpose/*.yaml), as a ``bapose.codec``
    checkpoint entry: ``grid_align=dekr`` (joint at grid ``g`` -> input pixel ``4·g``, heat values read as DEKR
    does), DEKR's pose NMS (0.05 of the diagonal, more than K/2 joints; 0.15 multi-scale), 30 people, center
    threshold 0.01, pool kernel by map size, no heatmap refinement, multi-scale score decrease 0.9 / 0.8."""
    return {"input_size": int(input_size), "stride": 4, "keypoint_sigma": 2.0, "center_sigma": 4.0,
            "offset_radius": 4, "max_people": 30, "center_threshold": 0.01, "nms_kernel": 0, "pose_nms": "dekr",
            "pose_nms_ratio": 0.05, "pose_nms_fraction": 0.5, "ms_pose_nms_ratio": 0.15,
            "ms_scale_decrease": DEKR_SCALE_DECREASE.get(meta.name, 0.9), "max_people_after_nms": 30,
            "refine_radius": 0, "rescore_path": None, "grid_align": "dekr"}


def resolve_meta(k: int, meta: str | DatasetMeta | None, ann_file: str | Path | None, path: str | Path,
                 presets: Mapping[int, str] | None = None) -> DatasetMeta:
    """The joint set of a converted file: ``meta`` (a preset name or DatasetMeta), else ``ann_file``'s keypoint
    category, else the preset for K (17: coco, 14: crowdpose); another K needs one of them."""
    presets = presets or {17: "coco", 14: "crowdpose"}
    asked = resolve_joint_set(meta, ann_file, labels=("--meta ", "--ann-file "))
    if asked is None:
        if k in presets:
            return DatasetMeta.preset(presets[k])
        raise ConfigError(f"file '{path}' has K={k} joints, which is neither COCO's 17 nor CrowdPose's 14; give "
                          f"the joint set with --meta coco|crowdpose or --ann-file <COCO keypoint json>")
    found, source = asked
    if found.num_keypoints != k:
        raise ConfigError(f"file '{path}' has K={k} joints but {source} has {found.num_keypoints}; expected the "
                          f"same joint count")
    return found


def convert_dekr(src: str | Path, dst: str | Path, meta: str | DatasetMeta | None = None,
                 ann_file: str | Path | None = None, input_size: int | None = None) -> dict[str, Any]:
    """Convert a DEKR ``state_dict`` file into a bapose checkpoint at ``dst``.

    Args:
        src: DEKR weights (``pose_dekr_hrnetw32_coco.pth``; ``state_dict`` / ``module.`` wrappers are fine).
        dst: the bapose checkpoint to write (``{"state_dict": {"net.*"}, "bapose": {...}}``).
        meta: joint set, a preset name (``coco`` | ``crowdpose``) or a DatasetMeta; default by K (17 / 14).
        ann_file: a COCO keypoint json whose category gives the joint set (custom K).
        input_size: the short side images are resized to at test time; default DEKR's (W32: 512, W48: 640).

    Returns:
        a summary: ``width``, ``num_keypoints``, ``meta``, ``input_size``, ``dekr_keys``, ``bapose_tensors``,
        ``stored_basis``, ``params``, ``dst``.
    """
    from bapose.models import BAPoseNet

    src, dst = Path(src), Path(dst)
    state = read_state_dict(src)
    check_dekr_keys(src, state, list(state))
    layout = dekr_layout(state, src)
    net_state, stored_basis = dekr_to_bapose(state, layout, src)
    dmeta = resolve_meta(layout["num_keypoints"], meta, ann_file, src)
    width = layout["width"]
    backbone = timm_backbone_for(state, width, src)
    size = int(input_size or DEKR_INPUT_SIZES.get(width, 512))
    if size <= 0 or size % 32:
        raise ConfigError(f"--input-size {size}; expected a positive multiple of 32")

    model_cfg = dekr_model_config(layout, backbone, stored_basis)
    with torch.device("meta"):  # names and shapes only: no memory, no initialisation (a W48 converts in seconds)
        net = BAPoseNet(**{k: v for k, v in model_cfg.items() if not k.startswith("_")})
    # every bapose tensor filled, every shape right (an HRNet stage layout timm does not have shows up here)
    check_state_dict_compatible(net.state_dict(), net_state, source=str(src))
    net_state = {k: net_state[k].contiguous() for k in net.state_dict()}  # in the net's order

    info = CheckpointInfo(model=model_cfg, num_keypoints=layout["num_keypoints"], meta=dmeta.name,
                          meta_spec=dmeta.spec(), codec=dekr_codec_spec(dmeta, size), input_size=size, ema=False,
                          eval_resize="dekr", converted_from={"format": "dekr", "file": src.name,
                                                              "sha256": _sha256(src), "tensors": len(state), **layout})
    checkpoint: dict[str, Any] = {"state_dict": {"net." + k: v for k, v in net_state.items()}, "epoch": None,
                                  "global_step": None}
    info.write(checkpoint)
    atomic_torch_save(checkpoint, dst)
    return {"src": str(src), "dst": str(dst), "width": width, "backbone": backbone,
            "num_keypoints": layout["num_keypoints"],
            "meta": dmeta.name, "input_size": size, "dekr_keys": len(state), "bapose_tensors": len(net_state),
            "stored_basis": stored_basis, "params": sum(p.numel() for p in net.parameters())}


# ---------------------------------------------------------------------------------------------------- rescoring
def convert_dekr_rescore(src: str | Path, dst: str | Path, meta: str | None = None) -> dict[str, Any]:
    """Convert DEKR's pose rescoring net (``final_rescore_coco_kpt.pth``: ``l1``, ``l2``, ``l3`` Linear layers) into
    a ``codec.rescore_path`` file with DEKR's feature definition (:func:`bapose.codecs.rescore.dekr_pose_features`)
    and its unbounded output (no sigmoid), as ``lib/utils/rescore.py`` uses it.

    Args:
        meta: ``coco`` | ``crowdpose`` (DEKR's two link sets); default from the input width (74 COCO, 59 CrowdPose).
    """
    from bapose.codecs.rescore import RescoreNet, save_rescore

    src, dst = Path(src), Path(dst)
    state = read_state_dict(src, what="DEKR rescoring")
    need = [f"l{i}.{p}" for i in (1, 2, 3) for p in ("weight", "bias")]
    missing = [k for k in need if k not in state]
    if missing:
        raise CheckpointError(f"file '{src}' is not a DEKR rescoring net: missing {', '.join(missing)} (it has "
                              f"{', '.join(list(state)[:4])}); expected PredictOKSNet weights "
                              f"(final_rescore_coco_kpt.pth)")
    left = sorted(set(state) - set(need))
    if left:
        raise CheckpointError(f"file '{src}': tensors {left[:6]} have no place in a rescoring net; expected only "
                              f"{need}")
    in_features, hidden = (int(s) for s in state["l1.weight"].shape[::-1])
    by_width = {3 * len(links) + DatasetMeta.preset(name).num_keypoints: name for name, links in DEKR_LINKS.items()}
    if meta is not None and meta not in DEKR_LINKS:
        raise ConfigError(f"--meta {meta}: DEKR's rescoring nets exist for {' and '.join(DEKR_LINKS)} only")
    name = meta or by_width.get(in_features)
    if name is None:
        known = ", ".join(f"{w} for {n}" for w, n in by_width.items())
        raise ConfigError(f"file '{src}': {in_features} input features match neither of DEKR's link sets ({known}); "
                          f"expected a DEKR rescoring net, or give --meta {'|'.join(DEKR_LINKS)}")
    links, k = DEKR_LINKS[name], DatasetMeta.preset(name).num_keypoints
    if 3 * len(links) + k != in_features:
        raise ConfigError(f"file '{src}' reads {in_features} features; DEKR's {name} features are 3 x {len(links)} "
                          f"links + {k} joints = {3 * len(links) + k}")
    net = RescoreNet(in_features, hidden, skeleton=links, num_keypoints=k, features="dekr",
                     torso=DEKR_RESCORE_TORSO, output="linear")
    ours = {"layers.0.weight": state["l1.weight"], "layers.0.bias": state["l1.bias"],
            "layers.2.weight": state["l2.weight"], "layers.2.bias": state["l2.bias"],
            "layers.4.weight": state["l3.weight"], "layers.4.bias": state["l3.bias"]}
    check_state_dict_compatible(net.state_dict(), ours, source=str(src))
    net.load_state_dict(ours, strict=True)
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_rescore(net, dst)
    return {"src": str(src), "dst": str(dst), "meta": name, "in_features": in_features, "hidden": hidden}


def describe(summary: Mapping[str, Any]) -> str:
    """One line about a conversion (what the CLI prints)."""
    if "width" in summary:
        basis = "; per-joint tap bases stored (regular_matrix is not the regular grid)" if summary["stored_basis"] \
            else ""
        return (f"bapose-convert: {summary['src']} (DEKR {summary['backbone']}, K={summary['num_keypoints']} "
                f"{summary['meta']}) -> {summary['dst']}: all {summary['dekr_keys']} DEKR tensors mapped onto "
                f"{summary['bapose_tensors']} bapose tensors, {summary['params'] / 1e6:.2f} M params{basis}; decodes "
                f"as DEKR (grid_align=dekr, pose_nms=dekr, eval_resize=dekr) at input size {summary['input_size']}")
    return (f"bapose-convert: {summary['src']} (DEKR rescoring net, {summary['meta']}, {summary['in_features']} "
            f"features, hidden {summary['hidden']}) -> {summary['dst']}: use it as codec.rescore_path="
            f"{summary['dst']}")

