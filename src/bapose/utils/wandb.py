"""Weights & Biases plumbing: the logger ``conf/logger/wandb.yaml`` builds, and a reader of offline run folders.

* :class:`WandbLogger` is Lightning's logger with one change: ``log_model: true`` also works offline (Lightning
  refuses it there), and it means *the best checkpoint*, logged once at the end of fit as a ``model`` artifact by
  :class:`bapose.training.callbacks.WandbMedia` (offline artifacts are uploaded by ``wandb sync``).
  :func:`wandb_logger` builds it for a run: the run folder's W&B id (one W&B run across every attempt of a run), or
  no logger at all with ``WANDB_MODE=disabled``.
* :func:`read_offline_run` reads what an offline run wrote, from its own files: the run record (name, group), the
  config, the summary, the history rows, the exit record and the logged artifacts. wandb keeps all of that in one
  transaction log, ``run-<id>.wandb`` (protobuf ``Record`` messages in LevelDB's log framing: 32 KiB blocks of
  ``crc32 (4) | length (2, little-endian) | type (1)`` chunks, type 1 = whole record, 2/3/4 = first/middle/last piece,
  after a 7-byte ``:W&B`` file header); media files (images, tables) sit beside it under ``files/media/``.
  ``bapose-report`` reads offline runs with it, and the tests read the runs ``bapose-train`` leaves.
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers.wandb import WandbLogger as _LightningWandbLogger

from bapose.errors import ConfigError, DataError
from bapose.utils.logging import run_wandb_id, wandb_mode

__all__ = ["OfflineRun", "WandbLogger", "find_offline_runs", "find_wandb_logger", "read_offline_run", "wandb_logger"]

log = logging.getLogger("bapose")


class WandbLogger(_LightningWandbLogger):
    """``lightning.pytorch.loggers.WandbLogger`` whose ``log_model`` asks for the best checkpoint as an artifact.

    Args:
        log_model: ``True`` logs the best checkpoint (``ModelCheckpoint.best_model_path``) as a ``model`` artifact
            when fit ends, online or offline; ``False`` logs none. Lightning's own checkpoint scanning stays off,
            so there is one way a checkpoint reaches W&B.
        *args, **kwargs: Lightning's ``WandbLogger`` arguments (project, name, group, save_dir, offline, ...).
    """

    def __init__(self, *args: Any, log_model: bool = False, **kwargs: Any) -> None:
        if not isinstance(log_model, bool):
            raise ConfigError(f"field 'logger.wandb.log_model' is {log_model!r}; expected true (log the best "
                              f"checkpoint as a W&B artifact at the end of fit) or false")
        super().__init__(*args, log_model=False, **kwargs)
        self.log_best_model = log_model


def wandb_logger(save_dir: str, id: str | None = None, **kwargs: Any) -> WandbLogger | None:  # noqa: A002
    """The W&B logger of the run in ``save_dir`` (``conf/logger/wandb.yaml``), or ``None`` with
    ``WANDB_MODE=disabled`` (no W&B run, nothing written).

    One W&B run per bapose run: ``id`` defaults to the run folder's W&B id (``run.json``, made at the first start and
    read by every later attempt and every rank, ``bapose.utils.logging.run_wandb_id``); with ``resume="allow"``
    a requeued or restarted attempt continues that W&B run instead of opening a new one with the same name.

    Args:
        save_dir: the run folder (W&B writes ``wandb/`` there).
        id: an explicit W&B run id instead of the run folder's.
        **kwargs: :class:`WandbLogger` arguments.
    """
    if wandb_mode() == "disabled":
        log.info("WANDB_MODE=disabled: no W&B run")
        return None
    return WandbLogger(save_dir=save_dir, id=id or run_wandb_id(save_dir), **kwargs)


def find_wandb_logger(trainer: Any) -> _LightningWandbLogger | None:
    """The trainer's W&B logger (any Lightning ``WandbLogger``), or None."""
    for lg in getattr(trainer, "loggers", None) or []:
        if isinstance(lg, _LightningWandbLogger):
            return lg
    return None


# ------------------------------------------------------------------------------------------------ offline runs
_HEADER = 7          # b":W&B" + magic 0xBEE1 (2 bytes) + version (1 byte)
_BLOCK = 32768       # LevelDB log block size
_CHUNK_HEADER = 7    # crc32 (4) + length (2) + type (1)
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def iter_records(path: str | Path) -> Iterator[bytes]:
    """The serialized ``Record`` messages of a ``run-<id>.wandb`` transaction log, in order.

    A log cut short (the run was killed mid-write) ends the iteration at the last whole record.
    """
    path = Path(path)
    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise DataError(f"file '{path}': not a W&B transaction log (expected it to start with ':W&B')")
    pos, pieces = _HEADER, b""
    while pos + _CHUNK_HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _CHUNK_HEADER:  # the rest of a block too small for a chunk header is zero padding
            pos += left
            continue
        _crc, length, kind = struct.unpack_from("<IHB", data, pos)
        if kind == 0 and length == 0:  # zero-filled tail of a block
            pos += left
            continue
        start, pos = pos + _CHUNK_HEADER, pos + _CHUNK_HEADER + length
        if pos > len(data):
            return
        chunk = data[start:pos]
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            pieces = chunk
        elif kind == _MIDDLE:
            pieces += chunk
        elif kind == _LAST:
            yield pieces + chunk
            pieces = b""


def _set(tree: dict[str, Any], keys: list[str], value: Any) -> None:
    for k in keys[:-1]:
        node = tree.get(k)
        if not isinstance(node, dict):
            node = tree[k] = {}
        tree = node
    tree[keys[-1]] = value


def _items(updates: Any) -> Iterator[tuple[list[str], Any]]:
    for item in updates:
        keys = list(item.nested_key) or [item.key]
        try:
            value = json.loads(item.value_json)
        except ValueError:
            value = item.value_json
        yield keys, value


@dataclass
class OfflineRun:
    """What an offline W&B run wrote (see :func:`read_offline_run`).

    ``config`` and ``summary`` are nested dicts (a key such as ``val/AP`` is one key, as W&B shows it); ``history``
    holds one dict per logged row; ``exit_code`` is None when the run has no exit record (still running, or killed).
    ``artifacts`` are ``{"name", "type", "aliases", "metadata", "files": [{"path", "size", "local_path"}]}``.
    """

    path: Path
    run_id: str = ""
    name: str = ""
    group: str = ""
    job_type: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    exit_code: int | None = None
    artifacts: list[dict[str, Any]] = field(default_factory=list)

    @property
    def files(self) -> Path:
        return self.path / "files"

    def output_tail(self) -> str:
        """The last non-empty line of the run's console output (``files/output.log``), or ''."""
        log = self.files / "output.log"
        if not log.is_file():
            return ""
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
        return lines[-1] if lines else ""


def is_offline_run(path: Path) -> bool:
    """Whether ``path`` is a W&B run folder (``offline-run-*`` / ``run-*`` holding a ``run-<id>.wandb`` log)."""
    return path.is_dir() and path.name.startswith(("offline-run-", "run-")) and any(path.glob("run-*.wandb"))


def find_offline_runs(root: Path) -> list[Path]:
    """Every W&B run folder at or below ``root`` (``latest-run`` links skipped), sorted."""
    if is_offline_run(root):
        return [root]
    return sorted(p.parent for p in root.rglob("run-*.wandb")
                  if p.parent.name != "latest-run" and is_offline_run(p.parent))


def read_offline_run(path: str | Path) -> OfflineRun:
    """Read an offline (or synced) W&B run folder ``.../wandb/offline-run-<stamp>-<id>`` from its transaction log."""
    from wandb.proto import wandb_internal_pb2 as pb  # the schema wandb writes the log with

    path = Path(path)
    logs = sorted(path.glob("run-*.wandb"))
    if not logs:
        raise DataError(f"folder '{path}': no run-<id>.wandb file; expected a W&B run folder "
                        f"(wandb/offline-run-<stamp>-<id>)")
    run = OfflineRun(path=path)
    for raw in iter_records(logs[-1]):
        rec = pb.Record()
        try:
            rec.ParseFromString(raw)
        except Exception as e:  # noqa: BLE001 - protobuf's DecodeError; a damaged record ends the readable part
            raise DataError(f"file '{logs[-1]}': unreadable W&B record ({e}); expected an intact transaction log")
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            run.run_id, run.name = r.run_id or run.run_id, r.display_name or run.name
            run.group, run.job_type = r.run_group or run.group, r.job_type or run.job_type
            for keys, value in _items(r.config.update):
                _set(run.config, keys, value)
        elif kind == "config":
            for keys, value in _items(rec.config.update):
                _set(run.config, keys, value)
            for item in rec.config.remove:
                run.config.pop(item.key, None)
        elif kind == "summary":
            for keys, value in _items(rec.summary.update):
                _set(run.summary, keys, value)
        elif kind == "history":
            row: dict[str, Any] = {}
            for keys, value in _items(rec.history.item):
                _set(row, keys, value)
            run.history.append(row)
        elif kind == "exit":
            run.exit_code = int(rec.exit.exit_code)
        elif kind == "artifact":
            a = rec.artifact
            run.artifacts.append({
                "name": a.name, "type": a.type, "aliases": list(a.aliases),
                "metadata": json.loads(a.metadata) if a.metadata else {},
                "files": [{"path": e.path, "size": int(e.size), "local_path": e.local_path}
                          for e in a.manifest.contents]})
    run.config.pop("_wandb", None)
    return run
