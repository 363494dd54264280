"""Weights & Biases plumbing: the logger ``conf/logger/wandb.yaml`` builds.

* :class:`WandbLogger` is Lightning's logger with one change: ``log_model: true`` also works offline (Lightning
  refuses it there), and it means *the best checkpoint*, logged once at the end of fit as a ``model`` artifact by
  :class:`bapose.training.callbacks.WandbMedia` (offline artifacts are uploaded by ``wandb sync``).
  :func:`wandb_logger` builds it for a run: the run folder's W&B id (one W&B run across every attempt of a run), or
  no logger at all with ``WANDB_MODE=disabled``.
* bapose never reads W&B's local files (``wandb/offline-run-*``: W&B's private format, read and uploaded by
  ``wandb sync``). ``bapose-report`` reads what bapose writes into each run folder, and W&B runs only through
  W&B's public API (:mod:`bapose.report.wandb_api`).
"""

from __future__ import annotations

import logging
from typing import Any

from lightning.pytorch.loggers.wandb import WandbLogger as _LightningWandbLogger

from bapose.errors import ConfigError
from bapose.utils.resolvers import wandb_mode
from bapose.utils.run_files import run_wandb_id

__all__ = ["WandbLogger", "find_wandb_logger", "wandb_logger"]

log = logging.getLogger("bapose")


class WandbLogger(_LightningWandbLogger):
    """``lightning.pytorch.loggers.WandbLogger`` whose ``log_model`` asks for the best checkpoint as an artifact.

    Args:
        log_model: ``True`` logs the best checkpoint (``ModelCheckpoint.best_model_path``) as a ``model`` artifact
            when fit ends, online or offline; ``False`` logs none. Lightning's own checkpoint scanning stays off,
            so there is one way a checkpoint reaches W&B.
        *args, **kwargs: Lightning's ``WandbLogger`` arguments (project, name, group, save_dir, offline, ...).
    """

    def __init__(self, *args: Any, log_model: bool = False, **kwargs: Any) -> None:
        if not isinstance(log_model, bool):
            raise ConfigError(f"field 'logger.wandb.log_model' is {log_model!r}; expected true (log the best "
                              f"checkpoint as a W&B artifact at the end of fit) or false")
        super().__init__(*args, log_model=False, **kwargs)
        self.log_best_model = log_model


def wandb_logger(save_dir: str, id: str | None = None, **kwargs: Any) -> WandbLogger | None:  # noqa: A002
    """The W&B logger of the run in ``save_dir`` (``conf/logger/wandb.yaml``), or ``None`` with
    ``WANDB_MODE=disabled`` (no W&B run, nothing written).

    One W&B run per bapose run: ``id`` defaults to the run folder's W&B id (``run.json``, made at the first start and
    read by every later attempt and every rank, ``bapose.utils.run_files.run_wandb_id``); with ``resume="allow"``
    a requeued or restarted attempt continues that W&B run instead of opening a new one with the same name.

    Args:
        save_dir: the run folder (W&B writes ``wandb/`` there).
        id: an explicit W&B run id instead of the run folder's.
        **kwargs: :class:`WandbLogger` arguments.
    """
    if wandb_mode() == "disabled":
        log.info("WANDB_MODE=disabled: no W&B run")
        return None
    if kwargs.get("offline"):
        # wandb.init's own argument: Lightning says offline only through the WANDB_MODE environment variable, which
        # W&B has already read when the credential lookup (bapose.utils.resolvers.wandb_mode) set W&B up in this
        # process: without it, a machine with no key would be asked to log in
        kwargs.setdefault("mode", "offline")
    return WandbLogger(save_dir=save_dir, id=id or run_wandb_id(save_dir), **kwargs)


def find_wandb_logger(trainer: Any) -> _LightningWandbLogger | None:
    """The trainer's W&B logger (any Lightning ``WandbLogger``), or None."""
    for lg in getattr(trainer, "loggers", None) or []:
        if isinstance(lg, _LightningWandbLogger):
            return lg
    return None
