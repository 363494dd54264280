""":func:`sweep_report`: the jobs of every source -> the checked, ranked table (with model cost) -> files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bapose.errors import ConfigError, DataError
from bapose.report.cost import job_cost
from bapose.report.jobs import Job, find_local_jobs
from bapose.report.table import SweepReport, count_text, group_rows, metric_columns, sort_rows
from bapose.report.wandb_api import is_wandb_spec, read_wandb_online

__all__ = ["find_jobs", "sweep_report"]


def find_jobs(sources: Sequence[str | Path], api: Any = None) -> list[Job]:
    """Every job of ``sources``: run / sweep folders (:func:`bapose.report.jobs.find_local_jobs`) and ``wandb:``
    groups or sweeps (:func:`bapose.report.wandb_api.read_wandb_online` through ``api``). A source without any job
    is a :class:`DataError`; a job reached through two sources counts once."""
    jobs: list[Job] = []
    seen: set[str] = set()
    for source in sources:
        online = is_wandb_spec(source)
        found = read_wandb_online(str(source), api=api) if online else find_local_jobs(source)
        for job in found:
            key = job.name if online else str(Path(job.source).resolve())  # W&B: entity/project/id
            if key not in seen:
                seen.add(key)
                jobs.append(job)
    return jobs


def _with_metric(jobs: list[Job], metric: str, names: str) -> list[Job]:
    """The finished jobs that have ``metric``; the finished others become ``no metric`` problems."""
    finished = [j for j in jobs if j.status == "finished"]
    if not finished:
        first = jobs[0]
        raise DataError(f"{names}: none of the {len(jobs)} jobs has metrics.json (a finished run) "
                        f"({count_text(jobs)}; e.g. '{first.name}': {first.error or first.status}); expected at "
                        f"least one finished bapose-train job")
    with_metric = [j for j in finished if metric in j.metrics]
    if not with_metric:
        found = sorted({k for j in finished for k in j.metrics if "/" in k})
        raise DataError(f"{names}: no finished job has the metric '{metric}'; expected one of "
                        f"{', '.join(found) or '(no metrics)'}")
    for j in finished:
        if metric not in j.metrics:
            j.status, j.error = "no metric", f"finished, but its metrics have no '{metric}'"
    return with_metric


def sweep_report(sources: Sequence[str | Path] | str | Path, out_dir: str | Path | None = None,
                 metric: str = "val/AP", sort: str | None = None, descending: bool | None = None,
                 fold: Sequence[str] = ("seed",), higher_is_better: bool = True, cost: bool = True,
                 api: Any = None) -> SweepReport:
    """Build the report of every job in ``sources`` and, with ``out_dir``, write report.md / .csv / .png there.

    Args:
        sources: sweep folders, run folders, ``wandb:ENTITY/PROJECT/groups/NAME`` / ``.../sweeps/ID`` (see
            :mod:`bapose.report`); several are reported as one sweep.
        metric: the metrics.json / W&B summary key that ranks the rows and marks the best (``test/AP``,
            ``val/AP_hard``, ...); its split prefix (``val/``) picks the AP columns.
        sort: ``metric`` (default), a swept key (full or its last part, e.g. ``input_size``), or a column header
            (``AP50``, ``n``, ``params``, ``GFLOPs``, ``time``).
        descending: sort order; default descending for metric columns (best first), ascending for swept keys.
        fold: keys whose values are repeats of one configuration (seeds): folded into mean ± std with n.
        higher_is_better: False for a metric to minimise (the best row is its lowest).
        cost: count params / GFLOPs from each configuration's model config (meta device; ~1 s for a W48).
        api: a ``wandb.Api``-shaped object for ``wandb:`` sources (default ``wandb.Api()``).

    Raises:
        DataError: a source without jobs, or no job with ``metrics.json`` (no finished job) / without ``metric``.
    """
    if isinstance(sources, (str, Path)):
        sources = [sources]
    if not sources:
        raise ConfigError("sweep_report: no sources; expected at least one sweep folder, run folder or W&B group")
    jobs = find_jobs(sources, api=api)
    with_metric = _with_metric(jobs, metric, ", ".join(f"'{s}'" for s in sources))
    columns = metric_columns(metric, with_metric)
    rows, keys, folded = group_rows(with_metric, fold, columns)
    for r in rows if cost else []:
        r.params_m, r.gflops = job_cost(r.jobs[0]) or (None, None)
    pick = max if higher_is_better else min
    pick(rows, key=lambda r: r.stats[metric][0]).best = True
    rows, sort_name, descending = sort_rows(rows, sort or "metric", metric, keys, columns, descending,
                                            higher_is_better)
    report = SweepReport(sources=[str(s) for s in sources], metric=metric, keys=keys, folded=folded,
                         columns=columns, rows=rows, problems=[j for j in jobs if j.status != "finished"], jobs=jobs,
                         higher_is_better=higher_is_better, sort=sort_name, descending=descending)
    if out_dir is not None:
        report.write(out_dir)
    return report
