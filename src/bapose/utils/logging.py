"""Run bookkeeping for the CLIs: OmegaConf resolvers for W&B (offline unless logged in), metric tables, logger teardown.

Importing this module registers the resolvers used by ``conf/logger/wandb.yaml``:

* ``${bapose.wandb_offline:}`` — ``False`` when ``WANDB_MODE=online`` or W&B's own credential lookup finds a key
  (``wandb.login(verify=False, prompt=False)``: ``WANDB_API_KEY``, W&B's settings file, ``~/.netrc``, where
  ``wandb login`` stores it); ``True`` otherwise, and whenever ``WANDB_MODE`` is ``offline`` / ``dryrun`` /
  ``disabled`` (``disabled``: no W&B run at all, see :func:`wandb_mode`). Runs never block on a network that is not
  there.
* ``${bapose.run_group:}`` — the sweep folder name in a Hydra multirun (all jobs of a sweep share a W&B group).
* ``${bapose.run_name:}`` — the run folder's name for a single run, ``<job num>-<overrides>`` for a multirun job.
* ``${bapose.run_id:<run_id>,<runs folder>}`` — the name of a single run's folder (``hydra.run.dir``), the same in
  every process of the run: the explicit ``run_id``; else ``slurm-<job id>[_<array task>]-<hash of the overrides>``
  in a SLURM batch job (a requeued job comes back to its folder; an interactive allocation is not one); else
  ``torchrun-<rendezvous id>`` under torchrun; else a timestamp that no other run folder has.
* ``${bapose.rank_suffix:}`` — ``""`` on global rank 0, ``_rank<N>`` in the other processes (per-rank log files);
  ``${bapose.on_rank_zero:x}`` — ``x`` on rank 0, ``None`` elsewhere.

The processes a multirun job launches for itself (``bapose.training.runs``) get their W&B name and group through the
``BAPOSE_RUN_NAME`` / ``BAPOSE_RUN_GROUP`` environment variables, which take precedence, and the job's overrides
through ``BAPOSE_TASK_OVERRIDES`` (:func:`task_overrides`).

A run folder's ``run.json`` (:func:`create_run_record`) is the run's own record across attempts: its W&B run id,
the training config it was started with (``bapose.training.runs.begin_run`` compares a restart against it) and, once
it finished, at which epoch and step.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
import math
import os
import re
import socket
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from bapose.io import read_json_or_empty as read_json  # noqa: F401 - blog.read_json: the run files
from bapose.io import write_json  # noqa: F401 - blog.write_json

log = logging.getLogger("bapose")


def wandb_mode() -> str:
    """How this run uses W&B: ``"disabled"`` (``WANDB_MODE=disabled``: no W&B run, no ``wandb/`` folder),
    ``"offline"`` (``WANDB_MODE=offline|dryrun``, or no credentials), or ``"online"`` (``WANDB_MODE=online``, or W&B's
    own credential lookup finds a key).

    Raises:
        ConfigError: W&B found credentials it rejects (e.g. a truncated key in ``~/.netrc``).
    """
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if mode == "disabled":
        return "disabled"
    if mode in ("offline", "dryrun"):
        return "offline"
    if mode:  # online, shared, run
        return "online"
    return "online" if _wandb_has_credentials() else "offline"


def _wandb_has_credentials() -> bool:
    """W&B's own lookup (the order ``wandb.init`` uses), without a prompt and without asking the server."""
    import wandb
    from wandb.errors import AuthenticationError

    from bapose.errors import ConfigError

    try:
        return bool(wandb.login(verify=False, prompt=False))
    except AuthenticationError as err:
        raise ConfigError(f"W&B credentials: {err}; expected a valid API key (`wandb login --relogin`), or "
                          f"WANDB_MODE=offline to log offline") from None


def wandb_offline() -> bool:
    """Whether W&B should log offline (see module docstring; ``disabled`` counts as offline here: the logger factory
    ``bapose.utils.wandb.wandb_logger`` builds no logger at all then)."""
    return wandb_mode() != "online"


def _hydra_cfg() -> Any:
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get() if HydraConfig.initialized() else None
    except Exception:  # noqa: BLE001 - hydra absent or half-initialised: behave as a plain run
        return None


def _is_multirun(hc: Any) -> bool:
    return hc is not None and str(hc.mode) in ("RunMode.MULTIRUN", "MULTIRUN")


def run_group() -> str | None:
    """The sweep's folder name in a multirun (one W&B group per sweep), else ``None``."""
    if os.environ.get("BAPOSE_RUN_GROUP"):
        return os.environ["BAPOSE_RUN_GROUP"]
    hc = _hydra_cfg()
    if not _is_multirun(hc):
        return None
    return f"{hc.job.name}-{Path(str(hc.sweep.dir)).name}"


def run_name() -> str | None:
    """A readable W&B run name: ``<job num>-<overrides>`` in a multirun, the run folder's name otherwise (the
    timestamp or ``run_id``), so a run in W&B points at its folder on disk."""
    if os.environ.get("BAPOSE_RUN_NAME"):
        return os.environ["BAPOSE_RUN_NAME"]
    hc = _hydra_cfg()
    if hc is None:
        return None
    if _is_multirun(hc):
        overrides = hc.job.override_dirname or ""
        return f"{hc.job.num}-{overrides}" if overrides else f"{hc.job.name}-{hc.job.num}"
    try:
        return Path(str(hc.runtime.output_dir)).name or str(hc.job.name)
    except Exception:  # noqa: BLE001 - runtime.output_dir only exists inside a job
        return str(hc.job.name)


def process_rank() -> int:
    """Global rank of this process from the launcher's environment (Lightning's rule: RANK, LOCAL_RANK,
    SLURM_PROCID, JSM_NAMESPACE_RANK), 0 when none is set. Known before any process group exists."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0)


def on_rank_zero(value: Any) -> Any:
    """``value`` in the process of global rank 0, ``None`` in the others (e.g. ``hydra.output_subdir``: under srun or
    torchrun every rank composes the run, only one writes the run folder's ``.hydra/``)."""
    return value if process_rank() == 0 else None


def rank_suffix() -> str:
    """``""`` on global rank 0, ``_rank<N>`` elsewhere: every process of a DDP run logs to its own file."""
    rank = process_rank()
    return f"_rank{rank}" if rank else ""


# a folder name: letters, digits and . _ - only (run ids come from users and schedulers)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")

# overrides that do not change what a run computes: a requeued job repeats its command, but a user resuming by hand
# may add these; they stay out of the hash that names a SLURM run's folder
_IDENTITY_FREE = ("ckpt_path=", "run_id=", "hydra.", "hydra/")


def _overrides_hash() -> str:
    hc = _hydra_cfg()
    overrides = sorted(o for o in (list(hc.overrides.task) if hc is not None else [])
                       if not o.lstrip("+~").startswith(_IDENTITY_FREE))
    return hashlib.sha1("\n".join(overrides).encode()).hexdigest()[:6]


def slurm_batch_job() -> str | None:
    """``<job id>[_<array task>]`` of the SLURM batch job this process runs in (sbatch, submitit), ``None`` outside
    SLURM and in an interactive allocation (``salloc``, ``srun --pty bash``, a Jupyter server on a node: job name
    ``bash`` or ``interactive``, which Lightning's ``SLURMEnvironment`` does not treat as a SLURM job either)."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
    if not job or SLURMEnvironment.job_name() in ("bash", "interactive"):
        return None
    task = os.environ.get("SLURM_ARRAY_TASK_ID") if os.environ.get("SLURM_ARRAY_JOB_ID") else None
    return f"{job}{f'_{task}' if task else ''}"


def _free_stamp(parent: Any) -> str:
    """A timestamp folder name that no folder in ``parent`` has yet (two runs started in the same second)."""
    stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    if parent in (None, "", "null"):
        return stamp
    name, n = stamp, 1
    while (Path(str(parent)) / name).exists():
        n += 1
        name = f"{stamp}_{n}"
    return name


def run_folder_name(run_id: Any = None, parent: Any = None) -> str:
    """The folder name of a single run (see the module docstring); every process of the run computes the same one.
    ``parent`` is the folder the run folders live in (a timestamp already taken there gets a ``_<n>`` suffix).

    Raises:
        ConfigError: under torchrun with a static rendezvous (``TORCHELASTIC_RUN_ID=none``) and no ``run_id``: each
            rank would otherwise stamp its own folder with the second it started in.
    """
    from bapose.errors import ConfigError

    if run_id not in (None, "", "null"):
        name = _UNSAFE.sub("-", str(run_id)).strip("-.")
        if not name:
            raise ConfigError(f"field 'run_id' is {run_id!r}; expected letters, digits, '.', '_' or '-'")
        return name
    job = slurm_batch_job()
    if job:
        return f"slurm-{job}-{_overrides_hash()}"
    elastic = os.environ.get("TORCHELASTIC_RUN_ID")
    if elastic and elastic != "none":
        return "torchrun-" + _UNSAFE.sub("-", elastic)
    if elastic == "none":
        raise ConfigError("this process was started by a multi-process launcher (torchrun with a static rendezvous) "
                          "without a run identity; expected run_id=<name> (or torchrun --rdzv-id / --standalone) so "
                          "that every rank writes into the same run folder")
    return _free_stamp(parent)


def task_overrides() -> list[str]:
    """The overrides of this run or multirun job: ``BAPOSE_TASK_OVERRIDES`` (json, set for the processes a multirun
    job launches for itself), else Hydra's ``overrides.task``; ``[]`` outside Hydra."""
    env = os.environ.get("BAPOSE_TASK_OVERRIDES")
    if env:
        return list(json.loads(env))
    hc = _hydra_cfg()
    return list(hc.overrides.task) if hc is not None else []


def register_resolvers() -> None:
    """Register the ``bapose.*`` OmegaConf resolvers (idempotent)."""
    for name, fn in (("bapose.wandb_offline", wandb_offline), ("bapose.run_group", run_group),
                     ("bapose.run_name", run_name), ("bapose.run_id", run_folder_name),
                     ("bapose.rank_suffix", rank_suffix), ("bapose.on_rank_zero", on_rank_zero)):
        if not OmegaConf.has_resolver(name):
            # run_id: resolved once per process (hydra.run.dir is read several times while Hydra sets up a run)
            OmegaConf.register_new_resolver(name, fn, use_cache=name == "bapose.run_id")


register_resolvers()


METRIC_ORDER = ("AP", "AP50", "AP75", "APm", "APl", "AP_easy", "AP_medium", "AP_hard", "AR", "AR50", "AR75", "ARm",
                "ARl")


def metric_order(metrics: Iterable[str]) -> list[str]:
    """Metric names in a stable, paper-like order (:data:`METRIC_ORDER`, then the rest sorted)."""
    names = set(metrics)
    return [k for k in METRIC_ORDER if k in names] + sorted(names - set(METRIC_ORDER))


def format_metrics_table(metrics: Mapping[str, float], title: str = "") -> str:
    """A fixed-width two-row table of AP/AR numbers, keys in a stable, paper-like order."""
    keys = metric_order(metrics)
    if not keys:
        return f"{title}: (no metrics)"
    width = max(7, *(len(k) + 1 for k in keys))
    head = "".join(f"{k:>{width}}" for k in keys)
    vals = "".join(f"{metrics[k]:>{width}.4f}" if isinstance(metrics[k], float) and math.isfinite(metrics[k])
                   else f"{metrics[k]!s:>{width}}" for k in keys)
    line = "-" * len(head)
    return "\n".join(x for x in (title, line, head, vals, line) if x)


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
