"""Checkpoint files: written so they survive crashes, read so they refuse to load into the wrong model.

* :class:`AtomicCheckpointIO` — Lightning's ``TorchCheckpointIO`` writing ``<path>.tmp-<pid>`` beside the target,
  ``fsync`` then ``os.replace``: a crash (or SIGKILL) during a save leaves the previous ``last.ckpt`` intact.
* :func:`load_checkpoint_safely` — ``torch.load(weights_only=True)`` with an explicit allow-list of the few non-tensor
  types Lightning writes; a truncated or foreign file becomes a :class:`~bapose.errors.CheckpointError` naming it.
* :func:`check_state_dict_compatible` / :func:`load_net_weights` — name the keys and shapes that differ when a
  checkpoint belongs to another model or another joint count K.
* :func:`assert_finite_state` — a checkpoint with NaN/inf weights is never written.

* :func:`read_state_dict` — the tensors of a plain ``state_dict`` file (a DEKR release, a hub file), unwrapped.

What a checkpoint says about itself (its ``"bapose"`` entry) is :class:`bapose.checkpoints.schema.CheckpointInfo`.
"""

from __future__ import annotations

import collections
import contextlib
import os
import pickle
import re
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import Tensor, nn

from bapose.errors import CheckpointError

# Types a Lightning checkpoint may hold besides tensors and builtin containers. torch >= 2.6 already accepts
# MultiStepLR's Counter and OrderedDict; they are listed so older/newer torch behave the same. ModelCheckpoint and
# the loops store plain dicts of numbers and strings.
SAFE_GLOBALS: list[Any] = [collections.Counter, collections.OrderedDict, collections.defaultdict]


def _add_optional_safe_globals() -> None:
    # `save_hyperparameters` of a DictConfig stores omegaconf containers; bapose never does, but a user's module
    # may — allowing these keeps `weights_only=True` loading usable without falling back to full pickle.
    with contextlib.suppress(ImportError):
        import typing

        from omegaconf import DictConfig, ListConfig
        from omegaconf.base import ContainerMetadata, Metadata
        from omegaconf.nodes import AnyNode

        # the builtin types appear as the containers' key/element type hints
        SAFE_GLOBALS.extend([DictConfig, ListConfig, ContainerMetadata, Metadata, AnyNode, typing.Any, dict, list,
                             int, float, str, bool])


_add_optional_safe_globals()


def assert_finite_state(state: Mapping[str, Any], source: str = "checkpoint") -> None:
    """Raise :class:`CheckpointError` naming the first tensors holding NaN or inf (floating tensors only).

    One device sync per device the tensors live on (the flags are stacked there and read once), not one per tensor:
    it runs at every checkpoint save (``BAPoseModule.on_save_checkpoint``).
    """
    floats = [(k, v) for k, v in state.items() if isinstance(v, Tensor) and v.is_floating_point()]
    by_device: dict[torch.device, list[tuple[str, Tensor]]] = collections.defaultdict(list)
    for key, value in floats:
        by_device[value.device].append((key, value))
    bad: list[str] = []
    for items in by_device.values():
        finite = torch.stack([torch.isfinite(v).all() for _, v in items]).cpu()
        bad += [key for (key, _), ok in zip(items, finite.tolist()) if not ok]
    if bad:
        order = {k: i for i, (k, _) in enumerate(floats)}
        bad.sort(key=order.__getitem__)
        shown = ", ".join(bad[:5]) + (f" (+{len(bad) - 5} more)" if len(bad) > 5 else "")
        raise CheckpointError(f"{source}: refusing to save non-finite weights: field 'state_dict' entries {shown} "
                              f"hold NaN/inf; expected finite values (the run diverged)")


def atomic_torch_save(obj: Any, path: str | os.PathLike, save: Callable[[Any, Any], None] | None = None) -> None:
    """``torch.save`` to ``path`` atomically: temp file in the same folder, flush, fsync, ``os.replace``, dir fsync.

    The temp file is removed on any exception; the previous file at ``path`` is untouched until the final rename.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            (save or torch.save)(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    # make the rename itself durable (not available on every platform / filesystem)
    with contextlib.suppress(OSError):
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` with local saves that are atomic on every filesystem and durable, and
    ``weights_only`` loads with an allow-list and one-line errors.

    Lightning's own save (``_atomic_save``) writes through an fsspec transaction whose temp file lives in the system
    temp dir (``tempfile.mkstemp``) and is moved with ``shutil.move``: where ``/tmp`` is another filesystem than the
    run folder (a node-local ``/tmp``, runs on NFS / Lustre) that move is a copy into the destination, so a job killed
    during it leaves a truncated ``last.ckpt``; and nothing is fsync'ed. Here the temp file sits beside the target,
    is fsync'ed and ``os.replace``'d (then the folder is fsync'ed): the previous file stays whole until the new one
    is. Remote (``s3://``...) paths keep Lightning's save. A checkpoint whose weights hold NaN/inf is refused
    (:func:`assert_finite_state`, once per save: the only check, one device sync per device).

    Plug it into the Trainer with ``plugins=[AtomicCheckpointIO()]`` (the ``conf/trainer`` presets do).
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if "://" in str(path) and not str(path).startswith("file://"):
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options (got {storage_options!r})")
        if "state_dict" in checkpoint:  # the one finite-weights check of a save (one device sync per device)
            assert_finite_state(checkpoint["state_dict"], source=f"checkpoint '{path}' (epoch "
                                f"{checkpoint.get('epoch')}, step {checkpoint.get('global_step')})")
        atomic_torch_save(checkpoint, str(path).removeprefix("file://"))

    def load_checkpoint(self, path: Any, map_location: Any | None = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        if "://" in str(path) and not str(path).startswith("file://"):
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        if weights_only is False:  # an explicit opt-out by the caller (trusted file)
            return super().load_checkpoint(path, map_location=map_location, weights_only=False)
        return load_checkpoint_safely(str(path).removeprefix("file://"), map_location=map_location or "cpu")


def load_checkpoint_safely(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``torch.load(weights_only=True)`` and :data:`SAFE_GLOBALS` allowed.

    Returns:
        The checkpoint dict (``state_dict``, Lightning's loop/optimizer states, ``bapose`` metadata when present).

    Raises:
        CheckpointError: missing, truncated/corrupt, holding disallowed objects, or not a dict with ``state_dict``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file '{path}' does not exist")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refuses arbitrary classes: say which, and that this is about trust, not corruption
        msg = str(e).strip().splitlines()
        first = next((line for line in msg if "GLOBAL" in line or "Unsupported" in line), msg[0] if msg else "")
        named = re.search(r"Unsupported global: GLOBAL ([\w.]+)", first)
        if named:  # torch goes on to suggest allow-listing it, which is exactly what must not happen blindly
            first = f"unsupported global '{named[1]}'"
        raise CheckpointError(f"checkpoint file '{path}' holds objects outside the weights-only allow-list "
                              f"({first.strip()}); expected tensors, numbers, strings and containers. Load it with "
                              f"weights_only=False only if you trust its source") from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        size = path.stat().st_size
        # torch's first sentence says what failed; the rest of its text is advice this message already gives
        reason = _first_sentence(e)
        raise CheckpointError(f"checkpoint file '{path}' ({size} bytes) is truncated or corrupt: {reason}; "
                              f"expected a complete torch.save zip archive") from e
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        keys = sorted(ckpt)[:10] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"checkpoint file '{path}' has no field 'state_dict' (found {keys}); "
                              f"expected a Lightning / bapose checkpoint")
    return ckpt


def _first_sentence(err: BaseException) -> str:
    """What failed, in torch's own first sentence (the rest of its text is advice these messages already give)."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0].split(". ")[0]


def _describe(keys: Iterable[str], limit: int = 8) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:limit]) + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


# model config keys that change how a net runs or starts, never the shape of its weights: not reported as differences
_WEIGHT_NEUTRAL_MODEL_KEYS = frozenset({"pretrained", "adaptive_impl", "_convert_", "init_from"})


def diff_model_config(expected: Any, found: Any, prefix: str = "model", limit: int = 6) -> list[str]:
    """``["model.decoder: checkpoint {...} vs this run None", ...]``: the leaves where two model configs differ
    (nested mappings are walked; keys in :data:`_WEIGHT_NEUTRAL_MODEL_KEYS` are ignored)."""
    out: list[str] = []

    def walk(a: Any, b: Any, path: str) -> None:
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            for key in sorted(set(a) | set(b), key=str):
                if key not in _WEIGHT_NEUTRAL_MODEL_KEYS:
                    walk(a.get(key), b.get(key), f"{path}.{key}")
        elif a != b:
            out.append(f"{path}: checkpoint {b!r} vs this run {a!r}")

    walk(expected, found, prefix)
    return out[:limit] + ([f"(+{len(out) - limit} more)"] if len(out) > limit else [])


def check_state_dict_compatible(expected: Mapping[str, Tensor], found: Mapping[str, Tensor],
                                source: str = "checkpoint", expected_meta: Mapping[str, Any] | None = None,
                                found_meta: Mapping[str, Any] | None = None) -> None:
    """Raise :class:`CheckpointError` listing missing keys, unexpected keys and shape mismatches.

    Args:
        expected: the target model's ``state_dict``.
        found: the checkpoint's (already prefix-stripped) ``state_dict``.
        source: how to name the checkpoint in the message (its path).
        expected_meta / found_meta: optional ``bapose`` metadata; a differing K or dataset is named first, and
            when the weights do not fit and both carry a ``model`` config, the config fields that differ.
    """
    problems: list[str] = []
    if expected_meta and found_meta:
        for field in ("num_keypoints", "meta"):
            a, b = expected_meta.get(field), found_meta.get(field)
            if a is not None and b is not None and a != b:
                problems.append(f"field 'bapose.{field}' is {b!r} but the model expects {a!r}")
    num_meta = len(problems)
    missing = set(expected) - set(found)
    unexpected = set(found) - set(expected)
    shapes = [f"{k}: checkpoint {tuple(found[k].shape)} vs model {tuple(expected[k].shape)}"
              for k in sorted(set(expected) & set(found))
              if isinstance(found[k], Tensor) and tuple(found[k].shape) != tuple(expected[k].shape)]
    if missing:
        problems.append(f"{len(missing)} keys missing from the checkpoint: {_describe(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_describe(unexpected)}")
    if shapes:
        shown = "; ".join(shapes[:8]) + (f" (+{len(shapes) - 8} more)" if len(shapes) > 8 else "")
        problems.append(f"{len(shapes)} shape mismatches: {shown}")
    if problems and expected_meta and found_meta and expected_meta.get("model") and found_meta.get("model"):
        # the weights do not fit: say in config terms why (decoder: null vs D-WASP, another width or K)
        differs = diff_model_config(expected_meta["model"], found_meta["model"])
        if differs:
            problems.insert(num_meta, "model config differs: " + "; ".join(differs))
    if problems:
        raise CheckpointError(f"checkpoint '{source}' does not fit this model (another architecture or joint count "
                              f"K?): " + " | ".join(problems))


def extract_net_state(ckpt: Mapping[str, Any], prefer_ema: bool = True) -> dict[str, Tensor]:
    """The net's weights from a bapose Lightning checkpoint: ``ema.module.*`` when present and preferred, else
    ``net.*``.

    A bare ``state_dict`` without either prefix (a plain ``net.state_dict()``) is returned unchanged.
    """
    state = ckpt["state_dict"]
    for prefix in (("ema.module.", "net.") if prefer_ema else ("net.",)):
        sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if sub:
            return sub
    return dict(state)


def load_net_weights(net: nn.Module, path: str | os.PathLike, prefer_ema: bool = True,
                     expected_meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Load a checkpoint's net weights (EMA when present) into ``net`` after checking keys and shapes.

    Returns:
        The whole checkpoint dict (for its ``bapose`` metadata, epoch, ...).
    """
    from bapose.checkpoints.schema import CheckpointInfo

    ckpt = load_checkpoint_safely(path)
    state = extract_net_state(ckpt, prefer_ema=prefer_ema)
    check_state_dict_compatible(net.state_dict(), state, source=str(path), expected_meta=expected_meta,
                                found_meta=CheckpointInfo.of(ckpt, path).to_dict())
    net.load_state_dict(state, strict=True)
    return ckpt


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
            reason = _first_sentence(e)
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
