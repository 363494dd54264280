"""Runs beyond one process: resuming, the global batch, DDP jobs inside a Hydra multirun, and sweeps that outlive a
failed job.

What ``bapose-train`` does around ``train(cfg)`` (README "Scaling out" shows the commands):

* **Resume** (``bapose.training.resume``): ``ckpt_path=auto`` (the default) resumes from the run folder's newest
  checkpoint by global step (``last.ckpt``, or Lightning's ``hpc_ckpt_<n>.ckpt`` written at SLURM's signal), and a
  restart with another training config, or of a run that finished, stops or says so. A requeued or restarted job
  finds its folder because the folder is named by the run's identity (``run_id``, a SLURM batch job's id,
  torchrun's rendezvous id; see ``bapose.utils.naming.run_folder_name``), the same in every rank.
* **Global batch** (:func:`scale_lr_to_global_batch`): per-process batch x processes x accumulation is logged once;
  when it differs from the experiment's ``reference_batch`` the LR is scaled by ``optimizer.scale_lr``
  (``linear`` | ``sqrt``) or, with ``none``, a warning says so.
* **DDP jobs in a multirun** (:func:`launch_job_processes`): Lightning starts the other ranks of a DDP run by running
  the command line again, which inside ``-m`` would start the whole sweep again. A multirun job that needs several
  local processes therefore starts them itself with torch's elastic launcher (what ``torchrun`` runs): one process
  per device, each running this job's composed config (written to ``<job>/ranks/job_config.yaml``) as a plain run
  in the job's folder; the sweep process only waits. Jobs share nothing but the sweep folder. On SLURM (``hydra/launcher=slurm``, one task per GPU) and under torchrun
  the ranks already exist and nothing is launched here.
* **Failed jobs** (:func:`run_job`, :class:`SweepSummary`): a failing multirun job is recorded in its
  ``status.json`` (and its W&B run finished as failed), the sweep goes on, Optuna marks the trial failed; at the end
  ``<sweep dir>/sweep_status.json`` lists the failures and ``bapose-train`` exits with their number. A single run
  still ends with its one-line error and exit code 1.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from bapose.io import read_json_or_empty as read_json, write_json
from bapose.utils.naming import process_rank, run_group, run_name, task_overrides
from bapose.utils.run_files import METRICS_FILE, STATUS_FILE, error_line, run_status
from bapose.errors import BAPoseError, ConfigError, exit_on_error
from bapose.training.resume import resolve_ckpt_path

log = logging.getLogger("bapose")

SCALE_RULES = ("none", "linear", "sqrt")


# ---------------------------------------------------------------------------------------------------- fit set-up
def check_trainer(cfg: DictConfig, trainer: Any) -> None:
    """Settings that cannot work on this trainer fail here with the field named, not inside DDP's constructor."""
    from lightning.pytorch.accelerators import CPUAccelerator
    from lightning.pytorch.strategies import ParallelStrategy

    if bool(cfg.trainer.get("sync_batchnorm", False)) and isinstance(trainer.accelerator, CPUAccelerator) \
            and isinstance(trainer.strategy, ParallelStrategy):
        raise ConfigError("trainer field 'sync_batchnorm' is true on accelerator 'cpu': torch's SyncBatchNorm only "
                          "runs on GPUs; expected trainer.sync_batchnorm=false for CPU processes (trainer=ddp_cpu "
                          "has it off; each process then normalises with its own batch statistics)")


def global_batch(trainer: Any, per_process: int) -> tuple[int, str]:
    """Images per optimizer step over all processes, and how it is made up (for the log line)."""
    world = int(trainer.world_size)
    accumulate = int(getattr(trainer, "accumulate_grad_batches", 1) or 1)
    nodes = int(getattr(trainer, "num_nodes", 1) or 1)
    total = per_process * world * accumulate
    return total, (f"{per_process} per process x {world} processes ({world // nodes} devices x {nodes} nodes) x "
                   f"{accumulate} accumulated")


def lr_factor(rule: str, batch: int, reference: int) -> float:
    """LR multiplier for a global ``batch`` when the LR was set for ``reference`` (Goyal et al.'s linear rule, or the
    square-root rule often used with Adam)."""
    if rule == "linear":
        return batch / reference
    if rule == "sqrt":
        return math.sqrt(batch / reference)
    return 1.0


def scale_lr_to_global_batch(cfg: DictConfig, trainer: Any, module: Any, per_process: int,
                             loggers: list[Any] = ()) -> float:
    """Log the global batch once; scale the module's LR by ``optimizer.scale_lr`` when it differs from
    ``reference_batch`` (or warn once with ``scale_lr: none``). Returns the LR factor applied.

    The factor goes into the module's optimizer partial before ``configure_optimizers`` runs, so the optimizer, its
    schedulers' base LRs, the LR monitor and a resumed run all start from the scaled LR.
    """
    rule = str(OmegaConf.select(cfg, "optimizer.scale_lr", default="none") or "none")
    if rule not in SCALE_RULES:
        raise ConfigError(f"optimizer field 'scale_lr' is {rule!r}; expected one of {', '.join(SCALE_RULES)}")
    reference = cfg.get("reference_batch")
    if reference is not None and (not isinstance(reference, int) or reference <= 0):
        raise ConfigError(f"field 'reference_batch' is {reference!r}; expected a positive integer (the global batch "
                          f"the experiment's LR was set for) or null")
    batch, parts = global_batch(trainer, per_process)
    factory = getattr(module, "optimizer_factory", None)
    base_lr = getattr(factory, "keywords", {}).get("lr") if factory is not None else None
    factor = 1.0
    if reference is not None and batch != reference:
        factor = lr_factor(rule, batch, reference)
        if rule == "none":
            _rank0(log.warning, "global batch %d (%s) differs from reference_batch %d that the LR (%s) was set for, "
                   "and optimizer.scale_lr=none: training at that LR unscaled (optimizer.scale_lr=linear|sqrt "
                   "scales it)", batch, parts, reference, base_lr)
        elif base_lr is None:
            raise ConfigError(f"optimizer.scale_lr={rule} but the optimizer config has no field 'lr' to scale; "
                              f"expected an optimizer partial with lr=...")
        else:
            module.optimizer_factory = functools.partial(factory, lr=float(base_lr) * factor)
    scaled = float(base_lr) * factor if base_lr is not None else None
    _rank0(log.info, "global batch %d = %s; reference_batch %s; lr %s%s", batch, parts, reference, base_lr,
           f" -> {scaled:.6g} (optimizer.scale_lr={rule}, x{factor:.4g})" if factor != 1.0 else "")
    for lg in loggers:
        with contextlib.suppress(Exception):  # bookkeeping only: a logger that refuses must not stop the run
            lg.log_hyperparams({"global_batch": batch, "lr_scale": factor, "lr_scaled": scaled})
    return factor


def prepare_fit(cfg: DictConfig, trainer: Any, module: Any, datamodule: Any, loggers: list[Any] = ()) -> str | None:
    """Everything between building the trainer and ``trainer.fit``: trainer checks, the global batch and LR rule,
    and the checkpoint to resume from (``ckpt_path``, default ``auto``)."""
    check_trainer(cfg, trainer)
    per_process = int(getattr(datamodule, "batch_size", cfg.data.batch_size))
    # every rank says who it is and what it trains on, in its own log file (<task>_rank<N>.log)
    log.info("process rank %d of %d (local rank %d, node %d) on %s, run folder %s, batch %d per process",
             trainer.global_rank, trainer.world_size, trainer.local_rank, trainer.node_rank, socket.gethostname(),
             cfg.paths.output_dir, per_process)
    scale_lr_to_global_batch(cfg, trainer, module, per_process, loggers)
    return resolve_ckpt_path(cfg.ckpt_path, cfg.paths.output_dir)


def _rank0(fn: Callable[..., Any], *args: Any) -> None:
    if process_rank() == 0:
        fn(*args)


# ---------------------------------------------------------------------------------------------------- multirun jobs
def _hydra_config() -> Any:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def is_sweep_job() -> bool:
    """Whether this process runs one job of a Hydra multirun (the sweep itself lives in this or a parent process)."""
    hc = _hydra_config()
    return hc is not None and str(hc.mode) in ("RunMode.MULTIRUN", "MULTIRUN")


@contextlib.contextmanager
def _quiet(*names: str) -> Iterator[None]:
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _launched_externally() -> bool:
    """Whether a launcher already started this process as one rank of several (what Lightning's cluster
    environments detect: SLURM tasks, torchrun, Kubeflow, LSF, MPI; or ``LOCAL_RANK`` set by hand)."""
    from lightning.fabric.plugins.environments import (
        KubeflowEnvironment,
        LightningEnvironment,
        LSFEnvironment,
        MPIEnvironment,
        SLURMEnvironment,
        TorchElasticEnvironment,
    )

    for env in (SLURMEnvironment, TorchElasticEnvironment, KubeflowEnvironment, LSFEnvironment, MPIEnvironment):
        with contextlib.suppress(Exception):  # MPIEnvironment.detect needs mpi4py
            if env.detect():
                return True
    return LightningEnvironment().creates_processes_externally


def _start_method(strategy: Any) -> str | None:
    """How Lightning starts the other local processes of ``trainer.strategy``: ``"popen"`` (it runs the command
    line again: DDP's default, FSDP, DeepSpeed), ``"spawn"`` / ``"fork"`` (from inside the process), or ``None``."""
    import inspect

    from hydra.utils import get_class
    from lightning.pytorch.strategies import ParallelStrategy, StrategyRegistry

    if strategy in (None, "auto"):
        return "popen"  # Lightning's choice for several devices outside a notebook: "ddp"
    if isinstance(strategy, str):
        if strategy not in StrategyRegistry:
            return None
        entry = StrategyRegistry[strategy]
        cls, given = entry["strategy"], entry["init_params"].get("start_method")
    elif isinstance(strategy, (DictConfig, Mapping)) and "_target_" in strategy:
        cls, given = get_class(str(strategy["_target_"])), strategy.get("start_method")
    else:
        return None
    if not (isinstance(cls, type) and issubclass(cls, ParallelStrategy)):
        return None
    param = inspect.signature(cls).parameters.get("start_method")
    return str(given or (param.default if param is not None else "popen"))


def _local_devices(accelerator: Any, devices: Any) -> int:
    """How many devices of this node ``trainer.devices`` selects (Lightning's accelerators parse it)."""
    from lightning.pytorch.accelerators import CPUAccelerator, CUDAAccelerator

    name = str(accelerator or "auto")
    if name == "auto":
        name = "cuda" if CUDAAccelerator.is_available() else "cpu"
    if name in ("gpu", "cuda"):
        ids = CUDAAccelerator.parse_devices(devices)
        return len(ids) if isinstance(ids, list) else int(ids or 0)
    if name == "cpu":
        return 1 if devices in ("auto", None) else int(CPUAccelerator.parse_devices(devices))
    return 1


def job_processes(cfg: DictConfig) -> int:
    """How many local processes Lightning would start for this config by running the command line again (DDP's
    subprocess launcher: no torchrun / SLURM / MPI launcher made the ranks); 0 when it starts none.

    Read from the config with Lightning's public pieces (its cluster environments' ``detect``, the strategy
    registry, the accelerators' device parsing); no Trainer is built in the sweep process.
    """
    t = cfg.trainer
    if _launched_externally():  # torchrun, SLURM tasks, MPI: the ranks already exist
        return 0
    n = _local_devices(t.get("accelerator"), t.get("devices", 1))
    if n <= 1 or _start_method(t.get("strategy", "auto")) != "popen":
        return 0
    if int(t.get("num_nodes", 1) or 1) > 1:
        raise ConfigError(f"trainer field 'num_nodes' is {t.num_nodes} in a multirun job on one machine; "
                          f"expected a cluster launcher that starts the processes on every node "
                          f"(hydra/launcher=slurm), or torchrun on each node with run_id=<name>")
    return n


def _quote(value: str) -> str:
    """A Hydra override value that stays one string whatever characters the path holds."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


# hydra group choices the ranks repeat (logging set-up); the values of the logging nodes are in the job's config file
_RANK_HYDRA_GROUPS = ("hydra/job_logging=", "hydra/hydra_logging=")
RANK_CONFIG = "job_config"


def write_rank_config(cfg: DictConfig, job_dir: Path) -> Path:
    """Write this multirun job's composed config for its ranks: ``<job>/ranks/job_config.yaml``.

    The task config as the job composed it (unresolved: each rank resolves ``${hydra:...}``, its rank suffix and so
    on itself), whatever the job was composed from (``--config-dir`` / ``--config-path`` / ``--config-name``,
    ``hydra.searchpath``, experiments of the user's own), plus the hydra settings a plain run in the job's folder
    needs: ``mode: RUN`` (also over a sweep preset's ``MULTIRUN``), ``run.dir`` = the job's folder,
    ``output_subdir: null`` (the sweep wrote the job's ``.hydra/``), the job's name and logging. ``hydra.job.env_set``
    reaches the ranks as the job's environment, which they inherit.
    """
    hc = _hydra_config()
    node = OmegaConf.to_container(cfg, resolve=False)
    node["hydra"] = {"mode": "RUN", "run": {"dir": str(job_dir)}, "output_subdir": None,
                     "job": {"name": str(hc.job.name), "chdir": hc.job.chdir},
                     "job_logging": OmegaConf.to_container(hc.job_logging, resolve=False),
                     "hydra_logging": OmegaConf.to_container(hc.hydra_logging, resolve=False),
                     "verbose": OmegaConf.to_container(OmegaConf.create({"v": hc.verbose}))["v"]}
    path = job_dir / "ranks" / f"{RANK_CONFIG}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(node), path)
    return path


def rank_command(module: str, job_dir: Path) -> list[str]:
    """Arguments after ``python`` of one rank of this multirun job: the job's composed config
    (:func:`write_rank_config`) as a plain run in its folder, through Hydra's own command line."""
    hc = _hydra_config()
    groups = [o for o in hc.overrides.hydra if o.lstrip("+~").startswith(_RANK_HYDRA_GROUPS)]
    return ["-m", module, f"--config-dir={job_dir / 'ranks'}", f"--config-name={RANK_CONFIG}", *groups]


@contextlib.contextmanager
def _launcher_sandbox(env: Mapping[str, str]) -> Iterator[None]:
    """Environment for the ranks, and the sweep process's signal handlers back afterwards (torch's elastic agent
    installs its own for SIGTERM / SIGINT / SIGHUP / SIGQUIT and leaves them)."""
    sigs = [getattr(signal, n) for n in ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT") if hasattr(signal, n)]
    handlers = {s: signal.getsignal(s) for s in sigs}
    keys = [*env, "TORCHELASTIC_SIGNALS_TO_HANDLE"]  # set by torch's agent
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if threading.current_thread() is threading.main_thread():
            for s, h in handlers.items():
                signal.signal(s, h)


class JobProcessesFailed(RuntimeError):
    """A rank of a multirun job's own DDP processes exited with an error (the message names ranks and exit codes)."""


def launch_job_processes(nprocs: int, module: str, job_dir: Path) -> None:
    """Run this multirun job as ``nprocs`` local processes with torch's elastic launcher (``torchrun``'s engine):
    rendezvous on a free local port, ranks in ``RANK`` / ``LOCAL_RANK`` / ``WORLD_SIZE`` (Lightning's
    ``TorchElasticEnvironment`` takes them, so no rank starts more processes), each rank's stdout/stderr also in
    ``<job dir>/ranks/``; when a rank fails the launcher stops the others.

    Raises:
        JobProcessesFailed: a rank failed (exit codes and signals per rank).
        KeyboardInterrupt: the sweep process got SIGINT / SIGTERM (the ranks are stopped first).
    """
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, SignalException, Std
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    run_id = f"bapose-{job_dir.parent.name}-{job_dir.name}-{uuid.uuid4().hex[:8]}"
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nprocs, run_id=run_id, rdzv_backend="c10d",
                          rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.5,
                          logs_specs=DefaultLogsSpecs(log_dir=str(job_dir / "ranks"), tee=Std.ALL))
    # the ranks' W&B run is this sweep job's, not a plain run's; their overrides are the job's
    env = {"BAPOSE_RUN_NAME": run_name() or "", "BAPOSE_RUN_GROUP": run_group() or "",
           "BAPOSE_TASK_OVERRIDES": json.dumps(task_overrides())}
    args = rank_command(module, job_dir)
    log.info("multirun job %s: starting %d processes (torch elastic launch): %s %s", job_dir.name, nprocs,
             sys.executable, " ".join(args))
    try:
        with _launcher_sandbox(env), _quiet("torch.distributed.launcher.api", "torch.distributed.elastic"):
            elastic_launch(config, sys.executable)(*args)
    except SignalException as err:
        raise KeyboardInterrupt(str(err)) from None
    except ChildFailedError as err:
        parts = []
        for rank, failure in sorted(err.failures.items()):
            code = failure.exitcode
            sig = f" ({failure.signal_name()})" if code is not None and code < 0 else ""
            parts.append(f"rank {rank} exited with code {code}{sig}")
        raise JobProcessesFailed(f"{'; '.join(parts)} (per-rank output in '{job_dir / 'ranks'}')") from None


def optimized_metric(cfg: DictConfig, metrics: Mapping[str, Any]) -> float | None:
    """``cfg.optimized_metric`` of a finished run, for sweepers (None when missing or not finite)."""
    name = cfg.get("optimized_metric")
    value = metrics.get(name) if name else None
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def _record_failure(out_dir: Path, overrides: list[str], err: BaseException, task: str) -> None:
    """Mark a run folder failed unless its own rank 0 already did (its line is the precise one)."""
    path = out_dir / STATUS_FILE
    info = read_json(path)
    if info.get("status") == "failed":
        return
    info.update({"status": "failed", "task": info.get("task", task), "overrides": info.get("overrides", overrides),
                 "error": error_line(err), "error_type": type(err).__name__,
                 "ended": datetime.datetime.now().astimezone().isoformat(timespec="seconds")})
    info.setdefault("started", info["ended"])
    write_json(path, info)


def run_job(cfg: DictConfig, task: Callable[[DictConfig], dict[str, Any]], prog: str = "bapose-train",
            module: str = "bapose.cli.train", task_name: str = "train") -> float | None:
    """The body of a console script's Hydra task: one run, or one job of a multirun.

    * single run: ``status.json`` around ``task(cfg)``; a bapose error ends the program with one line and exit code
      1 (``exit_on_error``), anything else with its traceback.
    * multirun job: the same, but a failure is recorded (``status.json`` failed, the W&B run finished as failed by
      ``train``), logged, and the job returns ``None`` so the sweep goes on (Optuna marks the trial failed).
      A job that needs several local DDP processes runs them with :func:`launch_job_processes`.

    Returns ``cfg.optimized_metric`` of the run for sweepers, or ``None``.
    """
    hc = _hydra_config()
    overrides = task_overrides()
    out_dir = Path(cfg.paths.output_dir)
    sweep = is_sweep_job()
    job = f"{hc.job.num}" if sweep else ""
    nprocs = 0
    try:
        nprocs = job_processes(cfg) if sweep else 0
        if nprocs:
            write_json(out_dir / STATUS_FILE, {"status": "running", "task": task_name,
                                                         "overrides": overrides, "launcher": "torch elastic",
                                                         "processes": nprocs})
            write_rank_config(cfg, out_dir)
            launch_job_processes(nprocs, module, out_dir)
            return optimized_metric(cfg, read_json(out_dir / METRICS_FILE))
        with run_status(out_dir, task_name, overrides, write=process_rank() == 0) as status:
            metrics = task(cfg) if sweep else exit_on_error(prog, lambda: task(cfg))
            status["metrics"] = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        return optimized_metric(cfg, metrics)
    except Exception as err:
        if not sweep:
            raise
        # a failure outside run_status (set-up, the job's own processes) still leaves a failed status.json
        _record_failure(out_dir, overrides, err, task_name)
        if isinstance(err, (BAPoseError, JobProcessesFailed)):
            log.error("%s: multirun job %s failed: %s", prog, job, error_line(err))
        else:  # not one of ours: a bug or an environment problem, keep the traceback in the job's log
            log.exception("%s: multirun job %s failed: %s", prog, job, error_line(err))
        return None


# ---------------------------------------------------------------------------------------------------- sweep summary
_SWEEP: dict[str, Any] = {}


def _job_sort_key(path: Path) -> tuple:
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in path.parts)


class SweepSummary(Callback):
    """Hydra callback (``conf/hydra/default.yaml``): at the end of a multirun, read every job's ``status.json``
    written during this sweep, write ``<sweep dir>/sweep_status.json`` and print one line per failed job.

    Works for any launcher (local, SLURM): it reads the job folders, not the launcher's return values.
    """

    def __init__(self) -> None:
        self._started = time.time()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._started = time.time()
        _SWEEP.clear()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        jobs = []
        for path in sorted(sweep_dir.rglob(STATUS_FILE), key=lambda p: _job_sort_key(p.relative_to(sweep_dir))):
            # a reused sweep folder keeps older jobs: count this sweep's only (1 s of clock slack)
            if path.stat().st_mtime < self._started - 1.0:
                continue
            info = read_json(path)
            jobs.append({"job": str(path.parent.relative_to(sweep_dir)), "status": info.get("status", "unknown"),
                         "error": info.get("error"), "overrides": info.get("overrides", [])})
        if not jobs:
            return
        failed = [j for j in jobs if j["status"] != "finished"]
        summary = {"sweep_dir": str(sweep_dir), "jobs": len(jobs), "finished": len(jobs) - len(failed),
                   "failed": failed}
        write_json(sweep_dir / "sweep_status.json", summary)
        _SWEEP.update(summary)
        if failed:
            lines = [f"sweep {sweep_dir}: {len(failed)} of {len(jobs)} jobs failed"]
            lines += [f"  job {j['job']} ({j['status']}): {j['error'] or 'no error recorded'}" for j in failed]
            print("\n".join(lines), file=sys.stderr, flush=True)
        else:
            print(f"sweep {sweep_dir}: all {len(jobs)} jobs finished", flush=True)


def sweep_failures() -> int:
    """Failed jobs of the multirun this process just ran (0 after a single run)."""
    return len(_SWEEP.get("failed", []))


def exit_after_sweep() -> None:
    """End a console script after a multirun: exit status = number of failed jobs (capped at 255)."""
    failed = sweep_failures()
    if failed:
        raise SystemExit(min(failed, 255))
