"""Jobs from the files ``bapose-train`` writes into each run folder (no W&B involved).

A run folder (a single run, or job ``<num>/`` of a Hydra multirun) says everything the report needs:

* ``.hydra/overrides.yaml`` (else ``status.json``'s ``overrides``): the job's swept values, parsed with Hydra's
  own override grammar;
* ``status.json``: running / finished / failed / interrupted / preempted, with the error line of a failure; it
  decides whether the job is finished (a resumed run keeps the ``metrics.json`` of an earlier attempt);
* ``metrics.json``: its numbers (``val/AP``, ..., ``train_seconds``), read when ``status.json`` says finished or
  there is no ``status.json`` (a run folder older than it);
* ``.hydra/config.yaml``: its config (the model and input size for the params / GFLOPs columns);
* ``<task>.log``: Hydra's log, whose last line says where an unfinished job stopped.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bapose.errors import DataError
from bapose.io import read_json_object, read_json_or_empty
from bapose.report.values import last_line, natural, numeric_metrics
from bapose.utils.run_files import METRICS_FILE, STATUS_FILE

__all__ = ["Job", "find_local_jobs", "is_run_folder", "parse_overrides", "read_run_folder"]

OVERRIDES_FILE = Path(".hydra") / "overrides.yaml"
CONFIG_FILE = Path(".hydra") / "config.yaml"


@dataclass
class Job:
    """One job of a sweep.

    ``status``: ``finished`` | ``failed`` | ``interrupted`` | ``unfinished`` (running, preempted, or no readable
    metrics) | ``no metric`` (finished without the report's metric). ``overrides``: swept key -> value (None when the job does not say what it overrode); ``config``:
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


def parse_overrides(lines: Iterable[Any], source: str = "") -> dict[str, Any]:
    """Hydra override strings -> ``{key: value}`` with Hydra's own grammar (lists, numbers, quoted strings)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    lines = [str(x) for x in lines]
    try:
        parsed = OverridesParser.create().parse_overrides(lines)
    except Exception as e:  # noqa: BLE001 - Hydra's OverrideParseException; the message is what the user needs
        raise DataError(f"{source or 'overrides'}: cannot parse the Hydra overrides {lines} ({last_line(str(e))}); "
                        f"expected key=value strings as in .hydra/overrides.yaml") from None
    out: dict[str, Any] = {}
    for o in parsed:
        if o.is_delete():
            continue
        key = o.key_or_group + (f"@{o.package}" if o.package else "")
        out[key] = o.value()
    return out


# ------------------------------------------------------------------------------------------------ one run folder
def _read_overrides(path: Path, status: dict[str, Any]) -> dict[str, Any] | None:
    """The swept values: ``.hydra/overrides.yaml``, else the ``overrides`` list ``status.json`` keeps."""
    file = path / OVERRIDES_FILE
    if file.is_file():
        import yaml

        try:
            lines = yaml.safe_load(file.read_text()) or []
        except (OSError, yaml.YAMLError) as e:
            raise DataError(f"file '{file}': unreadable ({type(e).__name__}); expected the YAML list of the job's "
                            f"Hydra overrides") from None
        if not isinstance(lines, list):
            raise DataError(f"file '{file}': holds a {type(lines).__name__}; expected the YAML list of the job's "
                            f"Hydra overrides")
        return parse_overrides(lines, str(file))
    if isinstance(status.get("overrides"), list):
        return parse_overrides(status["overrides"], f"{path / STATUS_FILE} (field 'overrides')")
    return None


def _log_tail(folder: Path) -> str:
    """The last line of the job's newest log file (Hydra's ``<task>.log``), or ''."""
    logs = sorted((p for p in folder.glob("*.log") if p.is_file()), key=lambda p: p.stat().st_mtime)
    for log in reversed(logs):
        line = last_line(log.read_text(errors="replace"))
        if line:
            return f"{log.name}: {line}"
    return ""


def is_run_folder(path: Path) -> bool:
    """A ``bapose-train`` run / multirun job folder: it has ``status.json``, ``metrics.json`` or ``.hydra/``."""
    return path.is_dir() and ((path / STATUS_FILE).is_file() or (path / METRICS_FILE).is_file()
                              or (path / OVERRIDES_FILE).is_file())


def read_run_folder(path: Path, name: str | None = None) -> Job:
    """A job from a ``bapose-train`` run folder (see the module docstring for what is read)."""
    job = Job(name=name or str(path), source=str(path), status="unfinished")
    status = read_json_or_empty(path / STATUS_FILE)  # {}: none (a run folder older than it), or unreadable
    job.overrides = _read_overrides(path, status)
    if (path / CONFIG_FILE).is_file():
        job.config_file = str(path / CONFIG_FILE)  # loaded only when needed
    state = status.get("status")
    said = str(status.get("error") or "")
    if state in ("failed", "interrupted"):
        job.status = state
        job.error = said or _log_tail(path) or f"status.json says '{state}' (no error line)"
        return job
    # status.json decides: a resumed run (running, preempted) keeps the metrics.json of an earlier attempt, which
    # are not its numbers; only a run folder older than status.json is judged by its metrics.json alone
    if state in (None, "finished"):
        try:
            metrics = read_json_object(path / METRICS_FILE, "the run's metrics JSON")
        except (DataError, OSError) as e:  # one line naming the file: the job is listed with it
            problem = ("" if state else "no status.json; ") + str(e)
        else:
            job.status, job.metrics = "finished", numeric_metrics(metrics)
            return job
    else:
        problem = f"status.json says '{state}'" + (f" ({said})" if said else "")
    tail = _log_tail(path)
    job.error = f"{problem}; last log line: {tail}" if tail else problem
    return job


# ------------------------------------------------------------------------------------------------ a folder tree
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
    return sorted(found, key=lambda p: natural(str(p)))


def _is_wandb_run_folder(path: Path) -> bool:
    """``<run>/wandb/offline-run-*`` / ``run-*``: where W&B keeps its own files (read only by W&B)."""
    return path.parent.name == "wandb" and path.name.startswith(("offline-run-", "run-"))


def find_local_jobs(source: str | Path) -> list[Job]:
    """The jobs of a sweep folder, a run folder, or any folder above them (named relative to ``source``)."""
    root = Path(source)
    if _is_wandb_run_folder(root):
        raise DataError(f"'{root}': a W&B run folder; the report reads the bapose-train run folder around it "
                        f"('{root.parent.parent}': metrics.json, status.json, .hydra/); expected that folder or its "
                        f"sweep folder, or wandb:ENTITY/PROJECT/groups/NAME for runs on a W&B server")
    if not root.exists():
        raise DataError(f"'{root}': no such folder; expected a sweep folder (outputs/train/multiruns/<stamp>) or a "
                        f"bapose-train run folder")
    if is_run_folder(root):
        return [read_run_folder(root, str(root))]
    folders = _run_folders_below(root) if root.is_dir() else []
    if not folders:
        raise DataError(f"'{root}': no jobs found; expected a sweep folder (<job num>/.hydra/overrides.yaml) or "
                        f"bapose-train run folders (status.json / metrics.json)")
    return [read_run_folder(p, str(Path(root.name) / p.relative_to(root))) for p in folders]
