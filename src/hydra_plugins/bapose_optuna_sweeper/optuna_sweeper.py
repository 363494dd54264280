"""The Hydra sweeper class (``_target_`` of ``conf/hydra/sweeper/optuna.yaml``); the work is in ``_impl``.

The configuration keys are the ones users of Hydra's Optuna sweeper (hydra-optuna-sweeper) know::

    hydra:
      sweeper:
        _target_: hydra_plugins.bapose_optuna_sweeper.optuna_sweeper.OptunaSweeper
        sampler: {_target_: optuna.samplers.TPESampler, seed: 1234}   # any optuna sampler; null: TPE
        direction: maximize            # or minimize, or a list of them (multi-objective)
        storage: null                  # an RDB URL (sqlite:///optuna.db) keeps the study: resumable, shareable
        study_name: bapose             # an existing study of that name in `storage` is continued
        n_trials: 20                   # trials this sweep adds
        n_jobs: 1                      # trials launched together (in parallel with a parallel launcher)
        max_failure_rate: 0.0          # end the sweep when a batch has a larger share of failed trials
        params:                        # Hydra's sweep syntax, one key per swept override
          optimizer.lr: tag(log, interval(0.0002, 0.003))
          model.decoder.dilations: choice([1,6,12,18],[1,3,6,9])
"""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class OptunaSweeper(Sweeper):
    """Hydra sweeper over Optuna's ask-and-tell API: every trial is one Hydra job, its return value the objective."""

    def __init__(self, sampler: Any = None, direction: Any = "minimize", storage: Any = None,
                 study_name: str | None = None, n_trials: int = 20, n_jobs: int = 1, max_failure_rate: float = 0.0,
                 params: DictConfig | None = None) -> None:
        from hydra_plugins.bapose_optuna_sweeper._impl import OptunaSweep  # optuna is imported here, not at scan

        self._sweep = OptunaSweep(sampler=sampler, direction=direction, storage=storage, study_name=study_name,
                                  n_trials=n_trials, n_jobs=n_jobs, max_failure_rate=max_failure_rate, params=params)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self._sweep.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        return self._sweep.sweep(arguments)
