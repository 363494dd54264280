"""bapose.training.runs and the run identity: run folders every rank agrees on, auto-resume, the global batch and
its LR rule, trainer checks, last.ckpt every epoch, how many processes a multirun job must start itself.

The multi-process paths themselves run in test_ddp.py, test_sweep.py and test_faults.py (slow)."""

from __future__ import annotations

import logging
import math
import re

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from bapose.build import build_datamodule, build_module, compose_config, instantiate_list
from bapose.errors import ConfigError
from bapose.training import runs
from bapose.checkpoints.io import load_checkpoint_safely
from bapose.utils.naming import rank_suffix, run_folder_name

TINY = [
    "data.input_size=64", "data.synthetic.num_train=4", "data.synthetic.num_val=2", "data.synthetic.image_size=64",
    "data.batch_size=2", "data.val_batch_size=2", "data.num_workers=0", "data.persistent_workers=false",
    "data.pin_memory=false", "logger=[csv]", "run_test=false", "draw_images=0",
]
LAUNCHER_ENV = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "TORCHELASTIC_RUN_ID", "RANK",
                "LOCAL_RANK", "WORLD_SIZE", "GROUP_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                "SLURM_PROCID", "SLURM_NTASKS")


@pytest.fixture
def no_launcher(monkeypatch):
    for k in LAUNCHER_ENV:
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


def _run_dir(overrides, tmp_path):
    cfg = compose_config([*TINY, *overrides])
    return str(cfg.hydra.run.dir).rsplit("/", 1)[-1]


# ---------------------------------------------------------------------------------------------------- run identity
def test_run_folder_is_named_by_the_runs_identity(no_launcher, tmp_path):
    assert re.fullmatch(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d", _run_dir([], tmp_path))  # a plain run: a timestamp
    assert _run_dir(["run_id=w32 a/b"], tmp_path) == "w32-a-b"  # explicit, made a safe folder name

    no_launcher.setenv("SLURM_JOB_ID", "4242")
    slurm = _run_dir([], tmp_path)
    assert re.fullmatch(r"slurm-4242-[0-9a-f]{6}", slurm)
    # a requeue repeats the command: same folder, also when resuming by hand adds ckpt_path / run-time hydra keys
    assert _run_dir(["ckpt_path=auto"], tmp_path) == slurm
    # another command in the same allocation gets its own folder
    assert _run_dir(["optimizer.lr=0.002"], tmp_path) != slurm
    assert _run_dir(["run_id=mine"], tmp_path) == "mine"  # explicit wins
    no_launcher.setenv("SLURM_ARRAY_JOB_ID", "4240")
    no_launcher.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert _run_dir([], tmp_path).startswith("slurm-4240_3-")

    for k in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        no_launcher.delenv(k)
    no_launcher.setenv("TORCHELASTIC_RUN_ID", "job7")  # torchrun --rdzv-id=job7 (or --standalone's uuid)
    assert _run_dir([], tmp_path) == "torchrun-job7"
    no_launcher.setenv("TORCHELASTIC_RUN_ID", "none")  # static rendezvous: each rank would stamp its own second
    with pytest.raises(Exception, match="run_id=<name>"):
        _run_dir([], tmp_path)
    assert _run_dir(["run_id=x"], tmp_path) == "x"


def test_every_rank_composes_the_same_folder_and_its_own_log_file(no_launcher, tmp_path):
    no_launcher.setenv("SLURM_JOB_ID", "77")
    folders, logs = set(), set()
    for rank in (0, 1):
        no_launcher.setenv("RANK", str(rank))
        no_launcher.setattr("lightning.fabric.utilities.rank_zero.rank_zero_only.rank", rank, raising=False)
        cfg = compose_config(TINY)
        folders.add(str(cfg.hydra.run.dir))
        logs.add(rank_suffix())
    assert len(folders) == 1 and logs == {"", "_rank1"}


def test_run_folder_name_without_hydra_is_plain(no_launcher):
    assert run_folder_name("abc") == "abc"
    with pytest.raises(ConfigError, match="run_id"):
        run_folder_name("///")


# ---------------------------------------------------------------------------------------------------- resuming
def test_ckpt_path_auto_resumes_only_a_folder_with_a_last_checkpoint(tmp_path, caplog):
    assert runs.resolve_ckpt_path("auto", tmp_path) is None  # a new run
    assert runs.resolve_ckpt_path(None, tmp_path) is None
    with pytest.raises(ConfigError, match="ckpt_path=last: no"):
        runs.resolve_ckpt_path("last", tmp_path)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"x")
    last = str(tmp_path / "checkpoints" / "last.ckpt")
    with caplog.at_level(logging.INFO, logger="bapose"):
        assert runs.resolve_ckpt_path("auto", tmp_path) == last  # a path: the newest checkpoint by global step
    assert "has 'last.ckpt': resuming from it" in caplog.text
    assert runs.resolve_ckpt_path("last", tmp_path) == last
    assert runs.resolve_ckpt_path(None, tmp_path) is None  # null: fresh, whatever is there
    with pytest.raises(ConfigError, match="does not exist"):
        runs.resolve_ckpt_path(str(tmp_path / "nope.ckpt"), tmp_path)


def test_last_ckpt_is_written_every_epoch_whatever_the_validation_cadence(tmp_path):
    seen = {}

    class Spy(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            last = tmp_path / "checkpoints" / "last.ckpt"
            seen[trainer.current_epoch] = load_checkpoint_safely(last)["epoch"] if last.is_file() else None

    torch.set_num_threads(1)
    cfg = compose_config([*TINY, "trainer.max_epochs=3", "trainer.check_val_every_n_epoch=10",
                          "trainer.limit_train_batches=1", "trainer.limit_val_batches=1"], output_dir=tmp_path)
    dm = build_datamodule(cfg)
    module = build_module(cfg, codec=dm.codec)
    trainer = instantiate(cfg.trainer, callbacks=[*instantiate_list(cfg.callbacks), Spy()],
                          logger=instantiate_list(cfg.logger))
    trainer.fit(module, datamodule=dm)
    # validation never ran (every 10th epoch), yet each epoch start finds the previous epoch's last.ckpt
    assert seen == {0: None, 1: 0, 2: 1}
    assert load_checkpoint_safely(tmp_path / "checkpoints" / "last.ckpt")["epoch"] == 2
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last.ckpt"]


# ---------------------------------------------------------------------------------------------------- global batch
def _module_and_trainer(overrides, tmp_path, **trainer_kw):
    cfg = compose_config([*TINY, *overrides], output_dir=tmp_path)
    dm = build_datamodule(cfg)
    module = build_module(cfg, codec=dm.codec)
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[], **trainer_kw)
    return cfg, module, trainer


@pytest.mark.parametrize("rule, factor", [("linear", 2.0), ("sqrt", math.sqrt(2.0)), ("none", 1.0)])
def test_global_batch_against_reference_batch_scales_the_lr_by_the_declared_rule(rule, factor, tmp_path, caplog):
    # global batch 2 per process x 1 process x 2 accumulated = 4, for an LR set at batch 2
    cfg, module, trainer = _module_and_trainer(["reference_batch=2", f"optimizer.scale_lr={rule}",
                                                "optimizer.lr=0.001", "trainer.accumulate_grad_batches=2"], tmp_path)
    with caplog.at_level(logging.INFO, logger="bapose"):
        applied = runs.scale_lr_to_global_batch(cfg, trainer, module, per_process=2)
    assert applied == pytest.approx(factor)
    assert "global batch 4 = 2 per process x 1 processes (1 devices x 1 nodes) x 2 accumulated" in caplog.text
    opt = module.configure_optimizers()
    optimizer = opt["optimizer"] if isinstance(opt, dict) else opt[0][0]
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.001 * factor)
    assert optimizer.param_groups[0]["initial_lr"] == pytest.approx(0.001 * factor)  # the schedule starts from it
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and "reference_batch 2" in r.getMessage()]
    assert len(warned) == (1 if rule == "none" else 0)


def test_global_batch_equal_to_the_reference_or_no_reference_keeps_the_lr(tmp_path):
    cfg, module, trainer = _module_and_trainer(["reference_batch=2", "optimizer.scale_lr=linear"], tmp_path)
    assert runs.scale_lr_to_global_batch(cfg, trainer, module, per_process=2) == 1.0
    cfg, module, trainer = _module_and_trainer(["optimizer.scale_lr=linear"], tmp_path)
    assert runs.scale_lr_to_global_batch(cfg, trainer, module, per_process=2) == 1.0
    cfg, module, trainer = _module_and_trainer(["reference_batch=2", "optimizer.scale_lr=cubic"], tmp_path)
    with pytest.raises(ConfigError, match="scale_lr.*'cubic'"):
        runs.scale_lr_to_global_batch(cfg, trainer, module, per_process=2)


# ---------------------------------------------------------------------------------------------------- trainer checks
def test_sync_batchnorm_on_cpu_processes_is_a_config_error(tmp_path):
    cfg, _, trainer = _module_and_trainer(["trainer=ddp_cpu", "trainer.sync_batchnorm=true"], tmp_path)
    with pytest.raises(ConfigError, match="sync_batchnorm.*GPUs"):
        runs.check_trainer(cfg, trainer)
    cfg, _, trainer = _module_and_trainer(["trainer=ddp_cpu"], tmp_path)  # the preset: off
    assert not cfg.trainer.sync_batchnorm
    runs.check_trainer(cfg, trainer)
    # the GPU preset keeps SyncBN (a GPU trainer cannot be built here: its config is what runs on a GPU node)
    assert compose_config(["trainer=ddp"]).trainer.sync_batchnorm is True


def test_job_processes_counts_what_lightning_would_start_itself(no_launcher):
    count = lambda *o: runs.job_processes(compose_config([*TINY, *o]))  # noqa: E731
    assert count("trainer=ddp_cpu", "trainer.devices=2") == 2  # Lightning would re-run the command line
    assert count("trainer=ddp_cpu", "trainer.devices=1") == 0
    assert count() == 0  # one process
    assert count("trainer=ddp_cpu", "trainer.devices=2", "trainer.strategy=ddp_spawn") == 0  # spawns in-process
    # already started by torchrun: the ranks exist, nothing to start
    for k, v in {"TORCHELASTIC_RUN_ID": "x", "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "GROUP_RANK": "0",
                 "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}.items():
        no_launcher.setenv(k, v)
    assert count("trainer=ddp_cpu", "trainer.devices=2") == 0


def test_rank_command_quotes_the_job_folder():
    assert runs._quote("/a/b'c,d=e") == "'/a/b\\'c,d=e'"


@pytest.mark.slow
def test_a_failing_rank_of_a_multirun_jobs_processes_is_reported_and_the_sweep_process_keeps_its_signals(
        tmp_path, monkeypatch):
    import signal

    # the job's command replaced by one whose rank 1 fails: what torch's elastic launcher reports, what we raise
    script = "import os, sys, time; time.sleep(0.2); sys.exit(3 if os.environ['RANK'] == '1' else 0)"
    monkeypatch.setattr(runs, "rank_command", lambda module, job_dir: ["-c", script])
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(runs.JobProcessesFailed, match=r"rank 1 exited with code 3 \(per-rank output in"):
        runs.launch_job_processes(2, "unused", tmp_path / "job")
    assert signal.getsignal(signal.SIGTERM) is before  # torch's agent replaced it while the job ran
    assert len(list((tmp_path / "job" / "ranks").rglob("stderr.log"))) == 2
