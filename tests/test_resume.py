"""Resuming a run from a mid-epoch last.ckpt continues at the same global step with the same optimizer state."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from bapose.build import build_datamodule, build_module, compose_config, instantiate_list
from bapose.training.resume import resolve_ckpt_path
from bapose.checkpoints.io import load_checkpoint_safely

TINY = [
    "data.input_size=64", "data.synthetic.num_train=8", "data.synthetic.num_val=2", "data.synthetic.image_size=64",
    "data.batch_size=2", "data.val_batch_size=2", "data.num_workers=0", "data.persistent_workers=false",
    "data.pin_memory=false", "logger=[csv]", "run_test=false", "trainer.limit_val_batches=1",
    "trainer.num_sanity_val_steps=0",
    # last.ckpt every 2 optimizer steps: the 8 images make 4 steps per epoch, so step 2 is mid-epoch
    "callbacks.last_checkpoint.every_n_train_steps=2",
]


class Spy(L.Callback):
    """Records what the trainer looks like when (re)training starts."""

    def __init__(self) -> None:
        self.start_step = None
        self.optimizer_state = None
        self.first_batch_idx = None
        self.batches = []

    def on_train_start(self, trainer, pl_module):
        self.start_step = trainer.global_step
        self.start_epoch = trainer.current_epoch
        self.optimizer_state = copy.deepcopy(trainer.optimizers[0].state_dict())
        self.scheduler_epoch = trainer.lr_scheduler_configs[0].scheduler.last_epoch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches.append(batch_idx)


class Preempted(Exception):
    pass


class Preempt(L.Callback):
    """Kills the run when batch ``at`` starts, like a preempted job: nothing after the last checkpoint survives."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.at:
            raise Preempted(f"preempted before batch {batch_idx}")


def _fit(cfg, *extra):
    torch.set_num_threads(1)
    L.seed_everything(cfg.seed, workers=True)
    dm = build_datamodule(cfg)
    module = build_module(cfg, codec=dm.codec)
    spy = Spy()
    loggers = instantiate_list(cfg.logger)
    trainer = instantiate(cfg.trainer, callbacks=[*instantiate_list(cfg.callbacks), spy, *extra], logger=loggers)
    trainer.fit(module, datamodule=dm, ckpt_path=resolve_ckpt_path(cfg.get("ckpt_path"), cfg.paths.output_dir))
    return trainer, spy


def test_resume_from_mid_epoch_checkpoint(tmp_path):
    with pytest.raises(Preempted):
        _fit(compose_config(["trainer.max_epochs=1", *TINY], output_dir=tmp_path), Preempt(at=3))
    last = tmp_path / "checkpoints" / "last.ckpt"
    ckpt = load_checkpoint_safely(last)
    assert ckpt["global_step"] == 2 and ckpt["epoch"] == 0  # saved mid-epoch, not at an epoch end
    saved_opt = ckpt["optimizer_states"][0]

    second, spy2 = _fit(compose_config(["trainer.max_epochs=1", "ckpt_path=last", *TINY], output_dir=tmp_path))
    # continues where it stopped: same step, same epoch, the next batches of that epoch
    assert spy2.start_step == 2 and spy2.start_epoch == 0
    assert spy2.batches[0] == 2 and second.global_step == 4
    assert spy2.scheduler_epoch == ckpt["lr_schedulers"][0]["last_epoch"]
    # the exact Adam state of the checkpoint: step counters and moment estimates of every parameter
    state = spy2.optimizer_state["state"]
    assert set(state) == set(saved_opt["state"]) and len(state) > 10
    for idx, s in saved_opt["state"].items():
        assert float(state[idx]["step"]) == float(s["step"]) == 2.0
        torch.testing.assert_close(state[idx]["exp_avg"], s["exp_avg"], rtol=0, atol=0)
        torch.testing.assert_close(state[idx]["exp_avg_sq"], s["exp_avg_sq"], rtol=0, atol=0)
    assert spy2.optimizer_state["param_groups"][0]["lr"] == saved_opt["param_groups"][0]["lr"]
    assert load_checkpoint_safely(last)["global_step"] == 4
