"""The Hydra entry point of a console script: compose ``conf/<name>.yaml``, run the command, and end on a bapose error
with one line (``bapose.errors.exit_on_error``)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import hydra
from omegaconf import DictConfig

import bapose.utils.resolvers  # noqa: F401 - registers the ${bapose.*} resolvers before Hydra composes
from bapose.errors import exit_on_error
from bapose.paths import config_dir


def hydra_entry(config_name: str, prog: str, run: Callable[[DictConfig], Any],
                capture_warnings: bool = False) -> Callable[[], None]:
    """``main()`` of a console script over ``conf/<config_name>.yaml`` that calls ``run(cfg)``.

    Args:
        prog: the program name that starts its error line (``bapose-eval``).
        capture_warnings: route ``warnings`` through logging (one log line per skipped file, not source excerpts).
    """

    def task(cfg: DictConfig) -> None:
        if capture_warnings:
            logging.captureWarnings(True)
        exit_on_error(prog, lambda: run(cfg))

    # Hydra names the job after the task function's module: the command's, not this one
    task.__module__ = run.__module__
    return hydra.main(version_base="1.3", config_path=str(config_dir()), config_name=config_name)(task)
