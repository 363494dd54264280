"""The Hydra sweeper class (``_target_`` of ``conf/hydra/sweeper/optuna.yaml``); the work is in ``_impl``.

The settings (``hydra.sweeper.*``: the keys users of Hydra's Optuna sweeper, hydra-optuna-sweeper, know) have their
defaults and one comment each in ``conf/hydra/sweeper/optuna.yaml``, from which Hydra instantiates this class;
:class:`hydra_plugins.bapose_optuna_sweeper._impl.OptunaSweep` takes and checks them, and its module docstring gives
the sweep syntax of ``params``.
"""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class OptunaSweeper(Sweeper):
    """Hydra sweeper over Optuna's ask-and-tell API: every trial is one Hydra job, its return value the objective."""

    def __init__(self, **settings: Any) -> None:
        """``settings``: the keys of ``hydra.sweeper`` (``conf/hydra/sweeper/optuna.yaml``), for ``OptunaSweep``."""
        from hydra_plugins.bapose_optuna_sweeper._impl import OptunaSweep  # optuna is imported here, not at scan

        self._sweep = OptunaSweep(**settings)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self._sweep.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        return self._sweep.sweep(arguments)
