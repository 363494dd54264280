"""What a bapose checkpoint says about itself: the typed ``"bapose"`` entry, written by training and by
``bapose-convert``, read by ``bapose.load_model``, ``bapose-eval``, ``-predict`` and ``-export``.

    info = CheckpointInfo.of(load_checkpoint_safely(path), source=path)
    info.model, info.num_keypoints, info.joint_set(), info.input_size, info.codec, info.data, info.eval_resize

A checkpoint holds only plain values here (dicts, lists, strings, numbers), so it loads with
``torch.load(weights_only=True)``. Files written by older bapose versions lack some fields: they read as ``None``
(``ema`` as ``False``) and every reader says what it does without them. Fields of a newer version that this one
does not know are kept in ``extra`` and written back unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bapose._version import __version__
from bapose.data.metadata import DatasetMeta
from bapose.errors import CheckpointError

__all__ = ["CHECKPOINT_KEY", "CheckpointInfo"]

# the checkpoint dict's key of the entry (beside Lightning's state_dict, loops, optimizer states)
CHECKPOINT_KEY = "bapose"

# field -> the plain types it may hold (None is always allowed: an older file, or not known when written)
_TYPES: dict[str, tuple[type, ...]] = {
    "version": (str,), "model": (dict,), "num_keypoints": (int,), "meta": (str,), "meta_spec": (dict,),
    "codec": (dict,), "input_size": (int, list, tuple), "ema": (bool,), "data": (dict,), "eval_resize": (str,),
    "converted_from": (dict,),
}


@dataclass
class CheckpointInfo:
    """The ``"bapose"`` entry of a checkpoint.

    Attributes:
        version: the bapose version that wrote it.
        model: the ``conf/model`` node the net was built from (``_target_`` and its arguments): the net is rebuilt
            from it, never with downloaded weights.
        num_keypoints: K.
        meta: the joint set's name; ``meta_spec`` the whole joint set as ``DatasetMeta.build`` kwargs.
        codec: the codec's fields (decode knobs left ``None`` at eval / predict time take these).
        input_size: the training input size (an int, or ``[H, W]``).
        ema: whether ``state_dict`` holds EMA weights (``ema.module.*``) too.
        data: the dataset config it was trained on (``BAPoseDataModule.checkpoint_spec()``): ``bapose-eval``'s default.
        eval_resize: how val/test images are resized for this net (``dekr`` for converted DEKR files).
        converted_from: for ``bapose-convert`` files: the source file, its sha256 and layout.
        extra: fields this version does not know (kept as they are).
    """

    version: str | None = None
    model: dict[str, Any] | None = None
    num_keypoints: int | None = None
    meta: str | None = None
    meta_spec: dict[str, Any] | None = None
    codec: dict[str, Any] | None = None
    input_size: int | list[int] | None = None
    ema: bool = False
    data: dict[str, Any] | None = None
    eval_resize: str | None = None
    converted_from: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, checkpoint: Mapping[str, Any], source: object = "checkpoint") -> CheckpointInfo:
        """The entry of a loaded checkpoint dict (all ``None`` for a file without one, e.g. a plain Lightning
        checkpoint). Raises CheckpointError naming the file and field when a field has the wrong type."""
        raw = checkpoint.get(CHECKPOINT_KEY)
        if raw is None:
            return cls()
        if not isinstance(raw, Mapping):
            raise CheckpointError(f"checkpoint '{source}': field '{CHECKPOINT_KEY}' is a {type(raw).__name__}; "
                                  f"expected a mapping (bapose's entry)")
        return cls.from_dict(raw, source)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], source: object = "checkpoint") -> CheckpointInfo:
        known, extra = {}, {}
        for key, value in raw.items():
            if key not in _TYPES:
                extra[key] = value
                continue
            if value is not None and (not isinstance(value, _TYPES[key])
                                      or (key == "num_keypoints" and isinstance(value, bool))):
                expected = " or ".join(t.__name__ for t in _TYPES[key])
                raise CheckpointError(f"checkpoint '{source}': field '{CHECKPOINT_KEY}.{key}' is "
                                      f"{type(value).__name__} {value!r}; expected {expected} or null")
            known[key] = value
        if known.get("ema") is None:
            known.pop("ema", None)
        return cls(**known, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        """The plain dict stored under ``checkpoint["bapose"]``."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {**self.extra, **out}

    def entry(self) -> dict[str, Any]:
        """The plain dict a checkpoint stores, stamped with this bapose version (what writers store)."""
        return {**self.to_dict(), "version": __version__}

    def write(self, checkpoint: dict[str, Any]) -> None:
        """Store this entry in a checkpoint dict (:meth:`entry`)."""
        checkpoint[CHECKPOINT_KEY] = self.entry()

    # ------------------------------------------------------------------------------------------------ derived
    def joint_set(self) -> DatasetMeta | None:
        """The joint set trained on: the stored spec, else the preset of the stored name; ``None`` when the file
        names a custom set without its joints (written before bapose stored them)."""
        if isinstance(self.meta_spec, Mapping) and self.meta_spec.get("keypoints"):
            return DatasetMeta.build(**self.meta_spec)
        if self.meta in ("coco", "crowdpose"):
            return DatasetMeta.preset(self.meta)
        return None

    def trained_keypoints(self) -> list[str] | None:
        """The joint names trained on, when the file stores them."""
        spec = self.meta_spec
        return list(spec["keypoints"]) if isinstance(spec, Mapping) and spec.get("keypoints") else None

    def describe_joint_set(self) -> str:
        """How messages name the trained joint set."""
        found = self.joint_set() if self.trained_keypoints() else None
        return found.describe() if found is not None else f"'{self.meta}' (K={self.num_keypoints})"

    def short_side(self) -> int | None:
        """The training input size as one short side (``[H, W]`` -> ``min``), or None."""
        if isinstance(self.input_size, bool):
            return None
        if isinstance(self.input_size, int):
            return self.input_size
        if isinstance(self.input_size, (list, tuple)) and self.input_size:
            return int(min(self.input_size))
        return None
