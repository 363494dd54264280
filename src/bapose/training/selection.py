"""Which weights the final evaluation of ``bapose-train`` scores (``model_selection``): the best or the last epoch.

``best`` takes the checkpoint with the highest ``val/AP`` (the monitored ``ModelCheckpoint``). That is a selection on
the validation split, so it flatters any number reported on that split: COCO's paper numbers are on val, and the
CrowdPose configs validate on the test set. ``last`` scores the final epoch, as DEKR reports (its ``train.py`` keeps
``perf_indicator = epoch`` and its ``valid.py`` evaluates the final state).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from bapose.errors import ConfigError
from bapose.checkpoints.io import load_checkpoint_safely

MODEL_SELECTIONS = ("best", "last")


class Selection(NamedTuple):
    """``path`` of the checkpoint to evaluate (None: the weights in memory), the ``rule`` that chose it, the 0-based
    ``epoch`` whose training the weights end with and their ``global_step`` (None when unknown)."""

    path: str | None
    rule: str
    epoch: int | None
    global_step: int | None


def _position(path: str) -> tuple[int | None, int | None]:
    """(0-based epoch, global step) of the weights in a Lightning checkpoint, read with the safe loader.

    Lightning's own ``epoch`` field is the epoch counter at save time: the running epoch for a save at validation end,
    the next one for a save after the epoch completed (``last.ckpt``). The fit loop's count of epochs whose batches
    were all processed says it either way.
    """
    ckpt = load_checkpoint_safely(path)
    step = ckpt.get("global_step")
    progress = ckpt.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {}).get("current", {})
    processed = progress.get("processed")
    epoch = processed - 1 if isinstance(processed, int) and processed > 0 else ckpt.get("epoch")
    return (int(epoch) if epoch is not None else None), (int(step) if step is not None else None)


def check_selection_rule(rule: Any) -> str:
    """``rule`` when it names a selection rule, else a ConfigError (checked before fit, not after)."""
    if rule not in MODEL_SELECTIONS:
        raise ConfigError(f"field 'model_selection' is {rule!r}; expected one of {list(MODEL_SELECTIONS)}")
    return str(rule)


def monitored_checkpoint(trainer: L.Trainer) -> ModelCheckpoint | None:
    """The monitored ``ModelCheckpoint`` (callbacks.model_checkpoint, val/AP), whatever the callback order: the
    unmonitored last-checkpoint callback also has a ``best_model_path`` (its newest save)."""
    return next((cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)
                 and cb.monitor is not None), None)


def best_path(trainer: L.Trainer) -> str | None:
    """The best checkpoint file of :func:`monitored_checkpoint` (None: no such callback, or nothing saved)."""
    cb = monitored_checkpoint(trainer)
    return (cb.best_model_path or None) if cb is not None else None


def _last_path(trainer: L.Trainer) -> str | None:
    """The final epoch's checkpoint: the one an unmonitored ``ModelCheckpoint(filename="last")`` keeps
    (callbacks.last_checkpoint, saved at every train-epoch end), else a ``save_last`` callback's ``last.ckpt``."""
    for cb in trainer.checkpoint_callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.monitor is None and cb.filename == "last" and cb.best_model_path:
            return cb.best_model_path
    lasts = [cb.last_model_path for cb in trainer.checkpoint_callbacks
             if isinstance(cb, ModelCheckpoint) and cb.save_last and cb.last_model_path]
    return lasts[0] if lasts else None


def select_checkpoint(trainer: L.Trainer, rule: str = "best") -> Selection:
    """The checkpoint the final evaluation uses after ``trainer.fit``.

    Args:
        trainer: the trainer that ran ``fit``.
        rule: ``"best"`` (highest val/AP: ``trainer.checkpoint_callback.best_model_path``) or ``"last"`` (the final
            epoch: the ``last.ckpt`` of callbacks.last_checkpoint or of a ``save_last`` ModelCheckpoint; the weights in
            memory when there is none).

    Returns:
        :class:`Selection`; ``path`` None means "evaluate the current weights" (fast_dev_run, no checkpoint).
    """
    check_selection_rule(rule)
    path: str | None = None
    if rule == "best":
        path = best_path(trainer)
    else:
        path = _last_path(trainer)
    if path is not None:
        epoch, step = _position(path)
    else:
        # the weights in memory are those of the last epoch that ran (current_epoch counts finished epochs)
        epoch, step = max(int(trainer.current_epoch) - 1, 0), int(trainer.global_step)
    return Selection(path, rule, epoch, step)


def selection_metrics(selection: Selection) -> dict[str, Any]:
    """The ``metrics.json`` fields that say which weights were scored."""
    return {"model_selection": selection.rule, "evaluated_checkpoint": selection.path or "",
            "evaluated_epoch": selection.epoch, "evaluated_global_step": selection.global_step}
