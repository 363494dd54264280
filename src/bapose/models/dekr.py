"""DEKR's ``hrnet_dekr`` weights in bapose's names: pure ``state_dict`` functions beside the model (no file is read).

DEKR's release (HRNet/DEKR, Geng et al. 2021) is exactly :class:`bapose.models.BAPoseNet` with ``decoder=None``, so
its tensors map onto ours by a renaming plus three layout changes:

- per-joint modules become grouped ones: joint ``j``'s ``offset_feature_layers.<j>.<b>`` convs, BN and
  ``offset_final_layer.<j>`` are slices ``j`` of one grouped conv / BN (groups = K);
- DEKR's AdaptBlock predicts the full matrix ``M`` and samples at ``p + M·R − R + t`` (``R``: its
  ``regular_matrix`` buffer); ours predicts ``A = M − I`` and samples at ``p + g + A·basis + t``: the identity is
  taken off the bias of the matrix conv, and an ``R`` other than the regular grid is kept as a stored basis;
- DEKR decodes joint ``j`` at grid pixel ``p`` as ``p − offset_j(p)``; ours as ``p + offset_j(p)``: the final
  offset convs are negated.

As timm's ``checkpoint_filter_fn`` sits beside its model, these sit beside ours; reading files and writing
checkpoints is :mod:`bapose.checkpoints.convert`'s (``bapose-convert dekr``) and
:mod:`bapose.checkpoints.init_from`'s (``model.init_from``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bapose.errors import CheckpointError

__all__ = ["BACKBONE_ROOTS", "check_dekr_keys", "dekr_layout", "dekr_model_config", "dekr_to_bapose",
           "is_dekr_state_dict", "timm_backbone_for"]

# top-level module names of DEKR's HRNet (the same names and order as timm's HRNet features model)
BACKBONE_ROOTS = ("conv1", "bn1", "conv2", "bn2", "layer1", "transition1", "transition2", "transition3", "stage2",
                  "stage3", "stage4")
# one entry of each part a DEKR hrnet_dekr state_dict must have
REQUIRED_KEYS = ("conv1.weight", "layer1.0.conv1.weight", "transition1.0.0.weight", "stage4.0.branches.0.0.conv1.weight",
                 "transition_heatmap.0.weight", "head_heatmap.0.0.conv1.weight", "head_heatmap.1.weight",
                 "transition_offset.0.weight", "offset_feature_layers.0.0.adapt_conv.weight",
                 "offset_final_layer.0.weight")


def is_dekr_state_dict(state: Mapping[str, Any]) -> bool:
    """Whether ``state`` has DEKR's head names (``transition_heatmap``, ``offset_final_layer``, ...)."""
    return all(k in state for k in ("transition_heatmap.0.weight", "head_heatmap.1.weight",
                                    "offset_final_layer.0.weight"))


def check_dekr_keys(path: Path, state: Mapping[str, Tensor], raw_keys: list[str]) -> None:
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
    k, nb = layout["num_keypoints"], layout["offset_blocks"]
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


def dekr_model_config(layout: Mapping[str, int], backbone: str, stored_basis: bool) -> dict[str, Any]:
    """The ``conf/model`` node of the ``BAPoseNet(decoder=None)`` a DEKR file with ``layout`` becomes."""
    return {"_target_": "bapose.models.BAPoseNet", "_convert_": "all", "backbone": backbone, "pretrained": False,
            "num_keypoints": layout["num_keypoints"], "heatmap_channels": layout["heatmap_channels"],
            "heatmap_blocks": layout["heatmap_blocks"], "offset_channels_per_joint": layout["offset_channels_per_joint"],
            "offset_blocks": layout["offset_blocks"], "adaptive_impl": "auto",
            "adaptive_basis": "stored" if stored_basis else "regular", "decoder": None}
