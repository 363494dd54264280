"""Starting a run again: which checkpoint it resumes from, and whether it is still the run its folder holds.

* :func:`resolve_ckpt_path`: ``ckpt_path=auto`` resumes from the run folder's newest checkpoint *by global step*,
  whatever wrote it (``checkpoints/last.ckpt``: epoch ends, every N steps, the time-based and at-signal saves of
  ``bapose.training.preemption``; ``hpc_ckpt_<n>.ckpt``: Lightning's save at SLURM's ``--signal``), always passed to
  Lightning as a path; ``ckpt_path=null`` starts fresh on SLURM too (Lightning would turn ``None`` into its newest
  ``hpc_ckpt``: :func:`set_aside_checkpoints` moves the old resume points out of its way first).
* :func:`begin_run`: the run folder's ``run.json`` records the training config the run was started with (the keys
  in :data:`IDENTITY_KEYS`, less :data:`FREE_KEYS`); a start with other values there stops with one line naming them.
  A run that finished (``run.json``: ``finished``) and is started again with a schedule it already completed says so
  and returns its results instead of training 0 epochs and reporting its old numbers as new ones; a larger
  ``trainer.max_epochs`` resumes and extends it.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from bapose.io import read_json_or_empty as read_json
from bapose.utils.naming import process_rank
from bapose.utils.run_files import METRICS_FILE, create_run_record, new_run_record, read_run_record, write_run_record
from bapose.errors import ConfigError
from bapose.checkpoints.io import SAFE_GLOBALS

log = logging.getLogger("bapose")

FRESH = (None, "", "null")

# what a run trains: a restart must agree with its first start on every leaf below these keys...
IDENTITY_KEYS = ("model", "data", "codec", "module.loss", "optimizer", "scheduler", "module.scheduler_interval",
                 "module.warmup_steps", "module.ema_decay", "seed", "reference_batch")
# ...except these, which say where things are or how fast they load, not what is trained (README "Scaling out")
FREE_KEYS = ("data.root", "data.num_workers", "data.val_num_workers", "data.persistent_workers", "data.pin_memory",
             "data.val_batch_size", "data.on_bad_sample", "data.synthetic.root", "model.pretrained",
             "model.init_from", "model.adaptive_impl")


# ---------------------------------------------------------------------------------------------------- checkpoints
def checkpoint_step(path: Path) -> int | None:
    """The ``global_step`` a checkpoint holds (memory-mapped: no tensor is read), ``None`` when unreadable."""
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(ckpt["global_step"])
    except Exception:  # noqa: BLE001 - a damaged or foreign file is no candidate to prefer; Lightning says why
        return None


def resume_candidates(output_dir: str | Path) -> list[tuple[Path, int | None]]:
    """Every checkpoint of the run folder a run could resume from, newest first: by global step, then by time.

    ``checkpoints/last*.ckpt`` and Lightning's ``hpc_ckpt_<n>.ckpt`` (in the run folder itself)."""
    out = Path(output_dir)
    paths = [p for p in [*(out / "checkpoints").glob("last*.ckpt"), *out.glob("hpc_ckpt_*.ckpt")] if p.is_file()]
    found = [(p, checkpoint_step(p)) for p in paths]
    return sorted(found, key=lambda c: (c[1] if c[1] is not None else -1, c[0].stat().st_mtime), reverse=True)


def resolve_ckpt_path(ckpt_path: str | None, output_dir: str | Path) -> str | None:
    """``trainer.fit``'s ``ckpt_path`` from the config value.

    * ``auto`` (default): the run folder's newest checkpoint by global step (:func:`resume_candidates`) when there
      is one (a requeued or restarted job resumes), else ``None`` (a fresh run).
    * ``last``: the same, but a folder without a checkpoint is an error (the user meant to resume).
    * ``None`` / ``null``: start fresh (see :func:`set_aside_checkpoints` for what happens to old checkpoints).
    * a path: that checkpoint (its full training state).
    """
    if ckpt_path in FRESH:
        return None
    out = Path(output_dir)
    if ckpt_path in ("auto", "last"):
        found = resume_candidates(out)
        if found:
            path, step = found[0]
            others = ", ".join(f"{p.name} {s}" for p, s in found[1:])
            if path.name.startswith("hpc_ckpt_"):
                _rank0(log.info, "resuming from Lightning's SLURM requeue checkpoint '%s' (global step %s%s; "
                       "ckpt_path=%s)", path, step, f"; also: {others}" if others else "", ckpt_path)
            else:
                _rank0(log.info, "run folder '%s' has '%s': resuming from it (global step %s%s; ckpt_path=%s)",
                       out, path.name, step, f"; also: {others}" if others else "", ckpt_path)
            return str(path)
        if ckpt_path == "last":
            raise ConfigError(f"ckpt_path=last: no '{out / 'checkpoints' / 'last.ckpt'}'; expected the run folder "
                              f"of the run to resume (run_id=<its id> or hydra.run.dir=<its folder>) or an explicit "
                              f"ckpt_path=<file>")
        return None
    path = Path(ckpt_path)
    if not path.is_file():
        raise ConfigError(f"field 'ckpt_path': checkpoint file '{path}' does not exist")
    return str(path)


def set_aside_checkpoints(output_dir: str | Path) -> Path | None:
    """``ckpt_path=null`` in a folder that has resume points: move them to ``checkpoints/replaced-<time>/``, so that
    neither Lightning (which resumes from ``hpc_ckpt_<n>.ckpt`` on SLURM when ``ckpt_path`` is ``None``) nor a later
    ``ckpt_path=auto`` picks up the replaced run's state. Every rank may call it (a file another rank moved first is
    skipped). Returns the folder they went to, or ``None``."""
    out = Path(output_dir)
    found = [p for p in [*(out / "checkpoints").glob("last*.ckpt"), *out.glob("hpc_ckpt_*.ckpt")] if p.is_file()]
    if not found:
        return None
    dest = out / "checkpoints" / f"replaced-{datetime.datetime.now().strftime('%Y-%m-%d_%H-%M-%S')}"
    dest.mkdir(parents=True, exist_ok=True)
    for p in found:
        try:
            os.replace(p, dest / p.name)
        except FileNotFoundError:
            pass
    _rank0(log.warning, "ckpt_path=null: starting fresh; the previous run's checkpoints (%s) were moved to '%s'",
           ", ".join(p.name for p in found), dest)
    return dest


# ---------------------------------------------------------------------------------------------------- identity
def _leaves(node: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(node, Mapping):
        for key in sorted(node, key=str):
            _leaves(node[key], f"{prefix}.{key}" if prefix else str(key), out)
    else:
        out[prefix] = node


def identity_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved leaves of :data:`IDENTITY_KEYS` (dotted keys), less :data:`FREE_KEYS` and what lies below them,
    and less the leaves that follow the trainer (``T_max: ${trainer.max_epochs}`` of the cosine schedule: the
    schedule's length moves with ``trainer.max_epochs``, which may change)."""
    out: dict[str, Any] = {}
    raw: dict[str, Any] = {}
    for key in IDENTITY_KEYS:
        node = OmegaConf.select(cfg, key, default=None)
        value = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
        _leaves(value, key, out)
        if OmegaConf.is_config(node):
            _leaves(OmegaConf.to_container(node, resolve=False), key, raw)
    follows_trainer = {k for k, v in raw.items() if isinstance(v, str) and re.search(r"\$\{\s*trainer\.", v)}
    return {k: v for k, v in out.items() if k not in follows_trainer
            and not any(k == f or k.startswith(f"{f}.") for f in FREE_KEYS)}


def _differences(started: Mapping[str, Any], now: Mapping[str, Any], limit: int = 6) -> list[str]:
    keys = sorted(k for k in set(started) | set(now) if started.get(k) != now.get(k))
    parts = [f"{k} {json.dumps(started.get(k), default=str)} -> {json.dumps(now.get(k), default=str)}"
             for k in keys[:limit]]
    return parts + ([f"(+{len(keys) - limit} more)"] if len(keys) > limit else [])


def _schedule_done(done: Mapping[str, Any], trainer: Any) -> bool:
    """Whether a run that ended at ``done`` (epoch, global step) already completed this trainer config's schedule."""
    max_steps = int(OmegaConf.select(trainer, "max_steps", default=-1) or -1)
    max_epochs = OmegaConf.select(trainer, "max_epochs", default=None)
    if max_epochs is None and max_steps == -1:
        max_epochs = 1000  # Lightning's default
    if max_steps > 0 and int(done.get("global_step", 0)) >= max_steps:
        return True
    return max_epochs not in (None, -1) and int(done.get("epoch", 0)) >= int(max_epochs)


def begin_run(cfg: DictConfig) -> dict[str, Any] | None:
    """Check and record the run folder's identity at the start of ``train(cfg)`` (module docstring).

    Returns:
        The results of the finished run (its ``metrics.json``) when it already completed this schedule: nothing is
        to be trained or reported again. ``None``: train.

    Raises:
        ConfigError: the folder's run was started with another training config (one line: the keys, the values
            then and now, and how to start a new run instead).
    """
    out = Path(cfg.paths.output_dir)
    config = identity_config(cfg)
    if cfg.ckpt_path in FRESH:  # a new run in this folder: a new record (and a new W&B run)
        if process_rank() == 0:
            write_run_record(out, new_run_record(config))
        set_aside_checkpoints(out)
        return None
    record = create_run_record(out, config)
    started = record.get("config", {})
    if started and started != config:
        raise ConfigError(
            f"run folder '{out}' was started with another training config: {'; '.join(_differences(started, config))}"
            f"; expected the values it was started with to resume it, or a new run: run_id=<new name> (another "
            f"folder) or ckpt_path=null (start over in this one); README \"Scaling out\" lists what may change")
    done = record.get("finished")
    if done and not bool(OmegaConf.select(cfg, "trainer.fast_dev_run", default=False)):
        if _schedule_done(done, cfg.trainer):
            metrics = read_json(out / METRICS_FILE)
            msg = (f"run folder '{out}' finished on {done.get('ended', '?')} at epoch {done.get('epoch')}, global "
                   f"step {done.get('global_step')}: nothing to train with trainer.max_epochs="
                   f"{OmegaConf.select(cfg, 'trainer.max_epochs')}; its results stay in metrics.json (not "
                   f"evaluated or logged again). A larger trainer.max_epochs trains on from its last checkpoint; "
                   f"run_id=<new name> or ckpt_path=null starts a new run")
            _rank0(log.warning, "%s", msg)
            if process_rank() == 0:
                print(msg, flush=True)
            return {**metrics, "already_finished": True}
        if process_rank() == 0:  # trained on: it is no longer the finished run it was
            write_run_record(out, {k: v for k, v in record.items() if k != "finished"})
    return None


def finish_run(out_dir: str | Path, epoch: int, global_step: int) -> None:
    """Record in ``run.json`` that the run finished (rank 0, at the end of ``train``)."""
    record = read_run_record(out_dir)
    if record:
        ended = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        record["finished"] = {"epoch": int(epoch), "global_step": int(global_step), "ended": ended}
        write_run_record(out_dir, record)


def _rank0(fn: Any, *args: Any) -> None:
    if process_rank() == 0:
        fn(*args)
