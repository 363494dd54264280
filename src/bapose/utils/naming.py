"""Who a run is: its folder name (the same in every process and for every attempt), its W&B name and group, its
rank, its overrides.

* :func:`run_folder_name` — a single run's folder (``hydra.run.dir``): the explicit ``run_id``; else
  ``slurm-<job id>[_<array task>]-<hash of the overrides>`` in a SLURM batch job (a requeued job comes back to its
  folder; an interactive allocation is not one); else ``torchrun-<rendezvous id>`` under torchrun; else a timestamp
  that no other run folder has.
* :func:`run_group` — the sweep folder name in a Hydra multirun (all jobs of a sweep share a W&B group);
  :func:`run_name` — the run folder's name for a single run, ``<job num>-<overrides>`` for a multirun job.
* :func:`rank_suffix` / :func:`on_rank_zero` / :func:`process_rank` — per-rank log files and rank-0-only values.

The processes a multirun job launches for itself (``bapose.training.runs``) get their W&B name and group through the
``BAPOSE_RUN_NAME`` / ``BAPOSE_RUN_GROUP`` environment variables, which take precedence, and the job's overrides
through ``BAPOSE_TASK_OVERRIDES`` (:func:`task_overrides`). The ``${bapose.*}`` resolvers over these are registered
by :mod:`bapose.utils.resolvers`.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

__all__ = ["on_rank_zero", "process_rank", "rank_suffix", "run_folder_name", "run_group", "run_name",
           "slurm_batch_job", "task_overrides"]


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
