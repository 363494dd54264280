"""Optuna behind Hydra's sweeper interface: Hydra's sweep syntax as Optuna distributions, and the ask / tell loop.

**Search space** (``hydra.sweeper.params`` and sweep overrides on the command line, Hydra's override grammar):

==================================  =======================================================================
``choice(a, b, c)``, ``a,b,c``       ``CategoricalDistribution``; a list or dict choice is kept as its override
                                     text (``[1,6,12,18]``) and given to the job as written
``range(start, stop[, step])``       ``IntDistribution(start, stop, step)`` (a float in it:
                                     ``FloatDistribution(..., step=step)``); as in hydra-optuna-sweeper, ``stop`` is
                                     a value Optuna may draw when ``step`` reaches it; ``shuffle(range(...))``: a
                                     categorical of the range's values (stop excluded, Python's rule, as Hydra lists it)
``interval(low, high)``              ``FloatDistribution(low, high)``; ``int(interval(...))``: ``IntDistribution``
``tag(log, interval(low, high))``    the same on a log scale (``low`` > 0)
any other value                      a fixed override, given to every trial as written
==================================  =======================================================================

A key given on the command line replaces the same key of ``hydra.sweeper.params``.

**Trials**: Optuna asks ``n_jobs`` trials at a time (``Study.ask`` with the search space); each becomes one Hydra
job, numbered with its trial number (``<sweep dir>/<trial number>`` with bapose's ``hydra.sweep.subdir``), so a
continued study never reuses a job folder. A job's return value is told to Optuna; a job that raised, returned
``None`` (a failed bapose run) or a value that is not a finite number is told as ``FAIL`` and the sweep goes on,
unless a batch's share of failed trials exceeds ``max_failure_rate``. A batch ended by an exception (the launcher
raised: an override of a key the config lacks, a submitit error; Ctrl-C) tells its trials not yet told as ``FAIL``,
then the exception goes on: no trial stays ``RUNNING`` in the storage.

**Study**: ``storage`` (an RDB URL such as ``sqlite:///optuna.db``, or ``null`` for memory) and ``study_name``; a
study of that name already in the storage is continued (its trials inform the sampler, ``n_trials`` more are run),
provided its directions are the configured ones. At the end ``<sweep dir>/optimization_results.yaml`` holds the best
parameters and value (the Pareto front for several objectives).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import (
    ChoiceSweep,
    Glob,
    IntervalSweep,
    Override,
    RangeSweep,
    Transformer,
)
from hydra.core.plugins import Plugins
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, ListConfig, OmegaConf
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from bapose.errors import ConfigError

log = logging.getLogger(__name__)

DIRECTIONS = ("minimize", "maximize")
TAGS = frozenset({"log"})


# ------------------------------------------------------------------------------------------------ search space
@dataclass(frozen=True)
class Param:
    """One swept key: its Optuna distribution, and how a drawn value is written back as an override."""

    key: str  # the override's key as written: `+`/`++` prefix and `@package` kept
    distribution: BaseDistribution
    texts: tuple[str, ...] = ()  # categorical: the override text of each choice, in the distribution's order

    def override(self, value: Any) -> str:
        if isinstance(self.distribution, CategoricalDistribution):
            return f"{self.key}={self.texts[int(self.distribution.to_internal_repr(value))]}"
        if isinstance(self.distribution, IntDistribution):
            return f"{self.key}={int(value)}"
        return f"{self.key}={float(value)!r}"


def _where(override: Override) -> str:
    return f"hydra.sweeper.params / sweep override {override.input_line!r}"


def _number(value: Any, override: Override, what: str) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{_where(override)}: {what} is {value!r}; expected a finite number")
    return value


def _categorical(override: Override, elements: Sequence[Any]) -> Param:
    if not elements:
        raise ConfigError(f"{_where(override)}: an empty choice; expected at least one value")
    choices = tuple(Transformer.encode(x) for x in elements)  # str / int / float / bool; lists, dicts as text
    texts = tuple(Transformer.str(x) for x in elements)
    return Param(override.get_key_element(), CategoricalDistribution(choices), texts)


def _range(override: Override, value: RangeSweep) -> Param:
    start = _number(value.start, override, "range start")
    stop = _number(value.stop, override, "range stop")
    step = _number(value.step, override, "range step")
    if step <= 0 or stop < start:
        raise ConfigError(f"{_where(override)}: range({start}, {stop}, {step}); expected start <= stop and a "
                          f"positive step")
    if value.shuffle:  # an unordered set of values: a categorical of them (in order: the same space every time)
        return _categorical(override, sorted(override.sweep_iterator(transformer=Transformer.identity)))
    # Optuna moves `high` down to the last value the step reaches (and warns when that is not `stop`)
    if all(isinstance(v, int) for v in (start, stop, step)):
        return Param(override.get_key_element(), IntDistribution(int(start), int(stop), step=int(step)))
    return Param(override.get_key_element(), FloatDistribution(float(start), float(stop), step=float(step)))


def _interval(override: Override, value: IntervalSweep) -> Param:
    unknown = set(value.tags) - TAGS
    if unknown:
        raise ConfigError(f"{_where(override)}: tag(s) {sorted(unknown)}; expected 'log' (tag(log, interval(a, b))) "
                          f"or none")
    low = _number(value.start, override, "interval start")
    high = _number(value.end, override, "interval end")
    use_log = "log" in value.tags
    if low > high or (use_log and low <= 0):
        raise ConfigError(f"{_where(override)}: interval({low}, {high}){' on a log scale' if use_log else ''}; "
                          f"expected low <= high{' and low > 0' if use_log else ''}")
    if isinstance(low, int) and isinstance(high, int):  # int(interval(a, b))
        return Param(override.get_key_element(), IntDistribution(low, high, log=use_log))
    return Param(override.get_key_element(), FloatDistribution(float(low), float(high), log=use_log))


def parameter(override: Override) -> Param:
    """The Optuna distribution of one sweep override (``choice``, ``range``, ``interval``, ``tag(log, ...)``)."""
    value = override.value()
    if isinstance(value, Glob):
        raise ConfigError(f"{_where(override)}: glob() is not supported by the Optuna sweeper; expected choice(...) "
                          f"naming the options")
    if isinstance(value, ChoiceSweep):
        return _categorical(override, list(value.list))
    if isinstance(value, RangeSweep):
        return _range(override, value)
    if isinstance(value, IntervalSweep):
        return _interval(override, value)
    raise ConfigError(f"{_where(override)}: {type(value).__name__} is not a sweep the Optuna sweeper knows; expected "
                      f"choice(...), range(...), interval(...) or tag(log, interval(...))")


def search_space(overrides: Sequence[str]) -> tuple[dict[str, Param | str], dict[str, Param]]:
    """Parse ``key=value`` overrides (``hydra.sweeper.params`` first, then the command line's).

    Returns ``(every key in order -> its Param or its fixed override text, the swept keys -> Param)``; a later
    override of a key replaces an earlier one (the command line wins over the config).
    """
    ordered: dict[str, Param | str] = {}
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        key = override.get_key_element()
        ordered[key] = parameter(override) if override.is_sweep_override() else str(override.input_line)
    swept = {k: v for k, v in ordered.items() if isinstance(v, Param)}
    return ordered, swept


def params_overrides(params: Mapping[str, Any] | None) -> list[str]:
    """``hydra.sweeper.params`` (``{key: sweep expression or value}``) as override strings."""
    if not params:
        return []
    if not isinstance(params, Mapping):
        raise ConfigError(f"hydra.sweeper.params is {type(params).__name__}; expected a mapping of "
                          f"{{config key: choice(...) / range(...) / interval(...) / a value}}")
    out = []
    for key, value in params.items():
        if isinstance(value, (DictConfig, ListConfig)):
            value = OmegaConf.to_container(value)
        if isinstance(value, (list, dict)):
            value = Transformer.str(value)  # Hydra's own text of a list / dict
        elif value is None:
            value = "null"
        out.append(f"{key}={value}")
    return out


# ------------------------------------------------------------------------------------------------ results
def objective_values(job_return: Any, n_objectives: int) -> tuple[list[float] | None, str]:
    """What a job gives Optuna: ``(values, "")``, or ``(None, why)`` when the trial failed."""
    try:
        value = job_return.return_value  # Hydra re-raises what the job raised
    except Exception as err:  # noqa: BLE001 - any failure of the job is the trial's failure
        return None, f"the job raised {type(err).__name__}: {err}"
    if value is None:
        return None, "the job returned no value (a failed run; its status.json says why)"
    raw = [value] if n_objectives == 1 else value
    if n_objectives > 1 and (not isinstance(raw, Sequence) or isinstance(raw, str) or len(raw) != n_objectives):
        return None, f"the job returned {value!r}; expected {n_objectives} values (one per direction)"
    try:
        values = [float(v) for v in raw]
    except (TypeError, ValueError):
        return None, f"the job returned {value!r}; expected a number"
    if not all(math.isfinite(v) for v in values):
        return None, f"the job returned {value!r}; expected a finite number"
    return values, ""


def _directions(direction: Any) -> list[str]:
    items = list(direction) if isinstance(direction, (list, tuple, ListConfig)) else [direction]
    names = [str(d).lower() for d in items]
    if not names or any(n not in DIRECTIONS for n in names):
        raise ConfigError(f"hydra.sweeper.direction is {direction!r}; expected 'minimize' or 'maximize' (or a list "
                          f"of them, one per objective)")
    return names


# ------------------------------------------------------------------------------------------------ the sweep
class SweepFailed(RuntimeError):
    """More trials of a batch failed than ``hydra.sweeper.max_failure_rate`` allows."""


class OptunaSweep:
    """The state and loop behind :class:`hydra_plugins.bapose_optuna_sweeper.optuna_sweeper.OptunaSweeper`."""

    def __init__(self, *, sampler: Any, direction: Any, storage: Any, study_name: str | None, n_trials: int,
                 n_jobs: int, max_failure_rate: float, params: Any) -> None:
        """The keys of ``hydra.sweeper``, all given by ``conf/hydra/sweeper/optuna.yaml`` (their defaults and what
        each means are written there, once), checked here: an invalid one is a ``ConfigError`` naming it."""
        if sampler is not None and not isinstance(sampler, optuna.samplers.BaseSampler):
            raise ConfigError(f"hydra.sweeper.sampler is {sampler!r}; expected an Optuna sampler "
                              f"({{_target_: optuna.samplers.TPESampler, seed: ...}}) or null (TPE)")
        for name, value in (("n_trials", n_trials), ("n_jobs", n_jobs)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"hydra.sweeper.{name} is {value!r}; expected a positive integer")
        if isinstance(max_failure_rate, bool) or not isinstance(max_failure_rate, (int, float)) \
                or not 0.0 <= max_failure_rate <= 1.0:
            raise ConfigError(f"hydra.sweeper.max_failure_rate is {max_failure_rate!r}; expected a number in [0, 1] "
                              f"(1: failed trials never end the sweep)")
        if storage is not None and not isinstance(storage, (str, optuna.storages.BaseStorage)):
            raise ConfigError(f"hydra.sweeper.storage is {storage!r}; expected an RDB URL (sqlite:///optuna.db), an "
                              f"Optuna storage, or null (in memory)")
        self.sampler = sampler if sampler is not None else optuna.samplers.TPESampler()
        self.directions = _directions(direction)
        self.storage = storage
        self.study_name = study_name
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        self.max_failure_rate = float(max_failure_rate)
        self.params = params
        self.config: DictConfig | None = None
        self.launcher: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)

    def study(self) -> optuna.Study:
        """Create the study, or continue the one of that name in the storage (same directions)."""
        study = optuna.create_study(storage=self.storage, study_name=self.study_name, sampler=self.sampler,
                                    directions=self.directions, load_if_exists=self.study_name is not None)
        found = [d.name.lower() for d in study.directions]
        if found != self.directions:
            raise ConfigError(f"hydra.sweeper.direction is {self.directions}, but study {study.study_name!r} in "
                              f"{self.storage} was created with {found}; expected the same directions (or another "
                              f"hydra.sweeper.study_name for a new study)")
        return study

    def _launch(self, trials: list[optuna.trial.Trial], overrides: list[list[str]]) -> list[Any]:
        """One job per trial, numbered with the trial's number (one launch when the numbers follow each other, as
        they do unless another process adds trials to the same study meanwhile)."""
        first = trials[0].number
        if [t.number for t in trials] == list(range(first, first + len(trials))):
            return list(self.launcher.launch(overrides, initial_job_idx=first))
        returns = []
        for trial, job in zip(trials, overrides, strict=True):
            returns.extend(self.launcher.launch([job], initial_job_idx=trial.number))
        return returns

    def sweep(self, arguments: list[str]) -> list[Any]:
        assert self.config is not None and self.launcher is not None, "setup() first"
        ordered, swept = search_space([*params_overrides(self.params), *arguments])
        distributions = {p.key: p.distribution for p in swept.values()}
        study = self.study()
        earlier = study.get_trials(deepcopy=False)
        sweep_dir = str(self.config.hydra.sweep.dir)
        log.info("Optuna study %r (storage %s, sampler %s, directions %s): %d earlier trials, %d complete; "
                 "%d more, %d at a time", study.study_name, self.storage or "in memory", type(self.sampler).__name__,
                 self.directions, len(earlier), sum(t.state == TrialState.COMPLETE for t in earlier), self.n_trials,
                 self.n_jobs)
        if swept:
            log.info("search space: %s", ", ".join(f"{k}: {p.distribution}" for k, p in swept.items()))
        results: list[Any] = []
        left = self.n_trials
        while left > 0:
            batch = min(left, self.n_jobs)
            trials: list[optuna.trial.Trial] = []
            told: set[int] = set()
            failed = []
            try:
                for _ in range(batch):
                    trials.append(study.ask(fixed_distributions=distributions))
                jobs = []
                for trial in trials:
                    job = [v.override(trial.params[k]) if isinstance(v, Param) else v for k, v in ordered.items()]
                    trial.set_user_attr("overrides", job)
                    trial.set_user_attr("sweep_dir", sweep_dir)
                    jobs.append(job)
                returns = self._launch(trials, jobs)
                for trial, ret in zip(trials, returns, strict=True):
                    values, why = objective_values(ret, len(self.directions))
                    if values is None:
                        study.tell(trial, state=TrialState.FAIL)
                        failed.append(f"trial {trial.number}: {why}")
                        log.warning("Optuna trial %d failed: %s", trial.number, why)
                    else:
                        study.tell(trial, values)
                    told.add(trial.number)
            except BaseException as err:  # a launch that raised, Ctrl-C: no asked trial stays RUNNING in the storage
                self._fail_untold(study, [t for t in trials if t.number not in told], err)
                raise
            results.append(returns)
            if failed and len(failed) / batch > self.max_failure_rate:
                raise SweepFailed(f"{len(failed)} of {batch} trials of a batch failed, more than "
                                  f"hydra.sweeper.max_failure_rate={self.max_failure_rate} allows: "
                                  + "; ".join(failed))
            left -= batch
        self._write_results(study, sweep_dir)
        return results

    @staticmethod
    def _fail_untold(study: optuna.Study, trials: list[optuna.trial.Trial], err: BaseException) -> None:
        """Tell ``trials`` (asked, not told) as ``FAIL`` after ``err`` ended the batch; a storage that cannot be
        told now is logged, so that ``err`` is what the sweep raises."""
        for trial in trials:
            try:
                study.tell(trial, state=TrialState.FAIL)
            except Exception as tell_err:  # noqa: BLE001 - the batch's own error goes on
                log.error("Optuna trial %d could not be told FAIL (%s: %s); it stays RUNNING in the storage",
                          trial.number, type(tell_err).__name__, tell_err)
            else:
                log.warning("Optuna trial %d failed: the sweep ended (%s: %s)", trial.number, type(err).__name__,
                            err)

    def _write_results(self, study: optuna.Study, sweep_dir: str) -> None:
        trials = study.get_trials(deepcopy=False)
        summary: dict[str, Any] = {"name": "optuna", "study_name": study.study_name,
                                   "storage": str(self.storage) if isinstance(self.storage, str) else None,
                                   "directions": self.directions, "trials": len(trials),
                                   "complete": sum(t.state == TrialState.COMPLETE for t in trials),
                                   "failed": sum(t.state == TrialState.FAIL for t in trials)}
        if summary["complete"] == 0:
            log.warning("Optuna study %r has no complete trial", study.study_name)
            summary.update(best_params=None, best_value=None)
        elif len(self.directions) == 1:
            best = study.best_trial
            summary.update(best_params=dict(best.params), best_value=best.value, best_trial=best.number)
            log.info("best trial %d: value %s, params %s", best.number, best.value, best.params)
        else:
            summary["solutions"] = [{"trial": t.number, "params": dict(t.params), "values": list(t.values)}
                                    for t in study.best_trials]
            log.info("%d Pareto-optimal trials", len(summary["solutions"]))
        Path(sweep_dir).mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(summary), Path(sweep_dir) / "optimization_results.yaml")
