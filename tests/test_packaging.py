"""The installable suite: a wheel carries the Hydra configs, and every console script resolves."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_carries_the_configs(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path), str(REPO)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    wheel = next(tmp_path.glob("bapose-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    repo_confs = {f"bapose/conf/{p.relative_to(REPO / 'conf').as_posix()}" for p in (REPO / "conf").rglob("*.yaml")}
    assert repo_confs and repo_confs <= names, sorted(repo_confs - names)[:5]
    assert "bapose/models/bapose.py" in names and "bapose/paths.py" in names
    # the Optuna sweeper where Hydra looks for plugins: hydra_plugins stays a namespace package (no __init__.py)
    assert "hydra_plugins/bapose_optuna_sweeper/optuna_sweeper.py" in names
    assert "hydra_plugins/bapose_optuna_sweeper/_impl.py" in names and "hydra_plugins/__init__.py" not in names


def test_config_dir_and_console_scripts_resolve() -> None:
    from importlib.metadata import entry_points

    from bapose.paths import config_dir

    assert (config_dir() / "train.yaml").is_file()
    scripts = {ep.name: ep for ep in entry_points(group="console_scripts") if ep.name.startswith("bapose-")}
    assert set(scripts) >= {"bapose-train", "bapose-eval", "bapose-predict", "bapose-export", "bapose-profile",
                            "bapose-score", "bapose-synth", "bapose-convert",
                            "bapose-report"}
    for ep in scripts.values():
        assert callable(ep.load()), ep.name
