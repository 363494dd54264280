"""``model.init_from``: start a net from another checkpoint's weights wherever they fit.

    bapose-train experiment=coco_w32_512 model.init_from=dekr_w32_coco.ckpt        # BAPose-W32 from DEKR-W32
    bapose-train model=bapose_w32 model.init_from=pose_dekr_hrnetw32_coco.pth      # a raw DEKR release file works too

The source may be a bapose checkpoint (EMA weights preferred, as ``bapose.load_model``), one written by
``bapose-convert dekr``, or a DEKR ``state_dict`` (converted on the fly). Loading is decided per layer, never per
tensor: a conv, BN, linear layer or adaptive block is loaded when every tensor it has exists in the source with the
same shape; a BN right after a conv that was not loaded is not loaded either (its statistics describe that conv's
output). Layers absent from the source (D-WASP when the source is DEKR) keep their fresh initialisation.
One log line says what was loaded, what was not and why, and what stayed fresh.

BAPose's heads read D-WASP's P channels where DEKR's read the C-channel concat (P = C/4), so from a DEKR source the
two head transitions (``heatmap_head.transition`` and ``offset_head.transition``: 1×1 conv C -> channels, + BN) do
not load; the heads' residual / adaptive blocks and final convs do.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from bapose.checkpoints.io import SAFE_GLOBALS, extract_net_state, read_state_dict
from bapose.errors import CheckpointError
from bapose.models.adaptive import AdaptiveBlock
from bapose.models.dekr import dekr_layout, dekr_to_bapose, is_dekr_state_dict

log = logging.getLogger("bapose")

__all__ = ["InitReport", "init_from_checkpoint", "read_source_state", "summary_by_part"]


@dataclass
class InitReport:
    """What :func:`init_from_checkpoint` did, by layer name (dotted module paths of the net).

    Attributes:
        source: the file, and what it was read as (``bapose checkpoint`` / ``DEKR state_dict``).
        loaded: layers loaded from the source.
        skipped: ``(layer, reason)`` of layers present in the source that were not loaded.
        fresh: layers with no tensor in the source (kept at their initialisation).
        unused: source tensors with no place here (dotted prefixes ending in ``.*`` where a whole part is unused).
        tensors: number of tensors loaded.
    """

    source: str
    loaded: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    tensors: int = 0

    def message(self) -> str:
        """The one log line."""
        every = self.loaded + [n for n, _ in self.skipped] + self.fresh
        loaded = ", ".join(_compress(self.loaded, every)) or "nothing"
        skipped = "; ".join(f"{name} ({why})" for name, why in self.skipped) or "none"
        fresh = ", ".join(_compress(self.fresh, every)) or "none"
        unused = ", ".join(self.unused) or "none"
        return (f"model.init_from {self.source}: loaded {self.tensors} tensors: {loaded} | not loaded: {skipped} | "
                f"fresh (not in the source): {fresh} | source tensors without a place here: {unused}")


def _compress(names: Iterable[str], universe: Iterable[str], tensors: bool = False) -> list[str]:
    """The shortest dotted prefixes covering exactly ``names`` within ``universe`` (``backbone`` rather than its 300
    layers when every layer under ``backbone`` is in ``names``)."""
    chosen = set(names)
    if not chosen:
        return []
    universe = set(universe) | chosen
    out: list[str] = []
    for name in sorted(chosen):
        parts = name.split(".")
        best = name
        for i in range(1, len(parts)):
            prefix = ".".join(parts[:i])
            under = [u for u in universe if u == prefix or u.startswith(prefix + ".")]
            if all(u in chosen for u in under):
                best = prefix + (".*" if tensors else "")
                break
        if best not in out:
            out.append(best)
    return out


def read_source_state(path: str | Path, prefer_ema: bool = True) -> tuple[dict[str, Tensor], str]:
    """The net tensors of ``path`` in bapose names, and what the file was read as.

    Raises:
        CheckpointError: unreadable file, or neither a bapose checkpoint nor a DEKR state_dict (naming it).
    """
    path = Path(path)
    # Lightning checkpoints hold loop / optimizer states too: the same allow-list as bapose's own loading
    with torch.serialization.safe_globals(SAFE_GLOBALS):
        state = read_state_dict(path, what="model.init_from")
    if is_dekr_state_dict(state):
        net_state, _ = dekr_to_bapose(state, dekr_layout(state, path), path)
        return net_state, f"'{path}' (DEKR state_dict)"
    ema = prefer_ema and any(k.startswith("ema.module.") for k in state)
    if ema or any(k.startswith("net.") for k in state):
        return extract_net_state({"state_dict": state}, prefer_ema), \
            f"'{path}' (bapose checkpoint{', EMA weights' if ema else ''})"
    if any(k.startswith(("backbone.", "heatmap_head.", "offset_head.")) for k in state):
        return state, f"'{path}' (bapose net state_dict)"
    raise CheckpointError(f"model.init_from: file '{path}' is neither a bapose checkpoint (keys 'net.*') nor a DEKR "
                          f"state_dict (keys 'transition_heatmap.*', 'offset_final_layer.*'): it has "
                          f"{', '.join(list(state)[:4])}; expected one of them")


def _units(net: nn.Module) -> list[tuple[str, nn.Module, dict[str, Tensor]]]:
    """The layers loading decides on: every module owning tensors directly, an adaptive block as a whole.

    Returns ``(name, module, {full key: tensor})`` in module order (persistent tensors only).
    """
    state = net.state_dict()
    units = []
    inside_block: list[str] = []
    for name, module in net.named_modules():
        if any(name.startswith(b + ".") for b in inside_block):
            continue
        if isinstance(module, AdaptiveBlock):
            inside_block.append(name)
            keys = [k for k in state if k.startswith(name + ".")]
        else:
            own = [n for n, _ in module.named_parameters(recurse=False)] + \
                  [n for n, _ in module.named_buffers(recurse=False)]
            keys = [f"{name}.{n}" if name else n for n in own]
            keys = [k for k in keys if k in state]  # non-persistent buffers are not weights
        if keys:
            units.append((name, module, {k: state[k] for k in keys}))
    return units


def _previous_sibling(net: nn.Module, name: str) -> str | None:
    """The module just before ``name`` inside its parent (a conv before its BN in a conv-BN-ReLU Sequential)."""
    parent_name, _, child = name.rpartition(".")
    parent = net.get_submodule(parent_name) if parent_name else net
    names = [n for n, _ in parent.named_children()]
    i = names.index(child)
    if i == 0:
        return None
    return f"{parent_name}.{names[i - 1]}" if parent_name else names[i - 1]


def init_from_checkpoint(net: nn.Module, path: str | Path, prefer_ema: bool = True) -> InitReport:
    """Load every layer of ``path`` that fits ``net`` (see the module docstring) and log one line.

    Returns:
        the :class:`InitReport` (also what the log line says).
    """
    source, described = read_source_state(path, prefer_ema=prefer_ema)
    report = InitReport(described)
    load: dict[str, Tensor] = {}
    status: dict[str, bool] = {}
    own_keys: set[str] = set()
    for name, module, tensors in _units(net):
        own_keys.update(tensors)
        present = [k for k in tensors if k in source]
        if not present:
            report.fresh.append(name)
            status[name] = False
            continue
        why = None
        take = dict(tensors)
        for key, mine in tensors.items():
            if key not in source:
                if key.endswith(".basis") and isinstance(module, AdaptiveBlock):
                    take[key] = module.grid.expand_as(mine).clone()  # a regular-basis source: its basis is the grid
                    continue
                why = f"'{key}' missing from the source"
                break
            theirs = source[key]
            if tuple(theirs.shape) != tuple(mine.shape):
                why = f"{key.rsplit('.', 1)[-1]} {tuple(theirs.shape)} in the source, {tuple(mine.shape)} here"
                break
            take[key] = theirs
        if why is None and isinstance(module, AdaptiveBlock) and module.basis_kind == "regular":
            basis = source.get(f"{name}.basis")
            if basis is not None and not torch.equal(basis, module.grid.expand_as(basis)):
                why = "the source's tap basis is not the regular grid (build this net with adaptive_basis=stored)"
        if why is None and isinstance(module, nn.modules.batchnorm._BatchNorm):
            prev = _previous_sibling(net, name)
            if prev is not None and status.get(prev) is False:
                why = f"BN after {prev}, which was not loaded"
        if why is not None:
            report.skipped.append((name, why))
            status[name] = False
            continue
        status[name] = True
        report.loaded.append(name)
        load.update({k: v for k, v in take.items() if k in tensors})
    report.unused = _compress([k for k in source if k not in own_keys], source, tensors=True)
    report.tensors = len(load)
    if not load:
        raise CheckpointError(f"model.init_from: nothing of {described} fits this net ({type(net).__name__}); "
                              f"expected a checkpoint sharing at least its backbone")
    with torch.no_grad():
        state = net.state_dict()
        for key, value in load.items():
            state[key].copy_(value.to(state[key].dtype))
    log.info(report.message())
    return report


def summary_by_part(report: InitReport) -> dict[str, str]:
    """``{"backbone": "loaded", "decoder": "fresh", ...}``: the status of each top-level part (mixed when its layers
    differ); handy in notebooks and tests."""
    out: dict[str, set[str]] = {}
    for kind, names in (("loaded", report.loaded), ("skipped", [n for n, _ in report.skipped]),
                        ("fresh", report.fresh)):
        for n in names:
            out.setdefault(n.split(".")[0], set()).add(kind)
    return {part: kinds.pop() if len(kinds) == 1 else "mixed" for part, kinds in out.items()}
