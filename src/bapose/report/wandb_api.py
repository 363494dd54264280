"""Jobs of a W&B group or sweep on a W&B server, through W&B's public API (``wandb.Api``) only.

``wandb:ENTITY/PROJECT/groups/NAME`` (a ``bapose-train -m`` sweep logs into one group, ``train-<sweep folder>``),
``wandb:ENTITY/PROJECT/NAME`` (the same), ``wandb:ENTITY/PROJECT/sweeps/ID``, or the ``https://wandb.ai/...`` URLs
of those pages. What a run gives: its swept values from the ``hydra_overrides`` list that
:class:`bapose.training.callbacks.WandbMedia` puts into the run config, its numbers from the run summary (the
W&B ``_runtime`` as the train time), its state from ``run.state``. W&B's own files on this machine are never read:
local sweeps are reported from their run folders (:mod:`bapose.report.jobs`).
"""

from __future__ import annotations

import re
from typing import Any

from bapose.errors import ConfigError, DataError
from bapose.report.jobs import Job, parse_overrides
from bapose.report.values import last_line, numeric_metrics

__all__ = ["is_wandb_spec", "read_wandb_online"]

_WANDB_SPEC = re.compile(r"^(?:wandb:|https?://(?:www\.)?wandb\.ai/)([^/]+)/([^/]+)/(?:(groups|sweeps)/)?([^/?#]+)")
_FAILED = ("failed", "crashed", "killed")


def is_wandb_spec(source: Any) -> bool:
    return str(source).startswith(("wandb:", "https://wandb.ai/", "http://wandb.ai/", "https://www.wandb.ai/"))


def _default_api(spec: str) -> Any:
    try:
        import wandb

        return wandb.Api(timeout=60)
    except Exception as e:  # noqa: BLE001 - no wandb / no key / no network: one line, not wandb's traceback
        raise DataError(f"'{spec}': the W&B API is not available ({type(e).__name__}: {last_line(str(e))}); "
                        f"expected wandb installed, `wandb login` (or WANDB_API_KEY) and a network, or pass the "
                        f"bapose-train sweep / run folders instead") from None


def _job(run: Any, config: dict[str, Any], summary: dict[str, Any], entity: str, project: str, spec: str) -> Job:
    job = Job(name=f"{entity}/{project}/{run.id} ({run.name})", source=str(getattr(run, "url", "") or spec),
              status="unfinished", config=config)
    if isinstance(config.get("hydra_overrides"), list):
        job.overrides = parse_overrides(config["hydra_overrides"], f"W&B run {run.id} (config 'hydra_overrides')")
    state = str(run.state).lower()
    if state == "finished":
        job.status, job.metrics = "finished", numeric_metrics(summary)
        if "_runtime" in job.metrics and "train_seconds" not in job.metrics:
            job.metrics["train_seconds"] = job.metrics["_runtime"]
    elif state in _FAILED:
        job.status = "failed"
        job.error = str(summary.get("error") or "") or f"W&B state '{state}'"
    else:
        job.error = f"W&B state '{state}'"
    return job


def read_wandb_online(spec: str, api: Any = None) -> list[Job]:
    """Jobs of a W&B group or sweep (see the module docstring) through ``api`` (default ``wandb.Api()``): anything
    with ``runs(path, filters=...)`` and ``sweep(path).runs`` whose runs have ``id``, ``name``, ``state``,
    ``config``, ``summary`` (and optionally ``url``)."""
    m = _WANDB_SPEC.match(spec)
    if m is None:
        raise ConfigError(f"'{spec}': expected wandb:ENTITY/PROJECT/groups/NAME, wandb:ENTITY/PROJECT/sweeps/ID "
                          f"or a https://wandb.ai/ENTITY/PROJECT/groups|sweeps/... URL")
    entity, project, kind, name = m.groups()
    api = _default_api(spec) if api is None else api
    try:
        if kind == "sweeps":
            runs = api.sweep(f"{entity}/{project}/{name}").runs
        else:
            runs = api.runs(f"{entity}/{project}", filters={"group": name})
        # the pages of runs, and each (lazily listed) run's config and summary, are fetched here; the summary (an
        # HTTPSummary) gives dict() its keys() and []
        fetched = [(run, dict(run.config or {}), dict(run.summary)) for run in runs]
    except Exception as e:  # noqa: BLE001 - wandb.errors.CommError and friends (also raised while paging)
        raise DataError(f"'{spec}': W&B query failed ({type(e).__name__}: {last_line(str(e))})") from None
    jobs = [_job(run, config, summary, entity, project, spec) for run, config, summary in fetched]
    if not jobs:
        raise DataError(f"'{spec}': no W&B runs in this {'sweep' if kind == 'sweeps' else 'group'}; expected the runs "
                        f"of a bapose-train sweep")
    return jobs
