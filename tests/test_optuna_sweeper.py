"""bapose's Hydra Optuna sweeper (src/hydra_plugins/bapose_optuna_sweeper): Hydra's sweep syntax as Optuna
distributions, failed trials told as FAIL, a study continued by name, clear errors. The end-to-end tests run a
one-line Hydra app (no training) through the sweeper; test_sweep.py runs it on bapose-train."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

optuna = pytest.importorskip("optuna", reason="the sweep extra (requirements/sweep.txt) is not installed")

from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution  # noqa: E402

from bapose.errors import ConfigError  # noqa: E402
from bapose.paths import config_dir  # noqa: E402
from hydra_plugins.bapose_optuna_sweeper._impl import (  # noqa: E402
    OptunaSweep,
    objective_values,
    params_overrides,
    search_space,
)


def test_optuna_and_sqlalchemy_are_the_maintained_majors():
    import sqlalchemy

    assert int(optuna.__version__.split(".")[0]) >= 4 and int(sqlalchemy.__version__.split(".")[0]) >= 2


# ------------------------------------------------------------------------------------------------ search space
def test_hydra_sweep_syntax_becomes_optuna_distributions():
    params = params_overrides({"optimizer.lr": "tag(log, interval(0.0002, 0.003))",
                               "model.decoder.dilations": "choice([1,6,12,18],[1,3,6,9])",
                               "data.input_size": 512, "seed": "range(0, 10, 5)"})
    with pytest.warns(UserWarning, match="not divisible by `step`"):  # Optuna stops a float range at its last step
        ordered, swept = search_space([*params, "+extra=int(interval(1, 8))", "trainer.max_epochs=3",
                                       "module.loss.beta=range(0.1, 0.35, 0.1)", "name=choice(a\\ b,c)",
                                       "size=shuffle(range(1, 4))",
                                       "data.input_size=640"])  # the command line's value replaces the config's
    assert swept["optimizer.lr"].distribution == FloatDistribution(0.0002, 0.003, log=True)
    dil = swept["model.decoder.dilations"]
    assert dil.distribution == CategoricalDistribution(("[1,6,12,18]", "[1,3,6,9]"))
    assert dil.override("[1,3,6,9]") == "model.decoder.dilations=[1,3,6,9]"
    # as hydra-optuna-sweeper: range's stop is drawable when the step reaches it
    assert swept["seed"].distribution == IntDistribution(0, 10, step=5)
    assert swept["+extra"].distribution == IntDistribution(1, 8) and swept["+extra"].override(3) == "+extra=3"
    beta = swept["module.loss.beta"].distribution
    assert isinstance(beta, FloatDistribution) and beta.step == 0.1 and beta.high == pytest.approx(0.3)
    assert swept["module.loss.beta"].override(0.2) == "module.loss.beta=0.2"
    assert swept["name"].override("a b") == "name=a\\ b"  # the value's override text, escaped as Hydra writes it
    assert swept["size"].distribution == CategoricalDistribution((1, 2, 3))
    assert ordered["data.input_size"] == "data.input_size=640" and ordered["trainer.max_epochs"] == \
        "trainer.max_epochs=3"
    assert list(ordered) == ["optimizer.lr", "model.decoder.dilations", "data.input_size", "seed", "+extra",
                             "trainer.max_epochs", "module.loss.beta", "name", "size"]


@pytest.mark.parametrize(("override", "message"), [
    ("model=glob(bapose_*)", "glob() is not supported"),
    ("lr=tag(sqrt, interval(0.1, 1))", "tag(s) ['sqrt']"),
    ("lr=tag(log, interval(0, 1))", "expected low <= high and low > 0"),
    ("lr=interval(1.0, 0.1)", "expected low <= high"),
    ("epochs=range(5, 1)", "expected start <= stop and a positive step"),
])
def test_a_space_optuna_cannot_draw_from_is_a_config_error_naming_the_override(override, message):
    with pytest.raises(ConfigError, match="hydra.sweeper.params") as err:
        search_space([override])
    assert message in str(err.value) and override in str(err.value)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("direction", "max", "expected 'minimize' or 'maximize'"),
    ("n_trials", 0, "hydra.sweeper.n_trials is 0; expected a positive integer"),
    ("n_jobs", 1.5, "hydra.sweeper.n_jobs is 1.5"),
    ("max_failure_rate", 2.0, "expected a number in [0, 1]"),
    ("sampler", "tpe", "expected an Optuna sampler"),
])
def test_sweeper_settings_are_checked(field, value, message):
    kwargs = {"sampler": None, "direction": "maximize", "storage": None, "study_name": None, "n_trials": 2,
              "n_jobs": 1, "max_failure_rate": 0.0, "params": None, field: value}
    with pytest.raises(ConfigError, match=f"hydra.sweeper.{field}") as err:
        OptunaSweep(**kwargs)
    assert message in str(err.value)


def _ret(value=None, error=None):
    class Ret:
        @property
        def return_value(self):
            if error is not None:
                raise error
            return value
    return Ret()


def test_what_a_job_returns_decides_complete_or_fail():
    assert objective_values(_ret(0.25), 1) == ([0.25], "")
    assert objective_values(_ret(None), 1)[0] is None
    values, why = objective_values(_ret(error=ValueError("Invalid learning rate: -1")), 1)
    assert values is None and why == "the job raised ValueError: Invalid learning rate: -1"
    assert objective_values(_ret(math.nan), 1)[0] is None and objective_values(_ret("high"), 1)[0] is None
    assert objective_values(_ret([0.5, 3]), 2) == ([0.5, 3.0], "")
    assert "expected 2 values" in objective_values(_ret(0.5), 2)[1]


class _Launcher:
    """Launches the first ``ok`` batches (every job returns ``value``), then raises ``error``."""

    def __init__(self, ok: int, error: BaseException, value: float = 0.5) -> None:
        self.ok, self.error, self.value, self.calls = ok, error, value, 0

    def launch(self, overrides, initial_job_idx):
        self.calls += 1
        if self.calls > self.ok:
            raise self.error
        return [_ret(self.value) for _ in overrides]


@pytest.mark.parametrize("error", [KeyboardInterrupt(), RuntimeError("submitit: the job could not be submitted")],
                         ids=["ctrl-c", "launcher-error"])
def test_a_batch_ended_by_an_exception_leaves_no_trial_running(tmp_path, error):
    from omegaconf import OmegaConf

    storage = optuna.storages.InMemoryStorage()
    sweep = OptunaSweep(sampler=optuna.samplers.RandomSampler(seed=0), direction="maximize", storage=storage,
                        study_name="s", n_trials=6, n_jobs=2, max_failure_rate=0.0, params={"x": "interval(0, 1)"})
    sweep.config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    sweep.launcher = _Launcher(ok=1, error=error)
    with pytest.raises(type(error)) as raised:
        sweep.sweep([])
    assert raised.value is error  # the launcher's own exception goes on
    study = optuna.load_study(study_name="s", storage=storage)
    # the first batch was told, the second was asked and never launched: FAIL, not RUNNING; no third batch
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE", "FAIL", "FAIL"]


# ------------------------------------------------------------------------------------------------ end to end
APP = """
import hydra

@hydra.main(version_base="1.3", config_path=".", config_name="app")
def main(cfg):
    if cfg.fail:
        raise RuntimeError("asked to fail")
    if cfg.x > 0.7:
        return None  # a run that failed and said so (bapose's jobs return None then)
    return -(cfg.x - 0.3) ** 2 + cfg.k

main()
"""


def _app(tmp_path: Path) -> Path:
    folder = tmp_path / "app"
    folder.mkdir(exist_ok=True)
    (folder / "app.py").write_text(APP)
    (folder / "app.yaml").write_text(textwrap.dedent(f"""\
        defaults:
          - override hydra/sweeper: optuna
          - _self_
        x: 0.0
        k: 0
        fail: false
        hydra:
          searchpath: ["file://{config_dir()}"]
          mode: MULTIRUN
          sweeper:
            direction: maximize
            study_name: toy
            storage: sqlite:///{tmp_path / 'toy.db'}
            sampler: {{seed: 3}}
            params:
              x: interval(0, 1)
              k: range(0, 4, 2)
        """))
    return folder / "app.py"


def _sweep(app: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run([sys.executable, str(app), *args], capture_output=True, text=True, timeout=300, env=env,
                          cwd=app.parent)


def test_a_study_fails_trials_without_ending_and_is_continued_by_name(tmp_path):
    app = _app(tmp_path)
    first = tmp_path / "first"
    proc = _sweep(app, "hydra.sweeper.n_trials=6", "hydra.sweeper.n_jobs=2", "hydra.sweeper.max_failure_rate=1.0",
                  f"hydra.sweep.dir={first}")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert out.count("Launching 2 jobs locally") == 3  # n_jobs trials asked and launched together
    study = optuna.load_study(study_name="toy", storage=f"sqlite:///{tmp_path / 'toy.db'}")
    trials = study.trials
    assert [t.number for t in trials] == list(range(6))
    for t in trials:
        x, k = t.params["x"], t.params["k"]
        assert 0.0 <= x <= 1.0 and k in (0, 2, 4)
        if x > 0.7:
            assert t.state.name == "FAIL" and t.value is None
        else:
            assert t.state.name == "COMPLETE" and t.value == pytest.approx(-(x - 0.3) ** 2 + k)
        # job folder = trial number; the job ran with the drawn values
        job = yaml.safe_load((first / str(t.number) / ".hydra" / "overrides.yaml").read_text())
        assert f"k={k}" in job and any(o.startswith("x=") and float(o[2:]) == x for o in job)
        assert t.user_attrs["overrides"] == job
    # seed 3 draws one x > 0.7 in 6 trials (trial 2): both paths above ran
    assert sorted(t.state.name for t in trials) == ["COMPLETE"] * 5 + ["FAIL"]
    results = yaml.safe_load((first / "optimization_results.yaml").read_text())
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert results["trials"] == 6 and results["complete"] == len(complete)
    assert results["best_value"] == pytest.approx(max(t.value for t in complete))

    # the same study continued from another sweep folder: 3 more trials, numbered on, a failing job told as FAIL
    # (another seed: seed 3 again draws fail=false for all 3; seed 2 draws a job that raises with x <= 0.7)
    second = tmp_path / "second"
    proc = _sweep(app, "hydra.sweeper.n_trials=3", "hydra.sweeper.max_failure_rate=1.0", "fail=choice(true,false)",
                  "hydra.sweeper.sampler.seed=2", f"hydra.sweep.dir={second}")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    study = optuna.load_study(study_name="toy", storage=f"sqlite:///{tmp_path / 'toy.db'}")
    assert [t.number for t in study.trials] == list(range(9))
    assert sorted(p.name for p in second.iterdir() if p.name.isdigit()) == ["6", "7", "8"]
    for t in study.trials[6:]:
        failed = t.params["fail"] or t.params["x"] > 0.7
        assert (t.state.name == "FAIL") == failed
    # both paths ran: a job that raised (and would have completed: x <= 0.7) is FAIL, another trial COMPLETE
    assert any(t.params["fail"] and t.params["x"] <= 0.7 and t.state.name == "FAIL" for t in study.trials[6:])
    assert any(t.state.name == "COMPLETE" for t in study.trials[6:])
    assert "Optuna study 'toy'" in proc.stdout + proc.stderr and "6 earlier trials" in proc.stdout + proc.stderr


def test_an_override_hydra_cannot_apply_ends_the_sweep_with_its_trials_failed(tmp_path):
    """A swept key the config lacks fails in Hydra's launcher (load_sweep_config), after Optuna asked the batch."""
    app = _app(tmp_path)
    proc = _sweep(app, "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2", "hydra.sweeper.max_failure_rate=1.0",
                  "nokey=choice(1,2)", f"hydra.sweep.dir={tmp_path / 's'}")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Could not override 'nokey'" in out, out[-3000:]
    study = optuna.load_study(study_name="toy", storage=f"sqlite:///{tmp_path / 'toy.db'}")
    assert [t.state.name for t in study.trials] == ["FAIL", "FAIL"]  # the first batch, asked and not run


def test_max_failure_rate_ends_the_sweep_and_directions_must_match_a_continued_study(tmp_path):
    app = _app(tmp_path)
    proc = _sweep(app, "hydra.sweeper.n_trials=4", "fail=true", f"hydra.sweep.dir={tmp_path / 's1'}")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "more than hydra.sweeper.max_failure_rate=0.0 allows" in out, out[-3000:]
    assert "the job raised RuntimeError: asked to fail" in out
    study = optuna.load_study(study_name="toy", storage=f"sqlite:///{tmp_path / 'toy.db'}")
    assert [t.state.name for t in study.trials] == ["FAIL"]  # the first failed batch ended it
    proc = _sweep(app, "hydra.sweeper.n_trials=1", "hydra.sweeper.direction=minimize",
                  f"hydra.sweep.dir={tmp_path / 's2'}")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "was created with ['maximize']" in out, out[-3000:]


def test_the_plugin_module_hydra_scans_imports_without_optuna():
    """Hydra imports every public module under hydra_plugins at start: bapose-train without the sweep extra."""
    code = ("import sys; sys.modules['optuna'] = None\n"
            "import hydra_plugins.bapose_optuna_sweeper.optuna_sweeper as m\n"
            "from hydra.core.plugins import Plugins\n"
            "names = [c.__module__ + '.' + c.__name__ for c in Plugins.instance().discover()]\n"
            "print(m.OptunaSweeper.__module__ + '.OptunaSweeper' in names)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "True", proc.stderr[-2000:]


def test_the_preset_is_what_the_sweep_config_builds_on(tmp_path):
    from bapose.build import compose_config

    cfg = compose_config(["sweep=optuna"], output_dir=tmp_path)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.bapose_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    assert (sweeper.direction, sweeper.study_name, sweeper.max_failure_rate) == ("maximize", "bapose", 1.0)
    assert sweeper.sampler.seed == 1234 and sweeper.params["optimizer.lr"].startswith("tag(log, interval(")


def test_the_sweeper_settings_are_the_keys_of_the_yaml_hydra_instantiates(tmp_path):
    """The YAML is where the settings and their defaults are written; OptunaSweep takes exactly its keys (no
    default of its own), and Hydra's instantiate of the YAML builds a sweeper with those defaults."""
    import inspect

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from hydra_plugins.bapose_optuna_sweeper.optuna_sweeper import OptunaSweeper

    preset = OmegaConf.load(config_dir() / "hydra" / "sweeper" / "optuna.yaml")
    taken = inspect.signature(OptunaSweep.__init__).parameters
    assert sorted(k for k in preset if k != "_target_") == sorted(k for k in taken if k != "self")
    assert all(p.default is inspect.Parameter.empty for p in taken.values())
    sweeper = instantiate(preset)
    assert isinstance(sweeper, OptunaSweeper)
    sweep = sweeper._sweep
    assert (sweep.directions, sweep.n_trials, sweep.n_jobs, sweep.max_failure_rate, sweep.storage) == \
        (["minimize"], 20, 1, 0.0, None)
    assert isinstance(sweep.sampler, optuna.samplers.TPESampler)
