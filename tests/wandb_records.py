"""What a training wrote into its offline W&B run, read by W&B's own reader (tests only; bapose never reads these).

An offline run keeps everything in its transaction log ``wandb/offline-run-<stamp>-<id>/run-<id>.wandb``, a private
format that only W&B should parse. wandb ships the reader: ``wandb leet inspect --json LOG`` (wandb-core) prints one
JSON object per record (``{"num", "type": "run" | "config" | "history" | "summary" | "exit" | "artifact" |
"preempting" | ..., <type>: {...}}``), and ``wandb leet inspect --summary --json LOG`` W&B's own merge of them (config,
summary, exit code). A wandb upgrade that changes either fails these tests loudly, never the product silently.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any


def _inspect(log: Path, *args: str) -> str:
    cmd = [sys.executable, "-m", "wandb", "leet", "inspect", *args, str(log)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"W&B's reader failed on '{log}' ({' '.join(cmd[1:])}): {done.stderr[-2000:]}"
    return done.stdout


def records(log: str | Path) -> list[dict[str, Any]]:
    """Every record of a ``run-<id>.wandb`` log in order, as W&B prints it (a log cut short: its whole records)."""
    return [json.loads(line) for line in _inspect(Path(log), "--json").splitlines() if line.strip()]


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    """W&B prints a logged dict flattened (``val/predictions.count``); nest it back, as its summary view does."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, last = key.split(".")
        node = out
        for k in parents:
            node = node.setdefault(k, {})
        node[last] = value
    return out


@dataclass
class WandbRun:
    """One offline W&B run folder (``wandb/offline-run-*``) as W&B reads it."""

    path: Path

    @property
    def log(self) -> Path:
        (log,) = self.path.glob("run-*.wandb")
        return log

    @property
    def files(self) -> Path:
        """Where the run's media files are (``files/media/images/...``, tables)."""
        return self.path / "files"

    @cached_property
    def records(self) -> list[dict[str, Any]]:
        return records(self.log)

    @cached_property
    def state(self) -> dict[str, Any]:
        """W&B's summary view: ``config``, ``summary``, ``name``, ``run_id``, ... (W&B's merge of the records)."""
        return json.loads(_inspect(self.log, "--summary", "--json"))

    def of(self, kind: str) -> list[dict[str, Any]]:
        """The bodies of the records of one type (``"history"``, ``"exit"``, ...)."""
        return [r[kind] for r in self.records if r["type"] == kind]

    @property
    def kinds(self) -> list[str]:
        return [r["type"] for r in self.records]

    @property
    def config(self) -> dict[str, Any]:
        return self.state["config"]

    @property
    def summary(self) -> dict[str, Any]:
        return self.state["summary"]

    @property
    def exit_codes(self) -> list[int]:
        """The exit code of each exit record, in order: ``[0]`` a run that ended well, ``[]`` a log cut short (the
        process was killed), one per attempt of a resumed run."""
        return [int(e.get("exit_code", 0)) for e in self.of("exit")]  # proto3: a 0 may be left out

    @property
    def run(self) -> dict[str, Any]:
        """The run record: ``run_id``, ``display_name``, ``run_group``, ..."""
        (run,) = self.of("run")
        return run

    @property
    def history(self) -> list[dict[str, Any]]:
        """One dict per logged row, logged dicts nested (``row["val/predictions"]["count"]``)."""
        return [_nest(h["item"]) for h in self.of("history")]

    @property
    def artifacts(self) -> list[dict[str, Any]]:
        """Per logged artifact: ``{"name", "type", "aliases", "metadata", "files": [{"path", "size", "local_path"}]}``
        (W&B prints the metadata as a JSON string and sizes as strings: parsed here)."""
        return [{"name": a["name"], "type": a["type"], "aliases": a.get("aliases", []),
                 "metadata": json.loads(a["metadata"]) if a.get("metadata") else {},
                 "files": [{"path": f["path"], "size": int(f.get("size", 0)), "local_path": f.get("local_path", "")}
                           for f in a.get("manifest", {}).get("contents", [])]}
                for a in self.of("artifact")]


def wandb_runs(folder: str | Path) -> list[WandbRun]:
    """Every offline W&B run below a run folder (one per attempt of the run), oldest first."""
    return [WandbRun(p) for p in sorted(Path(folder).glob("wandb/offline-run-*"), key=lambda p: p.name)]


def the_wandb_run(folder: str | Path) -> WandbRun:
    """The one offline W&B run of a run folder."""
    (run,) = wandb_runs(folder)
    return run
