"""What a preempted, timed-out or restarted run keeps: a recent ``last.ckpt``, and a W&B run marked preempted.

:class:`RequeueCheckpoint` (``conf/callbacks/default.yaml``) writes ``checkpoints/last.ckpt``

* every ``every_minutes`` of training (rank 0's clock), so a run killed without warning loses at most that much;
* right after the next optimizer step once a *checkpoint signal* arrives (``SIGUSR2``: what submitit, and so
  ``hydra/launcher=slurm``, gets ``signal_delay_s`` before the time limit or at preemption), then hands the signal to
  the handler that was installed before (submitit's: it requeues the job and exits); without one the signal then
  does what it would have done;
* when Lightning stops the run at ``SIGTERM`` (SLURM preemption and time limit, ``scancel``, a torchrun restart:
  Lightning ends the batch it is in, on every DDP rank at the same batch, with ``SIGTERMException``).

The ranks of a DDP run save at the same step: a rank that wants a checkpoint says so in the one all-reduce per
optimizer step of the module's non-finite-loss guard (``BAPoseModule.request_checkpoint`` / ``checkpoint_due``), so
the checkpoint costs no collective of its own. Lightning's own requeue signal under ``SLURMEnvironment`` (sbatch
``--signal=SIGUSR1@<s>``: Lightning saves ``hpc_ckpt_<n>.ckpt`` and calls ``scontrol requeue``) is left to
Lightning; at it, and at each of the above, the attempt is recorded as preempted (:func:`preempted`): its W&B run is
marked preempting and ``status.json`` says ``preempted``. ``bapose.training.runs.resolve_ckpt_path`` then resumes
from the newest of all these checkpoints by global step.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException

from bapose.errors import ConfigError
from bapose.utils.wandb import find_wandb_logger

log = logging.getLogger("bapose")

_STATE: dict[str, Any] = {}  # why this process stops before its run is done: {"reason", "signum"}


def preempted() -> tuple[str, int] | None:
    """``(reason, signal number)`` when this process is stopping for a requeue or restart, else ``None``."""
    return (_STATE["reason"], _STATE["signum"]) if _STATE else None


def _note(signum: int, what: str) -> None:
    if not _STATE:
        _STATE.update(reason=f"{signal.Signals(signum).name} ({what})", signum=int(signum))


def _signal(name: str) -> signal.Signals:
    sig = getattr(signal, str(name).upper(), None) or getattr(signal, f"SIG{str(name).upper()}", None)
    if not isinstance(sig, signal.Signals):
        raise ConfigError(f"callbacks.requeue_checkpoint: signal {name!r} is not a signal of this platform; "
                          f"expected a name such as SIGUSR1 or SIGUSR2")
    return sig


class RequeueCheckpoint(L.Callback):
    """Time-based and at-signal ``last.ckpt`` (module docstring).

    Args:
        dirpath: the checkpoint folder (``<run dir>/checkpoints``).
        filename: the file name without ``.ckpt`` (``last``: the file a resume starts from).
        every_minutes: save after this many minutes of training since the last save; ``None`` / 0 = never.
        checkpoint_signals: signals that trigger a save at the next optimizer step before the previous handler runs.
        requeue_signals: signals another handler turns into a requeue (Lightning's SLURM auto-requeue): only
            recorded as a preemption (W&B marked preempting), then passed on unchanged.
    """

    def __init__(self, dirpath: str, filename: str = "last", every_minutes: float | None = None,
                 checkpoint_signals: tuple[str, ...] | list[str] = ("SIGUSR2",),
                 requeue_signals: tuple[str, ...] | list[str] = ("SIGUSR1",)) -> None:
        if every_minutes is not None and every_minutes < 0:
            raise ConfigError(f"callbacks.requeue_checkpoint: field 'every_minutes' is {every_minutes}; expected "
                              f"minutes > 0, or null / 0 for no time-based checkpoint")
        self.path = Path(dirpath) / f"{filename}.ckpt"
        self.interval_s = float(every_minutes) * 60.0 if every_minutes else None
        self.checkpoint_signals = [_signal(s) for s in checkpoint_signals]
        self.requeue_signals = [_signal(s) for s in requeue_signals]
        self._previous: dict[int, Any] = {}
        self._pending: int | None = None
        self._last_save = time.monotonic()
        self._saved_step: int | None = None
        self._trainer: L.Trainer | None = None

    # ------------------------------------------------------------------------------------------- signal handlers
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after Lightning registered its own handlers (Trainer._run, just before the fit stage starts)
        self._trainer, self._last_save = trainer, time.monotonic()
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in self.checkpoint_signals:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._on_checkpoint_signal)
        for sig in self.requeue_signals:
            handler = signal.getsignal(sig)
            if callable(handler) and sig not in self._previous:  # someone requeues at it: Lightning under SLURM
                self._previous[sig] = handler
                signal.signal(sig, self._on_requeue_signal)

    def _on_checkpoint_signal(self, signum: int, frame: FrameType | None) -> None:
        log.info("%s: saving %s at the next optimizer step, then passing the signal on",
                 signal.Signals(signum).name, self.path.name)
        _note(signum, "checkpointed, then requeued")
        self._pending = signum

    def _on_requeue_signal(self, signum: int, frame: FrameType | None) -> None:
        _note(signum, "requeued by Lightning's SLURM auto-requeue")
        self._mark_wandb_preempting()
        previous = self._previous.get(signum)
        if callable(previous):
            previous(signum, frame)

    def _restore(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig, handler in self._previous.items():
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()

    def _pass_on(self, signum: int) -> None:
        """Hand a checkpoint signal to what was there before (submitit requeues and exits)."""
        previous = self._previous.get(signum)
        self._restore()
        if callable(previous):
            previous(signum, None)
        elif previous in (signal.SIG_DFL, None):
            os.kill(os.getpid(), signum)  # what the signal would have done without us (usually: terminate)

    # ------------------------------------------------------------------------------------------- saving
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if hasattr(pl_module, "request_checkpoint"):
            due = bool(getattr(pl_module, "checkpoint_due", False))
            # the request is this batch's answer, decided with the other ranks at the next optimizer step: a save due
            # now answers the one that made it, and a request no longer wanted is withdrawn
            pl_module.request_checkpoint(not due and self._want(trainer))
        else:  # a module without the shared per-step decision: one collective of our own per batch
            due = trainer.strategy.reduce_boolean_decision(self._want(trainer), all=False)
        if not due:
            return
        if hasattr(pl_module, "checkpoint_due"):
            pl_module.checkpoint_due = False
        self.save(trainer, "at a signal" if self._pending is not None else "timed")
        if self._pending is not None:
            signum, self._pending = self._pending, None
            self._mark_wandb_preempting()
            self._pass_on(signum)

    def _want(self, trainer: L.Trainer) -> bool:
        """This rank asks for a checkpoint: a checkpoint signal arrived, or (rank 0) ``every_minutes`` have passed."""
        return self._pending is not None or (trainer.is_global_zero and self.interval_s is not None
                                             and time.monotonic() - self._last_save >= self.interval_s)

    def save(self, trainer: L.Trainer, why: str) -> None:
        """Write the checkpoint on every rank (Lightning's ``save_checkpoint``: rank 0 writes, atomically)."""
        trainer.save_checkpoint(self.path)
        self._last_save, self._saved_step = time.monotonic(), int(trainer.global_step)
        if trainer.is_global_zero:
            log.info("%s checkpoint: %s (epoch %d, global step %d)", why, self.path, trainer.current_epoch,
                     trainer.global_step)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_save = time.monotonic()  # the last checkpoint callback writes last.ckpt at every epoch end
        if hasattr(pl_module, "request_checkpoint") and self._pending is None:
            pl_module.request_checkpoint(False)  # a timed request from the epoch's last batch: that save is made

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()  # before Lightning puts back the handlers it found (Trainer._teardown)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore()
        if not isinstance(exception, SIGTERMException):
            return
        # Lightning stops every rank after the same batch (rank 0's SIGTERM is broadcast under DDP): a last save
        # unless this step is saved already, then the run ends
        _note(signal.SIGTERM, "checkpointed and stopped; a restarted or requeued attempt resumes")
        if trainer.state.fn == "fit" and not trainer.sanity_checking and self._saved_step != trainer.global_step:
            self.save(trainer, "SIGTERM")
        self._mark_wandb_preempting()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore()

    def _mark_wandb_preempting(self) -> None:
        logger = find_wandb_logger(self._trainer) if self._trainer is not None else None
        run = getattr(logger, "_experiment", None)  # only a W&B run that exists (rank 0): never start one here
        if run is not None and hasattr(run, "mark_preempting"):
            run.mark_preempting()

    def state_dict(self) -> dict[str, Any]:
        return {}
