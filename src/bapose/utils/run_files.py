"""A run folder's own files: ``run.json`` (the run's record across attempts) and ``status.json`` (how it stands),
and how a run ends (its loggers finished, a preemption told apart from a failure).

``run.json`` (:func:`create_run_record`) keeps the run's W&B run id, the training config it was started with
(``bapose.training.resume.begin_run`` compares a restart against it) and, once it finished, at which epoch and step.
``status.json`` (:func:`run_status`) says ``running`` / ``finished`` / ``failed`` / ``interrupted`` / ``preempted``
with the one-line error, for sweep reports and requeued jobs.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from bapose.io import write_json

log = logging.getLogger("bapose")

__all__ = ["METRICS_FILE", "RUN_RECORD", "STATUS_FILE", "RunPreempted", "create_run_record", "error_line",
           "finish_loggers", "new_run_record", "read_run_record", "run_status", "run_wandb_id", "write_run_record"]


def finish_loggers(loggers: Iterable[Any] = (), failed: bool = False, preempted: str | None = None) -> None:
    """Flush every logger and end the W&B run, so the next multirun job starts its own run (not a resumed one).

    ``failed=True`` finishes the W&B run with exit code 1: W&B shows it as *failed*, not *finished*.
    ``preempted`` (why: ``"SIGTERM"``, ``"SIGUSR2"``, ...): this attempt ends so that a requeued or restarted one
    goes on; the W&B run is marked preempting first (``Run.mark_preempting``), which W&B shows as *preempted* rather
    than *failed* when the attempt then ends with a non-zero code, and the next attempt resumes the same W&B run.
    """
    for lg in loggers:
        try:
            lg.finalize("failed" if failed or preempted else "success")
        except Exception as e:  # noqa: BLE001 - teardown must not hide the run's own result
            log.warning("logger %s failed to finalize: %s", type(lg).__name__, e)
    try:
        import wandb
    except ImportError:
        return
    if wandb.run is not None:
        if preempted:
            wandb.run.mark_preempting()
        wandb.finish(exit_code=1 if failed or preempted else 0)


class RunPreempted(SystemExit):
    """A run ended early for a requeue or a restart (a signal), not because it failed: ``status.json`` says
    ``preempted``; the exit code is the one the launcher expects (submitit's requeue code, or 128 + the signal)."""

    def __init__(self, reason: str, code: int) -> None:
        super().__init__(code)
        self.reason = reason


# ---------------------------------------------------------------------------------------------------- run record
RUN_RECORD = "run.json"


def read_run_record(out_dir: str | os.PathLike) -> dict[str, Any]:
    """``<out_dir>/run.json`` (``{}`` when there is none yet). A reader racing the atomic create retries briefly."""
    path = Path(out_dir) / RUN_RECORD
    for _ in range(50):
        if not path.is_file():
            return {}
        try:
            data = json.loads(path.read_text())
            return data if isinstance(data, dict) else {}
        except ValueError:  # a writer without hard links (see create_run_record) is half-way through
            time.sleep(0.02)
    return {}


def new_run_record(config: Mapping[str, Any]) -> dict[str, Any]:
    """A fresh record: a new W&B run id (12 lowercase hex characters), the start time, the identity ``config``."""
    return {"wandb_id": uuid.uuid4().hex[:12], "started": _now(), "config": dict(config)}


def create_run_record(out_dir: str | os.PathLike, config: Mapping[str, Any]) -> dict[str, Any]:
    """The run folder's record, created at the first start of the run if it has none: every rank and every later
    attempt reads the same file (the first writer wins: a hard link of a complete temp file, so nobody reads half a
    record). Returns what the file holds."""
    path = Path(out_dir) / RUN_RECORD
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}")
        tmp.write_text(json.dumps(new_run_record(config), indent=2, sort_keys=True, default=str) + "\n")
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links: exclusive create
            with contextlib.suppress(FileExistsError), open(path, "x", encoding="utf-8") as f:
                f.write(tmp.read_text())
        finally:
            tmp.unlink(missing_ok=True)
    return read_run_record(out_dir)


def write_run_record(out_dir: str | os.PathLike, record: Mapping[str, Any]) -> Path:
    """Replace the run folder's record (rank 0: a fresh start, or the end of a run)."""
    return write_json(Path(out_dir) / RUN_RECORD, dict(record))


def run_wandb_id(out_dir: str | os.PathLike) -> str:
    """The W&B run id of the run in ``out_dir`` (its ``run.json``; created with an empty config when missing)."""
    record = read_run_record(out_dir) or create_run_record(out_dir, {})
    return str(record["wandb_id"])


STATUS_FILE = "status.json"
METRICS_FILE = "metrics.json"  # the numbers of a finished run (bapose-train, bapose-eval)


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def error_line(err: BaseException) -> str:
    """One line saying why a run ended: the user message of a bapose error (also when it arrives as the SystemExit
    of ``exit_on_error``), else ``Type: message`` (first line)."""
    from bapose.errors import user_message

    if isinstance(err, SystemExit):
        text = err.code if isinstance(err.code, str) else f"exit code {err.code}"
    else:
        text = user_message(err)
        if not text.startswith(type(err).__name__):
            text = f"{type(err).__name__}: {text}"
    lines = [line for line in str(text).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


@contextlib.contextmanager
def run_status(out_dir: str | os.PathLike, task: str, overrides: Iterable[str] = (),
               write: bool = True) -> Iterator[dict[str, Any]]:
    """Keep ``<out_dir>/status.json`` saying how a run stands, for sweep reports and requeued jobs.

    ``{"status": "running", "task", "overrides", "started", "host", "pid"}`` at the start; on exit ``"finished"``, or
    ``"failed"`` with ``"error"`` (one line, see :func:`error_line`) and ``"error_type"`` when the body raised (the
    exception propagates unchanged), ``"interrupted"`` on Ctrl-C, ``"preempted"`` (:class:`RunPreempted`: stopped at a
    signal for a requeue or restart, ``"error"`` says which); ``"ended"`` in all these cases. The body may add fields to
    the yielded dict (e.g. metrics), written at the end. ``write=False`` (non-zero DDP ranks) keeps the file untouched.
    """
    path = Path(out_dir) / STATUS_FILE
    info: dict[str, Any] = {"status": "running", "task": task, "overrides": list(overrides), "started": _now(),
                            "host": socket.gethostname(), "pid": os.getpid()}
    if write:
        write_json(path, info)
    try:
        yield info
    except BaseException as err:
        # SystemExit(0)/None is a normal end (e.g. --help); anything else is a failure of this run
        if isinstance(err, RunPreempted):
            info.update(status="preempted", error=err.reason, error_type=type(err).__name__, ended=_now())
        elif isinstance(err, SystemExit) and err.code in (0, None):
            info.update(status="finished", ended=_now())
        else:
            info.update(status="interrupted" if isinstance(err, KeyboardInterrupt) else "failed",
                        error=error_line(err), error_type=type(err).__name__, ended=_now())
        if write:
            write_json(path, info)
        raise
    info.update(status="finished", ended=_now())
    if write:
        write_json(path, info)
