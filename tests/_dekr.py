"""DEKR checkpoints for tests: the reference cases of ``../shared/data/dekr_reference`` and layouts built from them.

Each reference case is a ``*.keys.json`` (DEKR's key names, shapes and order) + ``*.outputs.pt`` (what DEKR's own
model code computed); ``dekr_state_dict.py`` there rebuilds the weights from a keys file by a fixed rule.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import torch

from conftest import shared_data_dir


def reference_dir() -> Path:
    return shared_data_dir() / "dekr_reference"


def reference_cases() -> list[Path]:
    """Every ``*.keys.json`` of the reference folder that has its outputs (all cases, not a fixed list)."""
    return sorted(p for p in reference_dir().glob("*.keys.json")
                  if p.with_name(p.name.replace(".keys.json", ".outputs.pt")).is_file())


def rule():
    """The reference folder's ``dekr_state_dict`` function (the rule filling a keys file with values)."""
    path = reference_dir() / "dekr_state_dict.py"
    spec = importlib.util.spec_from_file_location("dekr_state_dict", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dekr_state_dict


def outputs_of(keys_json: Path) -> dict[str, torch.Tensor]:
    return torch.load(keys_json.with_name(keys_json.name.replace(".keys.json", ".outputs.pt")), weights_only=True)


def write_state_dict(keys_json: Path, dst: Path) -> Path:
    """The case's DEKR state_dict as a ``.pth`` (a plain state_dict, as DEKR's release ships)."""
    torch.save(rule()(keys_json), dst)
    return dst


_JOINT = re.compile(r"^(offset_feature_layers|offset_final_layer)\.(\d+)\.(.*)$")


def layout_for_k(spec: dict[str, Any], k: int) -> dict[str, Any]:
    """A DEKR keys spec for another joint count, generalised from a given one of the same width.

    The backbone and the heatmap head's body do not depend on K; the heatmap head's last conv has K+1 outputs, the
    offset transition 15·K, and joint 0's per-joint entries repeat for every joint (DEKR's module order kept).
    """
    k0 = spec["num_joints"]
    per_joint = [(m.group(1), m.group(3), shape, dtype) for name, shape, dtype in spec["keys"]
                 if (m := _JOINT.match(name)) and m.group(2) == "0"]
    keys = []
    for name, shape, dtype in spec["keys"]:
        m = _JOINT.match(name)
        if m:
            continue
        if name.startswith("head_heatmap.1."):
            shape = [k + 1, *shape[1:]]
        elif name.startswith("transition_offset."):
            shape = [shape[0] // k0 * k, *shape[1:]] if shape else shape
        keys.append([name, shape, dtype])
    for part in ("offset_feature_layers", "offset_final_layer"):
        for j in range(k):
            keys += [[f"{part}.{j}.{rest}", shape, dtype] for p, rest, shape, dtype in per_joint if p == part]
    return {**spec, "num_joints": k, "keys": keys}


def official_layouts() -> dict[tuple[int, int], dict[str, Any]]:
    """``{(width, K): keys spec}`` of DEKR's four released checkpoints (W32 / W48 at K = 17 COCO and 14 CrowdPose):
    given files where they exist, else generalised from the file of the same width."""
    given = {}
    for path in reference_dir().glob("*.keys.json"):
        spec = json.loads(path.read_text())
        given[(int(spec["width"][1:]), int(spec["num_joints"]))] = spec
    out = {}
    for width in (32, 48):
        for k in (17, 14):
            if (width, k) in given:
                out[(width, k)] = given[(width, k)]
            else:
                base = next(s for (w, _), s in sorted(given.items()) if w == width)
                out[(width, k)] = layout_for_k(base, k)
    return out


def zeros_state_dict(spec: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Tensors of a keys spec (zeros; DEKR's regular_matrix buffers hold its regular 3x3 grid)."""
    grid = torch.tensor([[-1.0, -1, -1, 0, 0, 0, 1, 1, 1], [-1.0, 0, 1, -1, 0, 1, -1, 0, 1]])
    out = {}
    for name, shape, dtype in spec["keys"]:
        if name.endswith("regular_matrix"):
            out[name] = grid.clone()
        else:
            out[name] = torch.zeros(shape, dtype=torch.long if dtype == "int64" else torch.float32)
    return out


def bapose_to_dekr(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A ``decoder=None`` BAPoseNet written in DEKR's layout (the inverse of ``bapose-convert dekr``), e.g. a tiny
    DEKR-format file on HRNet-W18-small for fast tests; a stored tap basis becomes DEKR's ``regular_matrix``."""
    state = net.state_dict()
    k = net.num_keypoints
    out = {key[len("backbone.body."):]: v.clone() for key, v in state.items() if key.startswith("backbone.body.")}
    for ours, theirs in (("heatmap_head.transition.", "transition_heatmap."),
                         ("offset_head.transition.", "transition_offset."), ("heatmap_head.blocks.", "head_heatmap.0."),
                         ("heatmap_head.final.", "head_heatmap.1.")):
        out.update({theirs + key[len(ours):]: v.clone() for key, v in state.items() if key.startswith(ours)})
    c = net.offset_head.blocks[0].channels
    grid = torch.tensor([[-1.0, -1, -1, 0, 0, 0, 1, 1, 1], [-1.0, 0, 1, -1, 0, 1, -1, 0, 1]])
    eye = torch.tensor([1.0, 0.0, 0.0, 1.0])
    for b, block in enumerate(net.offset_head.blocks):
        pre = f"offset_head.blocks.{b}."
        for j in range(k):
            d = f"offset_feature_layers.{j}.{b}."
            tw, tb = state[pre + "transform.weight"][6 * j: 6 * j + 6], state[pre + "transform.bias"][6 * j: 6 * j + 6]
            out[d + "regular_matrix"] = state[pre + "basis"][j].clone() if block.basis_kind == "stored" else grid
            out[d + "transform_matrix_conv.weight"] = tw[:4].clone()
            out[d + "transform_matrix_conv.bias"] = tb[:4] + eye
            out[d + "translation_conv.weight"] = tw[4:].clone()
            out[d + "translation_conv.bias"] = tb[4:].clone()
            out[d + "adapt_conv.weight"] = state[pre + "weight"][c * j: c * (j + 1)].clone()
            for name in ("weight", "bias", "running_mean", "running_var"):
                out[d + "bn." + name] = state[pre + "bn." + name][c * j: c * (j + 1)].clone()
            out[d + "bn.num_batches_tracked"] = state[pre + "bn.num_batches_tracked"].clone()
    for j in range(k):
        out[f"offset_final_layer.{j}.weight"] = -state["offset_head.final.weight"][2 * j: 2 * j + 2]
        out[f"offset_final_layer.{j}.bias"] = -state["offset_head.final.bias"][2 * j: 2 * j + 2]
    return out
