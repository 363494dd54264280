"""Published DEKR checkpoints (HRNet/DEKR, Geng et al. 2021) as bapose checkpoints: ``bapose-convert dekr``.

DEKR's release ships plain ``state_dict`` files (``pose_dekr_hrnetw32_coco.pth``, ...) of its ``hrnet_dekr`` model:
an HRNet whose four stage-4 branches are upsampled and concatenated, a heatmap head and a per-joint adaptive offset
head. That is exactly :class:`bapose.models.BAPoseNet` with ``decoder=None`` (the DEKR baseline), so a conversion is a
renaming plus three layout changes, all checked against the outputs DEKR's own code produced
(``../shared/data/dekr_reference``):

- per-joint modules become grouped ones: joint ``j``'s ``offset_feature_layers.<j>.<b>`` convs, BN and
  ``offset_final_layer.<j>`` are slices ``j`` of one grouped conv / BN (groups = K);
- DEKR's AdaptBlock predicts the full matrix ``M`` and samples at ``p + M·R − R + t`` (``R``: its
  ``regular_matrix`` buffer); ours predicts ``A = M − I`` and samples at ``p + g + A·basis + t``: the identity is
  taken off the bias of the matrix conv, and an ``R`` other than the regular grid is kept as a stored basis;
- DEKR decodes joint ``j`` at grid pixel ``p`` as ``p − offset_j(p)``; ours as ``p + offset_j(p)``: the final
  offset convs are negated.

The checkpoint written carries the model config, the joint set and DEKR's decoding rules (``grid_align=dekr``: a
joint at grid ``g`` is at input pixel ``4·g``; ``pose_nms=dekr``; DEKR's eval resize), so ``bapose-eval``,
``bapose-predict``, ``bapose-export`` and ``model.init_from`` take it as they take our own.
``convert_dekr_rescore`` converts DEKR's pose rescoring net (``final_rescore_coco_kpt.pth``) the same way.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import bapose
from bapose.data.metadata import DatasetMeta
from bapose.errors import CheckpointError, ConfigError, DataError
from bapose.utils.checkpoint import atomic_torch_save, check_state_dict_compatible

__all__ = ["DEKR_LINKS", "DEKR_RESCORE_TORSO", "convert_dekr", "convert_dekr_rescore", "dekr_codec_spec", "dekr_layout",
           "dekr_to_bapose", "is_dekr_state_dict", "read_state_dict", "timm_backbone_for"]

# top-level module names of DEKR's HRNet (the same names and order as timm's HRNet features model)
BACKBONE_ROOTS = ("conv1", "bn1", "conv2", "bn2", "layer1", "transition1", "transition2", "transition3", "stage2",
                  "stage3", "stage4")
# one entry of each part a DEKR hrnet_dekr state_dict must have
REQUIRED_KEYS = ("conv1.weight", "layer1.0.conv1.weight", "transition1.0.0.weight", "stage4.0.branches.0.0.conv1.weight",
                 "transition_heatmap.0.weight", "head_heatmap.0.0.conv1.weight", "head_heatmap.1.weight",
                 "transition_offset.0.weight", "offset_feature_layers.0.0.adapt_conv.weight",
                 "offset_final_layer.0.weight")
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


# ---------------------------------------------------------------------------------------------------- reading
def read_state_dict(path: str | Path, what: str = "DEKR") -> dict[str, Tensor]:
    """The tensors of a plain ``state_dict`` file (``torch.load(weights_only=True)``), unwrapped.

    Releases wrap weights differently: ``{"state_dict": {...}}`` / ``{"model": {...}}`` and ``module.`` prefixes
    (``nn.DataParallel``) are removed.

    Raises:
        CheckpointError: missing file, not a torch file, or no tensors inside (naming the file).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} file '{path}' does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for foreign / truncated files
        with open(path, "rb") as f:
            head = f.read(2)
        if head == b"PK" and not zipfile.is_zipfile(path):
            reason = "a truncated zip archive"
        elif not zipfile.is_zipfile(path) and head[:1] != b"\x80":  # neither torch's zip format nor a pickle
            reason = "neither a torch zip archive nor a pickle"
        else:
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0].split(". ")[0]
        raise CheckpointError(f"{what} file '{path}' is not a readable torch weights file ({reason}); expected a "
                              f"state_dict saved with torch.save") from e
    # unwrap {"state_dict": ...} / {"model": ...} (a training checkpoint, a hub release) until tensors appear
    for _ in range(3):
        if isinstance(obj, Mapping) and not any(isinstance(v, Tensor) for v in obj.values()):
            inner = next((obj[k] for k in ("state_dict", "model", "net") if isinstance(obj.get(k), Mapping)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{what} file '{path}' holds a {type(obj).__name__}; expected a state_dict (a mapping "
                              f"of parameter names to tensors)")
    state = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not state:
        raise CheckpointError(f"{what} file '{path}' has no tensors (fields {sorted(map(str, obj))[:8]}); expected a "
                              f"state_dict")
    if all(k.startswith("module.") for k in state):  # saved from nn.DataParallel / DDP
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def is_dekr_state_dict(state: Mapping[str, Any]) -> bool:
    """Whether ``state`` has DEKR's head names (``transition_heatmap``, ``offset_final_layer``, ...)."""
    return all(k in state for k in ("transition_heatmap.0.weight", "head_heatmap.1.weight",
                                    "offset_final_layer.0.weight"))


def _check_dekr(path: Path, state: Mapping[str, Tensor], raw_keys: list[str]) -> None:
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if not missing:
        return
    if any(k.startswith(("net.", "ema.module.")) for k in raw_keys) or "heatmap_head.final.weight" in state:
        hint = " (this is a bapose checkpoint: give it to bapose-eval / model.init_from directly)"
    else:
        hint = ""
    raise CheckpointError(f"file '{path}' is not a DEKR state_dict: missing {', '.join(missing)} (it has "
                          f"{len(raw_keys)} tensors, e.g. {', '.join(raw_keys[:3])}); expected the weights of "
                          f"HRNet/DEKR's hrnet_dekr model (pose_dekr_hrnetw32_coco.pth){hint}")


# ---------------------------------------------------------------------------------------------------- layout
def _count(state: Mapping[str, Tensor], pattern: str) -> int:
    """How many consecutive indices ``i`` = 0, 1, ... have a key starting with ``pattern.format(i)``."""
    head, _, tail = pattern.partition("{}")
    found = {k[len(head):].split(".", 1)[0] for k in state if k.startswith(head)}
    if tail != ".":  # only "<prefix>{}." patterns are used
        raise ValueError(f"_count: unsupported pattern {pattern!r}")
    n = 0
    while str(n) in found:
        n += 1
    return n


def dekr_layout(state: Mapping[str, Tensor], path: str | Path = "<state_dict>") -> dict[str, int]:
    """What a DEKR state_dict describes: ``width``, ``num_keypoints`` K, ``heatmap_channels``, ``heatmap_blocks``,
    ``offset_channels_per_joint``, ``offset_blocks`` (read from the tensors, checked for consistency)."""
    def fail(what: str) -> CheckpointError:
        return CheckpointError(f"file '{path}': {what}; expected a consistent DEKR hrnet_dekr state_dict")

    final = state["head_heatmap.1.weight"]
    if final.dim() != 4 or final.shape[-1] != 1:
        raise fail(f"'head_heatmap.1.weight' has shape {tuple(final.shape)}; bapose's heads end in 1x1 convs "
                   f"(DEKR's FINAL_CONV_KERNEL 1)")
    k = int(final.shape[0]) - 1
    joints = _count(state, "offset_feature_layers.{}.")
    finals = _count(state, "offset_final_layer.{}.")
    if k < 1 or joints != k or finals != k:
        raise fail(f"the heatmap head has {k + 1} channels (K={k} + center) but there are {joints} "
                   f"'offset_feature_layers' and {finals} 'offset_final_layer' entries")
    per_joint = int(state["offset_feature_layers.0.0.adapt_conv.weight"].shape[0])
    transition = int(state["transition_offset.0.weight"].shape[0])
    if transition != k * per_joint:
        raise fail(f"'transition_offset.0.weight' has {transition} outputs; expected K x {per_joint} = "
                   f"{k * per_joint}")
    blocks = _count(state, "offset_feature_layers.0.{}.")
    if any(_count(state, f"offset_feature_layers.{j}." + "{}.") != blocks for j in range(k)):
        raise fail("joints have different numbers of adaptive blocks")
    return {"width": int(state["transition1.0.0.weight"].shape[0]), "num_keypoints": k,
            "heatmap_channels": int(state["transition_heatmap.0.weight"].shape[0]),
            "heatmap_blocks": _count(state, "head_heatmap.0.{}."),
            "offset_channels_per_joint": per_joint, "offset_blocks": blocks}


def timm_backbone_for(state: Mapping[str, Tensor], width: int, path: str | Path = "<state_dict>") -> str:
    """The timm HRNet whose layout (stage modules, blocks, widths) is exactly the DEKR file's backbone.

    DEKR's configs build any HRNet layout; timm has the standard one per width (``hrnet_w18`` ... ``hrnet_w64``) and
    small ones (``hrnet_w18_small``: branches 16/32/64/128). ``hrnet_w<width>`` is tried first, then every other
    timm HRNet; candidates are compared tensor by tensor (names and shapes) on the meta device (nothing allocated).

    Raises:
        CheckpointError: no timm HRNet matches (naming the closest one and how it differs).
    """
    import timm

    from bapose.models.backbone import OUT_INDICES

    ours = {k: tuple(v.shape) for k, v in state.items() if k.split(".")[0] in BACKBONE_ROOTS}
    names = [n for n in timm.list_models("hrnet_w*") if not n.endswith("_ssld")]  # _ssld: other weights, same nets
    # timm's stage table (pinned timm): only nets whose first branch has this width can match; skip building others
    stages = getattr(getattr(timm.models, "hrnet", None), "cfg_cls", None) or {}
    names = [n for n in names if n not in stages or stages[n]["stage2"]["num_channels"][0] == width] or names
    tried = []
    for name in sorted(names, key=lambda n: n != f"hrnet_w{width}"):
        with torch.device("meta"):
            body = timm.create_model(name, pretrained=False, features_only=True, feature_location="",
                                     out_indices=OUT_INDICES)
        theirs = {k: tuple(v.shape) for k, v in body.state_dict().items()}
        if theirs == ours:
            return name
        differs = sorted(set(ours) ^ set(theirs)) + sorted(k for k in set(ours) & set(theirs) if ours[k] != theirs[k])
        tried.append((len(differs), name, differs))
    n, name, differs = min(tried)
    raise CheckpointError(f"file '{path}': its HRNet-W{width} layout matches no timm HRNet; the closest, {name}, "
                          f"differs in {n} tensors ({', '.join(differs[:5])}{' ...' if n > 5 else ''})")


def _regular_grid() -> Tensor:
    ky, kx = torch.meshgrid(torch.arange(3.0) - 1, torch.arange(3.0) - 1, indexing="ij")
    return torch.stack((ky.flatten(), kx.flatten()))  # (2, 9): rows dy, dx, taps row-major


def dekr_to_bapose(state: Mapping[str, Tensor], layout: Mapping[str, int], path: str | Path = "<state_dict>"
                   ) -> tuple[dict[str, Tensor], bool]:
    """DEKR tensors -> ``BAPoseNet(decoder=None)`` tensors.

    Returns:
        ``(net_state, stored_basis)``: the net's state_dict (without the ``net.`` prefix) and whether the DEKR
        ``regular_matrix`` buffers differ from the regular grid (then the net needs ``adaptive_basis="stored"``).

    Raises:
        CheckpointError: a DEKR tensor that no rule maps (nothing may be left over), or one with the wrong shape.
    """
    k, c, nb = layout["num_keypoints"], layout["offset_channels_per_joint"], layout["offset_blocks"]
    out: dict[str, Tensor] = {}
    used: set[str] = set()

    def take(key: str) -> Tensor:
        if key not in state:
            raise CheckpointError(f"file '{path}': DEKR tensor '{key}' is missing; expected it for K={k}, "
                                  f"{nb} adaptive blocks per joint")
        used.add(key)
        return state[key]

    renames = (("transition_heatmap.", "heatmap_head.transition."), ("head_heatmap.0.", "heatmap_head.blocks."),
               ("head_heatmap.1.", "heatmap_head.final."), ("transition_offset.", "offset_head.transition."))
    for key in state:
        if key.split(".")[0] in BACKBONE_ROOTS:
            out["backbone.body." + key] = take(key)
            continue
        for old, new in renames:
            if key.startswith(old):
                out[new + key[len(old):]] = take(key)
                break

    eye = torch.tensor([1.0, 0.0, 0.0, 1.0])  # M = A + I, row-major: DEKR's matrix conv predicts A's diagonal + 1
    grid = _regular_grid()
    stored_basis = False
    bases = []
    for b in range(nb):
        pre = [f"offset_feature_layers.{j}.{b}." for j in range(k)]
        blk = f"offset_head.blocks.{b}."
        # per joint (a_yy, a_yx, a_xy, a_xx, t_y, t_x): the 4 matrix channels then the 2 translation channels
        out[blk + "transform.weight"] = torch.cat([torch.cat([take(p + "transform_matrix_conv.weight"),
                                                              take(p + "translation_conv.weight")]) for p in pre])
        out[blk + "transform.bias"] = torch.cat([torch.cat([take(p + "transform_matrix_conv.bias") - eye,
                                                            take(p + "translation_conv.bias")]) for p in pre])
        out[blk + "weight"] = torch.cat([take(p + "adapt_conv.weight") for p in pre])
        for name in ("weight", "bias", "running_mean", "running_var"):
            out[blk + "bn." + name] = torch.cat([take(p + "bn." + name) for p in pre])
        tracked = [take(p + "bn.num_batches_tracked") for p in pre if p + "bn.num_batches_tracked" in state]
        if tracked:
            out[blk + "bn.num_batches_tracked"] = torch.stack(tracked).max()
        basis = torch.stack([take(p + "regular_matrix").float() for p in pre])  # (K, 2, 9)
        stored_basis |= not torch.equal(basis, grid.expand_as(basis))
        bases.append(basis)
    if stored_basis:
        for b, basis in enumerate(bases):
            out[f"offset_head.blocks.{b}.basis"] = basis
    # DEKR's offsets point from the joint to the pixel (it decodes p - offset): ours point to the joint
    out["offset_head.final.weight"] = -torch.cat([take(f"offset_final_layer.{j}.weight") for j in range(k)])
    out["offset_head.final.bias"] = -torch.cat([take(f"offset_final_layer.{j}.bias") for j in range(k)])

    left = [key for key in state if key not in used]
    if left:
        raise CheckpointError(f"file '{path}': {len(left)} DEKR tensors have no place in the converted model: "
                              f"{', '.join(left[:8])}{' ...' if len(left) > 8 else ''}; expected only HRNet backbone "
                              f"and DEKR head tensors")
    return out, stored_basis


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
    if isinstance(meta, DatasetMeta):
        found, source = meta, f"dataset '{meta.name}'"
    elif meta:
        found, source = DatasetMeta.preset(str(meta)), f"--meta {meta}"
    elif ann_file:
        try:
            data = json.loads(Path(ann_file).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"file '{ann_file}': cannot read a COCO json ({e})") from None
        cats = [c for c in data.get("categories", []) or [] if isinstance(c, dict) and "keypoints" in c]
        if not cats:
            raise DataError(f"file '{ann_file}': no keypoint category (field 'categories[].keypoints'); expected a "
                            f"COCO keypoint annotation file")
        found, source = DatasetMeta.from_coco_category(cats[0]), f"--ann-file {ann_file}"
    elif k in presets:
        return DatasetMeta.preset(presets[k])
    else:
        raise ConfigError(f"file '{path}' has K={k} joints, which is neither COCO's 17 nor CrowdPose's 14; give "
                          f"the joint set with --meta coco|crowdpose or --ann-file <COCO keypoint json>")
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
    _check_dekr(src, state, list(state))
    layout = dekr_layout(state, src)
    net_state, stored_basis = dekr_to_bapose(state, layout, src)
    dmeta = resolve_meta(layout["num_keypoints"], meta, ann_file, src)
    width = layout["width"]
    backbone = timm_backbone_for(state, width, src)
    size = int(input_size or DEKR_INPUT_SIZES.get(width, 512))
    if size <= 0 or size % 32:
        raise ConfigError(f"--input-size {size}; expected a positive multiple of 32")

    model_cfg: dict[str, Any] = {"_target_": "bapose.models.BAPoseNet", "_convert_": "all",
                                 "backbone": backbone, "pretrained": False,
                                 "num_keypoints": layout["num_keypoints"], "heatmap_channels": layout["heatmap_channels"],
                                 "heatmap_blocks": layout["heatmap_blocks"],
                                 "offset_channels_per_joint": layout["offset_channels_per_joint"],
                                 "offset_blocks": layout["offset_blocks"], "adaptive_impl": "auto",
                                 "adaptive_basis": "stored" if stored_basis else "regular", "decoder": None}
    with torch.device("meta"):  # names and shapes only: no memory, no initialisation (a W48 converts in seconds)
        net = BAPoseNet(**{k: v for k, v in model_cfg.items() if not k.startswith("_")})
    # every bapose tensor filled, every shape right (an HRNet stage layout timm does not have shows up here)
    check_state_dict_compatible(net.state_dict(), net_state, source=str(src))
    net_state = {k: net_state[k].contiguous() for k in net.state_dict()}  # in the net's order

    info = {"version": bapose.__version__, "model": model_cfg, "num_keypoints": layout["num_keypoints"],
            "meta": dmeta.name, "meta_spec": dmeta.spec(), "codec": dekr_codec_spec(dmeta, size),
            "input_size": size, "ema": False, "eval_resize": "dekr",
            "converted_from": {"format": "dekr", "file": src.name, "sha256": _sha256(src), "tensors": len(state),
                               **layout}}
    atomic_torch_save({"state_dict": {"net." + k: v for k, v in net_state.items()}, "bapose": info,
                       "epoch": None, "global_step": None}, dst)
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

