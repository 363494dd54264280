"""Sweep reports: the jobs of one or more sweeps become one table row per configuration and a plot.

``bapose-report`` (``bapose.cli.report``) and ``notebooks/02_ablations.ipynb`` call :func:`sweep_report`::

    report = sweep_report(["outputs/train/multiruns/2026-05-01_12-00-00"], out_dir="reports/dilations")
    print(report.markdown())          # also written: report.md, report.csv, report.png

Where jobs come from (any mix, several at once):

* run folders of ``bapose-train``: a Hydra multirun folder (``<sweep>/<job num>/``), a single run folder, or any
  folder above them. A job's swept values are its Hydra overrides (``.hydra/overrides.yaml``, else ``status.json``);
  its numbers ``metrics.json``; its state ``status.json`` (finished / failed with the error line / running).
* W&B run folders (``wandb/offline-run-*``), read from the run's own transaction log
  (:func:`bapose.utils.wandb.read_offline_run`): swept values from the ``hydra_overrides`` the run config carries,
  numbers from the run summary;
* a W&B group or sweep online, ``wandb:ENTITY/PROJECT/groups/NAME`` (a ``bapose-train -m`` sweep is one group) or
  ``wandb:ENTITY/PROJECT/sweeps/ID`` (``https://wandb.ai/...`` URLs work too), through ``wandb.Api``.

Columns are the swept keys whose value differs between finished jobs (and only those; keys in ``fold``, the seed,
are folded into mean ± std with n), the metric's split AP / AP50 / AP75 / AR (AP easy / medium / hard when the jobs
have CrowdPose numbers), params and GFLOPs of the configuration's model at its input size (counted here from the
job's config, on the meta device, as ``bapose-profile`` does), and the train time. Failed and unfinished jobs are
listed with their error line (or their log's last line), never dropped.
"""

from __future__ import annotations

import csv
import json
import math
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bapose.errors import ConfigError, DataError
from bapose.utils.logging import STATUS_FILE

__all__ = ["Job", "Row", "SweepReport", "find_jobs", "sweep_report"]

DEFAULT = "(default)"  # shown for a swept key a job did not set
# the AP columns after the metric's split prefix: COCO's four, then CrowdPose's easy / medium / hard when present
METRIC_COLUMNS = (("AP", "AP"), ("AP50", "AP50"), ("AP75", "AP75"), ("AR", "AR"), ("AP_easy", "AP easy"),
                  ("AP_medium", "AP medium"), ("AP_hard", "AP hard"))
# config subtrees that differ between jobs without being swept (used only when a job has no overrides)
NOT_SWEPT = ("paths", "hydra", "hydra_overrides", "logger", "callbacks", "tags", "task_name", "_wandb")


@dataclass
class Job:
    """One job of a sweep.

    ``status``: ``finished`` | ``failed`` | ``interrupted`` | ``unfinished`` | ``no metric`` (finished without the
    report's metric). ``overrides``: swept key -> value (None when the job does not say what it overrode); ``config``:
    its config (for params / GFLOPs, and the swept keys when there are no overrides); ``error``: why it is not in the
    table (failure line, or the last line of its log).
    """

    name: str
    source: str
    status: str
    overrides: dict[str, Any] | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    config: dict[str, Any] | None = None
    config_file: str | None = None
    error: str = ""

    def full_config(self) -> dict[str, Any] | None:
        """The job's config as a plain dict (a run folder's ``.hydra/config.yaml`` unresolved), or None."""
        if self.config is None and self.config_file is not None:
            from omegaconf import OmegaConf

            try:
                self.config = OmegaConf.to_container(OmegaConf.load(self.config_file), resolve=False)
            except Exception:  # noqa: BLE001 - an unreadable config: no cost column, the rest stands
                self.config_file = None
        return self.config


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


# ------------------------------------------------------------------------------------------------ values
def parse_overrides(lines: Iterable[str], source: str = "") -> dict[str, Any]:
    """Hydra override strings -> ``{key: value}`` with Hydra's own grammar (lists, numbers, quoted strings)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    lines = [str(x) for x in lines]
    try:
        parsed = OverridesParser.create().parse_overrides(lines)
    except Exception as e:  # noqa: BLE001 - Hydra's OverrideParseException; the message is what the user needs
        raise DataError(f"{source or 'overrides'}: cannot parse the Hydra overrides {lines} ({e}); expected "
                        f"key=value strings as in .hydra/overrides.yaml") from None
    out: dict[str, Any] = {}
    for o in parsed:
        if o.is_delete():
            continue
        key = o.key_or_group + (f"@{o.package}" if o.package else "")
        out[key] = o.value()
    return out


def fmt_value(v: Any) -> str:
    """A swept value as the table shows it: lists ``[1, 6, 12, 18]``, floats in short form, None as ``null``."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(fmt_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {fmt_value(x)}" for k, x in v.items()) + "}"
    return str(v)


def _ident(v: Any) -> str:
    return json.dumps(v, sort_keys=True, default=str)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _order(v: Any) -> tuple[int, Any]:
    if v == DEFAULT:
        return (0, "")
    if _is_number(v):
        return (1, float(v))
    return (2, fmt_value(v))


def _natural(name: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _numeric_metrics(d: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in d.items() if _is_number(v)}


# ------------------------------------------------------------------------------------------------ sources
def _read_json(path: Path) -> tuple[Any, str]:
    try:
        return json.loads(path.read_text()), ""
    except (OSError, ValueError) as e:
        return None, f"unreadable {path.name} ({type(e).__name__}: {e})"


def _log_tail(folder: Path) -> str:
    """The last line of the job's newest log file (Hydra's ``<task>.log``), or ''."""
    logs = sorted((p for p in folder.glob("*.log") if p.is_file()), key=lambda p: p.stat().st_mtime)
    for log in reversed(logs):
        line = _last_line(log.read_text(errors="replace"))
        if line:
            return f"{log.name}: {line}"
    return ""


def is_run_folder(path: Path) -> bool:
    """A ``bapose-train`` run / multirun job folder: it has ``status.json``, ``metrics.json`` or ``.hydra/``."""
    return path.is_dir() and ((path / STATUS_FILE).is_file() or (path / "metrics.json").is_file()
                              or (path / ".hydra" / "overrides.yaml").is_file())


def read_run_folder(path: Path, name: str | None = None) -> Job:
    """A job from a ``bapose-train`` run folder (see the module docstring for what is read)."""
    name = name or str(path)
    job = Job(name=name, source=str(path), status="unfinished")
    status, problem = (None, "")
    if (path / STATUS_FILE).is_file():
        status, problem = _read_json(path / STATUS_FILE)
    overrides_file = path / ".hydra" / "overrides.yaml"
    if overrides_file.is_file():
        import yaml

        job.overrides = parse_overrides(yaml.safe_load(overrides_file.read_text()) or [], str(overrides_file))
    elif isinstance(status, dict) and isinstance(status.get("overrides"), list):
        job.overrides = parse_overrides(status["overrides"], str(path / STATUS_FILE))
    if (path / ".hydra" / "config.yaml").is_file():
        job.config_file = str(path / ".hydra" / "config.yaml")  # loaded only when needed

    state = status.get("status") if isinstance(status, dict) else None
    if state in ("failed", "interrupted"):
        job.status = state
        job.error = str(status.get("error") or "") or _log_tail(path) or f"status.json says '{state}' (no error line)"
        return job
    if (path / "metrics.json").is_file():
        metrics, bad = _read_json(path / "metrics.json")
        if isinstance(metrics, dict):
            job.status, job.metrics = "finished", _numeric_metrics(metrics)
            return job
        problem = bad or "metrics.json is not a JSON object"
    tail = _log_tail(path)
    if not problem:
        problem = (f"status.json says '{state}'" if state else "no status.json") + ", no metrics.json"
    job.error = f"{problem}; last log line: {tail}" if tail else problem
    return job


def read_wandb_offline(path: Path, name: str | None = None) -> Job:
    """A job from an offline W&B run folder (``wandb/offline-run-*``)."""
    from bapose.utils.wandb import read_offline_run

    run = read_offline_run(path)
    job = Job(name=name or str(path), source=str(path), status="unfinished", config=run.config)
    if isinstance(run.config.get("hydra_overrides"), list):
        job.overrides = parse_overrides(run.config["hydra_overrides"], f"{path} (config 'hydra_overrides')")
    summary = _numeric_metrics(run.summary)
    if "_runtime" in summary and "train_seconds" not in summary:
        summary["train_seconds"] = summary["_runtime"]
    tail = run.output_tail()
    if run.exit_code is None:
        job.error = "no exit record in the W&B run (still running, or killed)" + (f"; last output line: {tail}"
                                                                                  if tail else "")
    elif run.exit_code != 0:
        job.status = "failed"
        job.error = str(run.summary.get("error") or "") or tail or f"W&B exit code {run.exit_code}"
    else:
        job.status, job.metrics = "finished", summary
    return job


_WANDB_SPEC = re.compile(r"^(?:wandb:|https?://(?:www\.)?wandb\.ai/)([^/]+)/([^/]+)/(?:(groups|sweeps)/)?([^/?#]+)")


def is_wandb_spec(source: str) -> bool:
    return str(source).startswith(("wandb:", "https://wandb.ai/", "http://wandb.ai/", "https://www.wandb.ai/"))


def read_wandb_online(spec: str, api: Any = None) -> list[Job]:
    """Jobs of a W&B group (``wandb:ENTITY/PROJECT/groups/NAME`` or ``.../PROJECT/NAME``) or sweep
    (``wandb:ENTITY/PROJECT/sweeps/ID``) through the public API (``api`` defaults to ``wandb.Api()``)."""
    m = _WANDB_SPEC.match(spec)
    if m is None:
        raise ConfigError(f"'{spec}': expected wandb:ENTITY/PROJECT/groups/NAME, wandb:ENTITY/PROJECT/sweeps/ID "
                          f"or a https://wandb.ai/ENTITY/PROJECT/groups|sweeps/... URL")
    entity, project, kind, name = m.groups()
    if api is None:
        try:
            import wandb

            api = wandb.Api(timeout=60)
        except Exception as e:  # noqa: BLE001 - no key / no network: one line, not wandb's traceback
            raise DataError(f"'{spec}': the W&B API is not available ({type(e).__name__}: {_last_line(str(e))}); "
                            f"expected `wandb login` (or WANDB_API_KEY) and a network, or pass the offline run "
                            f"folders (<run>/wandb/offline-run-*) instead") from None
    try:
        if kind == "sweeps":
            runs = list(api.sweep(f"{entity}/{project}/{name}").runs)
        else:
            runs = list(api.runs(f"{entity}/{project}", filters={"group": name}))
    except Exception as e:  # noqa: BLE001 - wandb.errors.CommError and friends
        raise DataError(f"'{spec}': W&B query failed ({type(e).__name__}: {_last_line(str(e))})") from None
    jobs = []
    for run in runs:
        config = dict(run.config or {})
        summary = dict(run.summary_metrics or {})
        job = Job(name=f"{entity}/{project}/{run.id} ({run.name})", source=str(getattr(run, "url", "") or spec),
                  status="unfinished", config=config)
        if isinstance(config.get("hydra_overrides"), list):
            job.overrides = parse_overrides(config["hydra_overrides"], f"W&B run {run.id} (config)")
        state = str(run.state).lower()
        if state == "finished":
            job.status, job.metrics = "finished", _numeric_metrics(summary)
            if "_runtime" in job.metrics and "train_seconds" not in job.metrics:
                job.metrics["train_seconds"] = job.metrics["_runtime"]
        elif state in ("failed", "crashed", "killed"):
            job.status = "failed"
            job.error = str(summary.get("error") or "") or f"W&B state '{state}'"
        else:
            job.error = f"W&B state '{state}'"
        jobs.append(job)
    return jobs


def find_jobs(sources: Sequence[str | Path], api: Any = None) -> list[Job]:
    """Every job of ``sources`` (see the module docstring); a source without any job is a :class:`DataError`."""
    jobs: list[Job] = []
    for source in sources:
        if is_wandb_spec(str(source)):
            found = read_wandb_online(str(source), api=api)
            if not found:
                raise DataError(f"'{source}': no W&B runs in this group / sweep; expected the runs of a "
                                f"bapose-train sweep")
            jobs += found
            continue
        from bapose.utils.wandb import find_offline_runs, is_offline_run

        root = Path(source)
        if not root.exists():
            raise DataError(f"'{root}': no such folder; expected a sweep folder (outputs/train/multiruns/<stamp>), a "
                            f"run folder or a W&B run folder")
        label = lambda p: str(p) if p == root else str(Path(root.name) / p.relative_to(root))  # noqa: E731
        if is_offline_run(root):
            jobs.append(read_wandb_offline(root, label(root)))
            continue
        if is_run_folder(root):
            jobs.append(read_run_folder(root, label(root)))
            continue
        folders = _run_folders_below(root)
        if folders:
            jobs += [read_run_folder(p, label(p)) for p in folders]
            continue
        runs = find_offline_runs(root) if root.is_dir() else []
        if not runs:
            raise DataError(f"'{root}': no jobs found; expected a sweep folder (<job num>/.hydra/overrides.yaml), "
                            f"bapose-train run folders (status.json / metrics.json) or W&B runs (offline-run-*)")
        jobs += [read_wandb_offline(p, label(p)) for p in runs]
    return jobs


def _run_folders_below(root: Path) -> list[Path]:
    """Run folders at any depth below ``root``, not descending into a run folder (its wandb/ etc.)."""
    found: list[Path] = []
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            children = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
        except OSError:
            continue
        for child in children:
            if is_run_folder(child):
                found.append(child)
            elif child.name != "wandb":
                stack.append(child)
    return sorted(found, key=lambda p: _natural(str(p)))


# ------------------------------------------------------------------------------------------------ cost
_COST_CACHE: dict[str, tuple[float, float] | None] = {}


def _model_and_size(job: Job) -> tuple[dict[str, Any], Any] | None:
    """The job's resolved model config and ``data.input_size``, or None."""
    cfg = job.full_config()
    if not cfg or not isinstance(cfg.get("model"), dict):
        return None
    from omegaconf import OmegaConf

    import bapose.utils.logging  # noqa: F401 - registers the ${bapose.*} resolvers a config may use

    try:  # a run folder's config is unresolved (num_keypoints: ${data.num_keypoints}); W&B's is resolved already
        node = OmegaConf.create({"model": cfg["model"], "data": cfg.get("data") or {}})
        return OmegaConf.to_container(node.model, resolve=True), OmegaConf.select(node, "data.input_size")
    except Exception:  # noqa: BLE001 - an interpolation into a part of the config we did not keep
        return None


def model_cost(job: Job) -> tuple[float, float] | None:
    """``(params in M, GFLOPs)`` of the job's model at its ``data.input_size`` (meta device, as ``bapose-profile``
    counts them: multiply-adds, deformable convs as the convs they are), or None when the config does not say."""
    found = _model_and_size(job)
    if found is None or "_target_" not in found[0]:
        return None
    model, size = found
    key = _ident([model, size])
    if key not in _COST_CACHE:
        try:
            import torch

            from bapose.cli.profile import input_hw
            from bapose.models import build_model
            from bapose.utils.flops import model_cost as count

            h, w = input_hw(size)
            # the architecture only: no hub weights, no init_from checkpoint to read (it may be gone)
            model_cfg = {k: v for k, v in model.items() if k not in ("pretrained", "init_from")}
            with torch.device("meta"):  # shapes only: no memory, no init time
                cost = count(build_model(model_cfg, pretrained=False), (1, 3, h, w))
            _COST_CACHE[key] = (cost.params_m, cost.gmacs)
        except Exception:  # noqa: BLE001 - a model this version cannot build: the column shows '-'
            _COST_CACHE[key] = None
    return _COST_CACHE[key]


# ------------------------------------------------------------------------------------------------ the report
def _swept_values(jobs: list[Job]) -> list[dict[str, Any]]:
    """Per job, the values that identify its configuration (overrides, else the flattened config)."""
    if all(j.overrides is not None for j in jobs):
        return [dict(j.overrides or {}) for j in jobs]
    flat = []
    for j in jobs:
        values = _flatten(j.full_config() or {})
        flat.append({k: v for k, v in values.items() if k.split(".")[0] not in NOT_SWEPT})
    return flat


def _varying_keys(values: list[dict[str, Any]]) -> list[str]:
    keys: list[str] = []
    for v in values:
        keys += [k for k in v if k not in keys]
    varying = [k for k in keys if len({_ident(v.get(k, DEFAULT)) for v in values}) > 1]
    # a config diff also shows what follows a swept value (codec.input_size follows data.input_size): keep the first
    # of keys that vary identically
    seen, out = set(), []
    for k in varying:
        pattern = tuple(_ident(v.get(k, DEFAULT)) for v in values)
        groups = {}
        canon = tuple(groups.setdefault(p, len(groups)) for p in pattern)
        if canon not in seen:
            seen.add(canon)
            out.append(k)
    return out


@dataclass
class SweepReport:
    """The report of :func:`sweep_report`: ``rows`` (one per configuration, sorted), ``problems`` (jobs not in the
    table and why), ``keys`` (the swept keys shown), ``jobs`` (all of them)."""

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

    # ---------------------------------------------------------------------------------------- markdown / csv
    def markdown(self) -> str:
        """``report.md``: a summary line, the table, then the failed / unfinished jobs."""
        finished = sum(r.n for r in self.rows)
        by_status: dict[str, int] = {}
        for j in self.problems:
            by_status[j.status] = by_status.get(j.status, 0) + 1
        left = ", ".join(f"{n} {s}" for s, n in sorted(by_status.items())) or "none failed or unfinished"
        src = ", ".join(f"`{s}`" for s in self.sources)
        lines = [
            f"# Sweep report: {self.metric}",
            "",
            f"{_plural(len(self.jobs), 'job')} from {src}: {finished} finished in "
            f"{_plural(len(self.rows), 'configuration')}; {left}"
            + (" (listed below)." if self.problems else "."),
            f"Swept: {', '.join(f'`{k}`' for k in self.keys) or 'nothing varies'}"
            + (f"; folded into mean ± std over {', '.join(f'`{k}`' for k in self.folded)} (n = finished jobs)"
               if self.folded else "") + ".",
            f"Best (★): highest {self.metric}." if self.higher_is_better else f"Best (★): lowest {self.metric}.",
            f"Sorted by {self.sort}, {'descending' if self.descending else 'ascending'}. Params and GFLOPs: the "
            f"model at its input size (multiply-adds, as `bapose-profile`); train time: mean wall time of a job.",
            "",
        ]
        head = ["", *self.keys, *(h for _, h in self.columns), "n", "params (M)", "GFLOPs", "train time"]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "|".join(["---"] * len(head)) + "|")
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
        if self.problems:
            lines += ["", f"## Failed or unfinished jobs ({len(self.problems)})", "",
                      "| job | status | settings | error / last log line |", "|---|---|---|---|"]
            for j in self.problems:
                settings = ", ".join(f"{k}={fmt_value(v)}" for k, v in sorted((j.overrides or {}).items())
                                     if k in self.keys or k in self.folded or k in self._differing)
                lines.append(f"| `{_md(j.name)}` | {j.status} | {_md(settings) or '-'} | {_md(j.error) or '-'} |")
        return "\n".join(lines) + "\n"

    @property
    def _differing(self) -> set[str]:
        """Override keys that are not the same in every job (shown for failed jobs, whose keys may be new)."""
        values = [j.overrides for j in self.jobs if j.overrides is not None]
        return set(_varying_keys(values)) if values else set()

    def csv_rows(self) -> list[dict[str, Any]]:
        """``report.csv`` rows: swept values, then ``<metric key>_mean`` / ``_std`` per column, n, cost, time."""
        out = []
        for r in self.rows:
            row: dict[str, Any] = {k: fmt_value(r.values.get(k, DEFAULT)) for k in self.keys}
            for key, _ in self.columns:
                mean, std, _n = r.stats.get(key, (None, None, 0))
                row[f"{key}_mean"], row[f"{key}_std"] = mean, std
            seconds = None if r.train_seconds is None else round(r.train_seconds, 1)
            row.update({"n": r.n, "params_m": r.params_m, "gflops": r.gflops, "train_seconds": seconds,
                        "best": r.best, "folded": ";".join(
                            ",".join(f"{k}={fmt_value((j.overrides or {}).get(k, DEFAULT))}" for k in self.folded)
                            for j in r.jobs),
                        "jobs": ";".join(j.name for j in r.jobs)})
            out.append(row)
        return out

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """Write ``report.md``, ``report.csv`` and ``report.png`` into ``out_dir``; returns their paths."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        md, table, png = out / "report.md", out / "report.csv", out / "report.png"
        md.write_text(self.markdown())
        rows = self.csv_rows()
        with open(table, "w", newline="") as f:
            fieldnames = list(rows[0]) if rows else ["n"]
            writer = csv.DictWriter(f, fieldnames=fieldnames)
            writer.writeheader()
            writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
        fig = self.figure()
        fig.savefig(png, dpi=110)
        self.files = {"md": md, "csv": table, "png": png}
        return self.files

    # ---------------------------------------------------------------------------------------- plot
    def figure(self) -> Any:
        """A matplotlib ``Figure``: the metric against each swept key (numeric keys on a numeric axis, others in
        table order), one line per value of the other swept keys, error bars = std over the folded seeds."""
        from matplotlib.figure import Figure

        keys = self.keys or [""]
        cols = min(len(keys), 3)
        nrows = -(-len(keys) // cols)
        fig = Figure(figsize=(5.6 * cols, 4.2 * nrows), layout="constrained")
        axes = fig.subplots(nrows, cols, squeeze=False).ravel()
        for ax in axes[len(keys):]:
            ax.set_visible(False)
        for ax, key in zip(axes, keys, strict=False):
            self._panel(ax, key)
        fig.suptitle(f"{self.metric} ({'mean ± std over ' + ', '.join(self.folded) if self.folded else 'one job'}"
                     f" per point; ★ best)", fontsize=11)
        return fig

    def _rank(self, key: str, value: Any) -> tuple[int, Any]:
        """Plot order of a swept value: numbers by value; others (dilation lists, model names) in the order the
        sweep ran them."""
        if _is_number(value):
            return (0, float(value))
        for i, j in enumerate(self.jobs):
            if j.overrides is not None and _ident(j.overrides.get(key, DEFAULT)) == _ident(value):
                return (1, i)
        return (2, fmt_value(value))

    def _panel(self, ax: Any, key: str) -> None:
        import matplotlib

        colors = matplotlib.colormaps["tab10"]
        rows = [r for r in self.rows if self.metric in r.stats]
        if not key:  # nothing swept: one bar per configuration (a single one)
            ax.bar(range(len(rows)), [r.stats[self.metric][0] for r in rows],
                   yerr=[r.stats[self.metric][1] or 0 for r in rows], color="tab:blue", capsize=4)
            ax.set_xticks(range(len(rows)), ["all jobs"] * len(rows))
            ax.set_ylabel(self.metric)
            return
        values = list({_ident(r.values.get(key, DEFAULT)): r.values.get(key, DEFAULT) for r in rows}.values())
        numeric = all(_is_number(v) for v in values)
        values.sort(key=lambda v: self._rank(key, v))
        pos = {_ident(v): (float(v) if numeric else i) for i, v in enumerate(values)}
        others = [k for k in self.keys if k != key]
        lines: dict[str, list[Row]] = {}
        for r in rows:
            label = ", ".join(fmt_value(r.values.get(k, DEFAULT)) for k in others)
            lines.setdefault(label, []).append(r)
        for i, (label, members) in enumerate(sorted(lines.items(), key=lambda kv: [
                self._rank(k, kv[1][0].values.get(k, DEFAULT)) for k in others])):
            members = sorted(members, key=lambda r: pos[_ident(r.values.get(key, DEFAULT))])
            x = [pos[_ident(r.values.get(key, DEFAULT))] for r in members]
            y = [r.stats[self.metric][0] for r in members]
            err = [r.stats[self.metric][1] or 0.0 for r in members]
            ax.errorbar(x, y, yerr=err, marker="o", capsize=4, lw=1.8, color=colors(i % 10), label=label or None)
            for r, xi, yi in zip(members, x, y, strict=True):
                if r.best:
                    ax.plot([xi], [yi], marker="*", ms=18, color="gold", mec="black", zorder=5)
        ticks = [pos[_ident(v)] for v in values]
        ax.set_xticks(ticks, [fmt_value(v) for v in values], rotation=0 if numeric or len(values) < 4 else 20)
        if not numeric:
            ax.set_xlim(-0.5, len(values) - 0.5)
        ax.set_xlabel(key)
        ax.set_ylabel(self.metric)
        ax.set_title(f"{self.metric} vs {_short(key)}", fontsize=10)
        ax.grid(alpha=0.3)
        if others:
            ax.legend(fontsize=8, title=", ".join(_short(k) for k in others), title_fontsize=8)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _short(key: str) -> str:
    return key.split(".")[-1] if key else key


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


def _stat(values: list[float]) -> tuple[float, float | None, int]:
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None), len(values)


def sweep_report(sources: Sequence[str | Path] | str | Path, out_dir: str | Path | None = None,
                 metric: str = "val/AP", sort: str | None = None, descending: bool | None = None,
                 fold: Sequence[str] = ("seed",), higher_is_better: bool = True, cost: bool = True,
                 api: Any = None) -> SweepReport:
    """Build the report of every job in ``sources`` and, with ``out_dir``, write report.md / .csv / .png there.

    Args:
        sources: sweep folders, run folders, W&B offline run folders, ``wandb:ENTITY/PROJECT/groups/NAME`` /
            ``.../sweeps/ID`` (see the module docstring); several are reported as one sweep.
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
        raise ConfigError("sweep_report: no sources; expected at least one sweep folder, run folder or W&B run")
    jobs = find_jobs(sources, api=api)
    names = ", ".join(f"'{s}'" for s in sources)
    finished = [j for j in jobs if j.status == "finished"]
    if not finished:
        counts: dict[str, int] = {}
        for j in jobs:
            counts[j.status] = counts.get(j.status, 0) + 1
        first = jobs[0]
        raise DataError(f"{names}: none of the {len(jobs)} jobs has metrics.json (a finished run) "
                        f"({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))}; e.g. '{first.name}': "
                        f"{first.error or first.status}); expected at least one finished bapose-train job")
    with_metric = [j for j in finished if metric in j.metrics]
    if not with_metric:
        found = sorted({k for j in finished for k in j.metrics if "/" in k})
        raise DataError(f"{names}: no finished job has the metric '{metric}'; expected one of "
                        f"{', '.join(found) or '(no metrics)'}")
    for j in finished:
        if metric not in j.metrics:
            j.status, j.error = "no metric", f"finished, but its metrics have no '{metric}'"

    values = _swept_values(with_metric)
    keys = _varying_keys(values)
    folded = [k for k in keys if k in fold]
    keys = [k for k in keys if k not in fold]
    groups: dict[str, Row] = {}
    for job, vals in zip(with_metric, values, strict=True):
        row_values = {k: vals.get(k, DEFAULT) for k in keys}
        job.overrides = vals if job.overrides is None else job.overrides
        groups.setdefault(_ident([row_values[k] for k in keys]), Row(values=row_values, jobs=[], stats={})) \
            .jobs.append(job)

    split = metric.split("/")[0] + "/" if "/" in metric else ""
    columns = [(f"{split}{k}", h) for k, h in METRIC_COLUMNS if any(f"{split}{k}" in j.metrics for j in with_metric)]
    if metric not in [c for c, _ in columns]:
        columns.insert(0, (metric, metric.removeprefix(split)))
    rows = list(groups.values())
    for r in rows:
        for key, _ in columns:
            vals = [j.metrics[key] for j in r.jobs if key in j.metrics]
            if vals:
                r.stats[key] = _stat(vals)
        times = [j.metrics["train_seconds"] for j in r.jobs if "train_seconds" in j.metrics]
        r.train_seconds = statistics.fmean(times) if times else None
        if cost:
            c = model_cost(r.jobs[0])
            r.params_m, r.gflops = c if c is not None else (None, None)
    pick = max if higher_is_better else min
    pick(rows, key=lambda r: r.stats[metric][0]).best = True

    sort_name, sort_key, is_metric = _sort_key(sort or "metric", metric, keys, columns)
    if descending is None:
        descending = is_metric and higher_is_better
    present = [r for r in rows if sort_key(r) is not None]
    missing = [r for r in rows if sort_key(r) is None]
    rows = sorted(present, key=sort_key, reverse=descending) + missing

    problems = [j for j in jobs if j.status != "finished"]
    report = SweepReport(sources=[str(s) for s in sources], metric=metric, keys=keys, folded=folded,
                         columns=columns, rows=rows, problems=problems, jobs=jobs, higher_is_better=higher_is_better,
                         sort=sort_name, descending=bool(descending))
    if out_dir is not None:
        report.write(out_dir)
    return report


def _sort_key(sort: str, metric: str, keys: list[str], columns: list[tuple[str, str]]) -> tuple[str, Any, bool]:
    """``(name, key function, is a metric column)`` for the ``sort`` argument."""
    if sort == "metric":
        sort = metric
    for key, header in columns:
        if sort in (key, header):
            return key, lambda r, k=key: r.stats[k][0] if k in r.stats else None, True
    named = {"n": lambda r: r.n, "params": lambda r: r.params_m, "gflops": lambda r: r.gflops,
             "time": lambda r: r.train_seconds, "train_time": lambda r: r.train_seconds}
    if sort.lower() in named:
        return sort, named[sort.lower()], False
    matches = [k for k in keys if sort in (k, _short(k))]
    if len(matches) == 1:
        k = matches[0]
        return k, lambda r: _order(r.values.get(k, DEFAULT)), False
    choices = ["metric", *keys, *(h for _, h in columns), *named]
    raise ConfigError(f"sort: '{sort}' is {'ambiguous' if matches else 'not a column'}; expected one of "
                      f"{', '.join(choices)}")
