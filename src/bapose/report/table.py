"""The report's table: finished jobs grouped into one row per configuration (seeds folded into mean ± std with n),
ranked by the metric, and written as ``report.md`` (with the failed / unfinished jobs) and ``report.csv``."""

from __future__ import annotations

import csv
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bapose.errors import ConfigError
from bapose.report.jobs import Job
from bapose.report.values import DEFAULT, flatten, fmt_value, ident, order, short

__all__ = ["Row", "SweepReport", "count_text", "group_rows", "metric_columns", "sort_rows", "varying_keys"]

# the AP columns after the metric's split prefix: COCO's four, then CrowdPose's easy / medium / hard when present
METRIC_COLUMNS = (("AP", "AP"), ("AP50", "AP50"), ("AP75", "AP75"), ("AR", "AR"), ("AP_easy", "AP easy"),
                  ("AP_medium", "AP medium"), ("AP_hard", "AP hard"))
# config subtrees that differ between jobs without being swept (used only when a job has no overrides)
NOT_SWEPT = ("paths", "hydra", "hydra_overrides", "logger", "callbacks", "tags", "task_name", "_wandb")


@dataclass
class Row:
    """One configuration: its swept values, finished jobs, and per-column ``(mean, std | None, n)``."""

    values: dict[str, Any]
    jobs: list[Job]
    stats: dict[str, tuple[float, float | None, int]]
    params_m: float | None = None
    gflops: float | None = None
    train_seconds: float | None = None
    best: bool = False

    @property
    def n(self) -> int:
        return len(self.jobs)


# ------------------------------------------------------------------------------------------------ rows
def swept_values(jobs: list[Job]) -> list[dict[str, Any]]:
    """Per job, the values that identify its configuration (overrides, else the flattened config)."""
    if all(j.overrides is not None for j in jobs):
        return [dict(j.overrides or {}) for j in jobs]
    flat = []
    for j in jobs:
        values = flatten(j.full_config() or {})
        flat.append({k: v for k, v in values.items() if k.split(".")[0] not in NOT_SWEPT})
    return flat


def varying_keys(values: list[dict[str, Any]]) -> list[str]:
    """The keys whose value is not the same in every job, in first-seen order."""
    keys: list[str] = []
    for v in values:
        keys += [k for k in v if k not in keys]
    varying = [k for k in keys if len({ident(v.get(k, DEFAULT)) for v in values}) > 1]
    # a config diff also shows what follows a swept value (codec.input_size follows data.input_size): keep the first
    # of keys that vary identically
    seen, out = set(), []
    for k in varying:
        pattern = tuple(ident(v.get(k, DEFAULT)) for v in values)
        groups: dict[str, int] = {}
        canon = tuple(groups.setdefault(p, len(groups)) for p in pattern)
        if canon not in seen:
            seen.add(canon)
            out.append(k)
    return out


def _stat(values: list[float]) -> tuple[float, float | None, int]:
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None), len(values)


def metric_columns(metric: str, jobs: list[Job]) -> list[tuple[str, str]]:
    """``(metrics key, header)`` of the AP columns: the metric's split (``val/``) AP / AP50 / ... that jobs have."""
    split = metric.split("/")[0] + "/" if "/" in metric else ""
    columns = [(f"{split}{k}", h) for k, h in METRIC_COLUMNS if any(f"{split}{k}" in j.metrics for j in jobs)]
    if metric not in [c for c, _ in columns]:
        columns.insert(0, (metric, metric.removeprefix(split)))
    return columns


def group_rows(jobs: list[Job], fold: Sequence[str],
               columns: list[tuple[str, str]]) -> tuple[list[Row], list[str], list[str]]:
    """``(rows, swept keys, folded keys)``: one row per configuration of the finished ``jobs``, with its stats."""
    values = swept_values(jobs)
    keys = varying_keys(values)
    folded = [k for k in keys if k in fold]
    keys = [k for k in keys if k not in fold]
    groups: dict[str, Row] = {}
    for job, vals in zip(jobs, values, strict=True):
        row_values = {k: vals.get(k, DEFAULT) for k in keys}
        job.overrides = vals if job.overrides is None else job.overrides
        groups.setdefault(ident([row_values[k] for k in keys]), Row(values=row_values, jobs=[], stats={})) \
            .jobs.append(job)
    rows = list(groups.values())
    for r in rows:
        for key, _ in columns:
            found = [j.metrics[key] for j in r.jobs if key in j.metrics]
            if found:
                r.stats[key] = _stat(found)
        times = [j.metrics["train_seconds"] for j in r.jobs if "train_seconds" in j.metrics]
        r.train_seconds = statistics.fmean(times) if times else None
    return rows, keys, folded


def _sort_key(sort: str, metric: str, keys: list[str],
              columns: list[tuple[str, str]]) -> tuple[str, Callable[[Row], Any], bool]:
    """``(name, key function, is a metric column)`` for the ``sort`` argument."""
    if sort == "metric":
        sort = metric
    for key, header in columns:
        if sort in (key, header):
            return key, lambda r, k=key: r.stats[k][0] if k in r.stats else None, True
    named: dict[str, Callable[[Row], Any]] = {
        "n": lambda r: r.n, "params": lambda r: r.params_m, "gflops": lambda r: r.gflops,
        "time": lambda r: r.train_seconds, "train_time": lambda r: r.train_seconds}
    if sort.lower() in named:
        return sort, named[sort.lower()], False
    matches = [k for k in keys if sort in (k, short(k))]
    if len(matches) == 1:
        k = matches[0]
        return k, lambda r: order(r.values.get(k, DEFAULT)), False
    choices = ["metric", *keys, *(h for _, h in columns), *named]
    raise ConfigError(f"sort: '{sort}' is {'ambiguous' if matches else 'not a column'}; expected one of "
                      f"{', '.join(choices)}")


def sort_rows(rows: list[Row], sort: str, metric: str, keys: list[str], columns: list[tuple[str, str]],
              descending: bool | None, higher_is_better: bool) -> tuple[list[Row], str, bool]:
    """``(rows in order, sorted-by name, descending)``; rows without a value for the sort key go last.
    ``descending`` defaults to best first for a metric column, ascending for a swept key."""
    name, key, is_metric = _sort_key(sort, metric, keys, columns)
    if descending is None:
        descending = is_metric and higher_is_better
    present = [r for r in rows if key(r) is not None]
    missing = [r for r in rows if key(r) is None]
    return sorted(present, key=key, reverse=descending) + missing, name, bool(descending)


# ------------------------------------------------------------------------------------------------ formatting
def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _fmt_stat(stat: tuple[float, float | None, int] | None) -> str:
    if stat is None:
        return "-"
    mean, std, _n = stat
    return f"{mean:.3f}" if std is None else f"{mean:.3f} ± {std:.3f}"


def _fmt_num(v: float | None, digits: int) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _fmt_time(seconds: float | None, scale: float | None = None) -> str:
    """``seconds`` in s, min or h, the unit chosen by ``scale`` (the column's largest value; default ``seconds``)."""
    if seconds is None:
        return "-"
    scale = seconds if scale is None else scale
    if scale < 120:
        return f"{seconds:.0f} s"
    if scale < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def count_text(jobs: list[Job]) -> str:
    """``1 failed, 2 unfinished``: how many jobs are in each state."""
    counts: dict[str, int] = {}
    for j in jobs:
        counts[j.status] = counts.get(j.status, 0) + 1
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))


# ------------------------------------------------------------------------------------------------ the report
@dataclass
class SweepReport:
    """The report of :func:`bapose.report.sweep_report`: ``rows`` (one per configuration, sorted), ``problems`` (jobs
    not in the table and why), ``keys`` (the swept keys shown), ``jobs`` (all of them)."""

    sources: list[str]
    metric: str
    keys: list[str]
    folded: list[str]
    columns: list[tuple[str, str]]  # (metrics.json key, header)
    rows: list[Row]
    problems: list[Job]
    jobs: list[Job]
    higher_is_better: bool = True
    sort: str = ""
    descending: bool = True
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def best(self) -> Row | None:
        return next((r for r in self.rows if r.best), None)

    def _intro(self) -> list[str]:
        finished = sum(r.n for r in self.rows)
        left = count_text(self.problems) or "none failed or unfinished"
        src = ", ".join(f"`{s}`" for s in self.sources)
        return [
            f"# Sweep report: {self.metric}",
            "",
            f"{_plural(len(self.jobs), 'job')} from {src}: {finished} finished in "
            f"{_plural(len(self.rows), 'configuration')}; {left}" + (" (listed below)." if self.problems else "."),
            f"Swept: {', '.join(f'`{k}`' for k in self.keys) or 'nothing varies'}"
            + (f"; folded into mean ± std over {', '.join(f'`{k}`' for k in self.folded)} (n = finished jobs)"
               if self.folded else "") + ".",
            f"Best (★): highest {self.metric}." if self.higher_is_better else f"Best (★): lowest {self.metric}.",
            f"Sorted by {self.sort}, {'descending' if self.descending else 'ascending'}. Params and GFLOPs: the "
            f"model at its input size (multiply-adds, as `bapose-profile`); train time: mean wall time of a job.",
            "",
        ]

    def _table(self) -> list[str]:
        head = ["", *self.keys, *(h for _, h in self.columns), "n", "params (M)", "GFLOPs", "train time"]
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
        # one unit for the whole train-time column (the largest time picks it), so rows compare at a glance
        longest = max((r.train_seconds for r in self.rows if r.train_seconds is not None), default=None)
        for r in self.rows:
            cells = ["★" if r.best else ""]
            cells += [_md(fmt_value(r.values.get(k, DEFAULT))) for k in self.keys]
            for key, _ in self.columns:
                cell = _fmt_stat(r.stats.get(key))
                cells.append(f"**{cell}**" if r.best and key == self.metric else cell)
            cells += [str(r.n), _fmt_num(r.params_m, 2), _fmt_num(r.gflops, 2), _fmt_time(r.train_seconds, longest)]
            lines.append("| " + " | ".join(cells) + " |")
        return lines

    def _problem_table(self) -> list[str]:
        if not self.problems:
            return []
        lines = ["", f"## Failed or unfinished jobs ({len(self.problems)})", "",
                 "| job | status | settings | error / last log line |", "|---|---|---|---|"]
        overrides = [j.overrides for j in self.jobs if j.overrides is not None]
        # override keys that are not the same in every job (a failed job's keys may be new)
        differing = set(varying_keys(overrides)) if overrides else set()
        for j in self.problems:
            settings = ", ".join(f"{k}={fmt_value(v)}" for k, v in sorted((j.overrides or {}).items())
                                 if k in self.keys or k in self.folded or k in differing)
            lines.append(f"| `{_md(j.name)}` | {j.status} | {_md(settings) or '-'} | {_md(j.error) or '-'} |")
        return lines

    def markdown(self) -> str:
        """``report.md``: a summary line, the table, then the failed / unfinished jobs."""
        return "\n".join(self._intro() + self._table() + self._problem_table()) + "\n"

    def csv_rows(self) -> list[dict[str, Any]]:
        """``report.csv`` rows: swept values, then ``<metric key>_mean`` / ``_std`` per column, n, cost, time."""
        out = []
        for r in self.rows:
            row: dict[str, Any] = {k: fmt_value(r.values.get(k, DEFAULT)) for k in self.keys}
            for key, _ in self.columns:
                mean, std, _n = r.stats.get(key, (None, None, 0))
                row[f"{key}_mean"], row[f"{key}_std"] = mean, std
            seconds = None if r.train_seconds is None else round(r.train_seconds, 1)
            folded = ";".join(",".join(f"{k}={fmt_value((j.overrides or {}).get(k, DEFAULT))}" for k in self.folded)
                              for j in r.jobs)
            row.update({"n": r.n, "params_m": r.params_m, "gflops": r.gflops, "train_seconds": seconds,
                        "best": r.best, "folded": folded, "jobs": ";".join(j.name for j in r.jobs)})
            out.append(row)
        return out

    def figure(self) -> Any:
        """The plot of ``report.png`` (:func:`bapose.report.plot.figure`)."""
        from bapose.report.plot import figure

        return figure(self)

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """Write ``report.md``, ``report.csv`` and ``report.png`` into ``out_dir``; returns their paths."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        md, table, png = out / "report.md", out / "report.csv", out / "report.png"
        md.write_text(self.markdown())
        rows = self.csv_rows()
        with open(table, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["n"])
            writer.writeheader()
            writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
        self.figure().savefig(png, dpi=110)
        self.files = {"md": md, "csv": table, "png": png}
        return self.files
