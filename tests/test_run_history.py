"""Issue 20: a run's history survives restarts and clusters.

One W&B run per bapose run across attempts, checkpoints at the signals a cluster sends, identities that cannot
collide, the ranks of a multirun DDP job on the job's own config, one collective per optimizer step, the data order
of a resumed run. The multi-process paths (bapose-train as a user runs it, submitit's local executor, gloo) are
marked slow."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from bapose.build import build_datamodule, build_module, compose_config, instantiate_list
from bapose.training.fit import train
from bapose.errors import ConfigError
from bapose.training import resume, runs
from bapose.checkpoints.io import load_checkpoint_safely

TESTS = Path(__file__).parent
TRAIN_CLI = Path(sys.executable).with_name("bapose-train")
TINY = [
    "data.input_size=64", "data.synthetic.num_train=8", "data.synthetic.num_val=2", "data.synthetic.image_size=64",
    "data.batch_size=2", "data.val_batch_size=2", "data.num_workers=0", "data.persistent_workers=false",
    "data.pin_memory=false", "logger=[csv]", "run_test=false", "draw_images=0", "trainer.limit_val_batches=1",
]
LAUNCHER_ENV = ("SLURM_JOB_ID", "SLURM_JOB_NAME", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_NTASKS",
                "SLURM_PROCID", "TORCHELASTIC_RUN_ID", "RANK", "LOCAL_RANK", "WORLD_SIZE")


@pytest.fixture
def no_launcher(monkeypatch):
    for k in LAUNCHER_ENV:
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR" and not k.startswith("SLURM_")}
    env.update(OMP_NUM_THREADS="1", WANDB_MODE="offline", PYTHONWARNINGS="ignore", BAPOSE_ROOT=str(tmp_path),
               BAPOSE_CACHE=str(tmp_path / "cache"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])), **extra)
    return env


# ---------------------------------------------------------------------------------------------------- identity
def _folder(overrides: list[str]) -> Path:
    return Path(str(compose_config([*TINY, *overrides]).hydra.run.dir))


def test_interactive_slurm_allocation_is_no_batch_job_and_run_folders_do_not_collide(no_launcher, tmp_path):
    no_launcher.setenv("BAPOSE_ROOT", str(tmp_path))
    no_launcher.setenv("SLURM_JOB_ID", "777")
    no_launcher.setenv("SLURM_JOB_NAME", "train")  # an sbatch job: its id names the folder (a requeue finds it)
    assert re.fullmatch(r"slurm-777-[0-9a-f]{6}", _folder([]).name)
    for name in ("bash", "interactive"):  # salloc / srun --pty bash / Jupyter on a node: Lightning's rule
        no_launcher.setenv("SLURM_JOB_NAME", name)
        first = _folder([])
        assert re.fullmatch(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d(_\d+)?", first.name), first.name
        first.mkdir(parents=True)  # what Hydra does for the first run
        second = _folder([])  # the same command again in the same allocation (and maybe the same second)
        assert second != first and not second.exists()


def _tiny_ckpt(path: Path, step: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {}, "global_step": step, "epoch": 0}, path)
    return path


def test_newest_checkpoint_by_global_step_wins_whatever_its_name(tmp_path):
    last = _tiny_ckpt(tmp_path / "checkpoints" / "last.ckpt", 8)
    old_hpc = _tiny_ckpt(tmp_path / "hpc_ckpt_1.ckpt", 3)  # written later, older state
    assert resume.resolve_ckpt_path("auto", tmp_path) == str(last)
    newer_hpc = _tiny_ckpt(tmp_path / "hpc_ckpt_2.ckpt", 11)
    assert resume.resolve_ckpt_path("auto", tmp_path) == str(newer_hpc)
    assert [p.name for p, _ in resume.resume_candidates(tmp_path)] == [newer_hpc.name, last.name, old_hpc.name]


def test_ckpt_path_null_starts_fresh_on_slurm_too(tmp_path, no_launcher):
    """Lightning turns ckpt_path=None into its newest hpc checkpoint when it runs under SLURM: the replaced run's
    resume points are moved out of its way, and the folder gets a new record (a new W&B run)."""
    from lightning.pytorch.trainer.states import TrainerFn

    for k, v in {"SLURM_JOB_ID": "5", "SLURM_JOB_NAME": "train", "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1",
                 "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}.items():
        no_launcher.setenv(k, v)
    _tiny_ckpt(tmp_path / "hpc_ckpt_1.ckpt", 3)
    _tiny_ckpt(tmp_path / "checkpoints" / "last.ckpt", 4)
    trainer = L.Trainer(accelerator="cpu", default_root_dir=tmp_path, logger=False, enable_progress_bar=False)

    def lightning_choice():  # what trainer.fit(ckpt_path=None) resumes from
        return trainer._checkpoint_connector._parse_ckpt_path(TrainerFn.FITTING, None, model_provided=True,
                                                             model_connected=True)

    assert lightning_choice() == str(tmp_path / "hpc_ckpt_1.ckpt")  # what used to happen with ckpt_path=null
    cfg = compose_config([*TINY, "ckpt_path=null"], output_dir=tmp_path)
    old_id = "previous"
    (tmp_path / "run.json").write_text(json.dumps({"wandb_id": old_id, "config": {}}))
    assert resume.begin_run(cfg) is None
    assert lightning_choice() is None and resume.resolve_ckpt_path("auto", tmp_path) is None
    (moved,) = (tmp_path / "checkpoints").glob("replaced-*")
    assert sorted(p.name for p in moved.iterdir()) == ["hpc_ckpt_1.ckpt", "last.ckpt"]
    assert json.loads((tmp_path / "run.json").read_text())["wandb_id"] != old_id


def test_a_restart_with_another_training_config_stops_and_a_longer_schedule_extends(tmp_path, capsys, caplog):
    run = tmp_path / "runs" / "X"
    first = train(compose_config([*TINY, "trainer.max_epochs=1", "optimizer.lr=0.001"], output_dir=run))
    assert first["epoch"] == 1 and first["global_step"] == 4
    record = json.loads((run / "run.json").read_text())
    assert record["config"]["optimizer.lr"] == 0.001 and record["finished"]["epoch"] == 1

    # the same run_id, another LR: one line naming the key, the values, and how to start a new run
    with pytest.raises(ConfigError) as err:
        train(compose_config([*TINY, "trainer.max_epochs=1", "optimizer.lr=0.002"], output_dir=run))
    msg = str(err.value)
    assert "optimizer.lr 0.001 -> 0.002" in msg and "run_id=<new name>" in msg and "ckpt_path=null" in msg
    assert "\n" not in msg and "module.loss" not in msg

    # started again as it was: it says so, trains nothing and returns its own results (not evaluated again)
    mtime = (run / "metrics.json").stat().st_mtime_ns
    again = train(compose_config([*TINY, "trainer.max_epochs=1", "optimizer.lr=0.001"], output_dir=run))
    assert again["already_finished"] is True and again["val/AP"] == first["val/AP"]
    assert "finished on" in capsys.readouterr().out and (run / "metrics.json").stat().st_mtime_ns == mtime

    # a larger trainer.max_epochs (allowed to change) resumes from the last checkpoint and extends the run
    caplog.set_level(logging.INFO, logger="bapose")
    caplog.clear()
    longer = train(compose_config([*TINY, "trainer.max_epochs=2", "optimizer.lr=0.001", "data.num_workers=1"],
                                  output_dir=run))
    assert longer["epoch"] == 2 and longer["global_step"] == 8 and "already_finished" not in longer
    # resumed, not retrained (two fresh epochs would also end at step 8): the first run's last.ckpt at step 4
    assert re.search(rf"resumed from '{re.escape(str(run / 'checkpoints' / 'last.ckpt'))}': epoch 1, global step 4,",
                     caplog.text), caplog.text[-3000:]
    assert json.loads((run / "run.json").read_text())["finished"]["epoch"] == 2


def test_readme_scaling_out_names_every_identity_and_free_key():
    """README "Scaling out" lists what stops a restarted run and what may change on resume: every key of
    resume.IDENTITY_KEYS and resume.FREE_KEYS appears there as code (`key`), so the list cannot drift from the code."""
    readme = (TESTS.parent / "README.md").read_text()
    assert "\n## Scaling out\n" in readme
    section = readme.split("\n## Scaling out\n", 1)[1].split("\n## ", 1)[0]
    missing = [k for k in (*resume.IDENTITY_KEYS, *resume.FREE_KEYS) if f"`{k}`" not in section]
    assert not missing, f"README 'Scaling out' does not name {missing}"


def test_wandb_disabled_means_no_wandb_run_and_no_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    cfg = compose_config([*TINY, "trainer.max_epochs=1", "trainer.limit_train_batches=1", "logger=[csv,wandb]"],
                         output_dir=tmp_path / "run")
    assert [type(lg).__name__ for lg in instantiate_list(cfg.logger)] == ["CSVLogger"]
    train(cfg)
    assert (tmp_path / "run" / "csv").is_dir() and not list((tmp_path / "run").rglob("wandb"))


def test_job_processes_builds_no_trainer_and_uses_no_private_launcher(no_launcher, monkeypatch):
    def no_trainer(*args, **kwargs):
        raise AssertionError("a Trainer was built in the sweep process")

    monkeypatch.setattr(L.Trainer, "__init__", no_trainer)
    assert runs.job_processes(compose_config([*TINY, "trainer=ddp_cpu", "trainer.devices=2"])) == 2
    assert runs.job_processes(compose_config([*TINY, "trainer=ddp_cpu", "trainer.devices=3",
                                              "trainer.strategy=ddp_fork"])) == 0
    assert "_SubprocessScriptLauncher" not in Path(runs.__file__).read_text()


# ---------------------------------------------------------------------------------------------------- data order
class BatchSpy(L.Callback):
    """(epoch, image ids, image checksum) of every training batch: the order and the augmentation draws."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, list[int], float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches.append((trainer.current_epoch, batch["image_id"].tolist(), float(batch["image"].double().sum())))


def _fit(cfg) -> BatchSpy:
    L.seed_everything(cfg.seed, workers=True)
    dm = build_datamodule(cfg)
    module = build_module(cfg, codec=dm.codec)
    spy = BatchSpy()
    trainer = instantiate(cfg.trainer, callbacks=[*instantiate_list(cfg.callbacks), spy], logger=instantiate_list(cfg.logger))
    trainer.fit(module, datamodule=dm, ckpt_path=resume.resolve_ckpt_path("auto", cfg.paths.output_dir))
    return spy


@pytest.mark.parametrize("workers", [0, 1])
def test_data_order_after_an_end_of_epoch_resume_equals_the_uninterrupted_run(tmp_path, workers):
    over = [*TINY, f"data.num_workers={workers}", "trainer.num_sanity_val_steps=0"]
    straight = _fit(compose_config([*over, "trainer.max_epochs=3"], output_dir=tmp_path / "a"))
    _fit(compose_config([*over, "trainer.max_epochs=1"], output_dir=tmp_path / "b"))
    resumed = _fit(compose_config([*over, "trainer.max_epochs=3"], output_dir=tmp_path / "b"))
    later = [b for b in straight.batches if b[0] >= 1]
    assert len(later) == 8 and resumed.batches == later  # the same images, in the same order, augmented alike
    epochs = [[ids for e, ids, _ in straight.batches if e == k] for k in range(3)]
    assert epochs[0] != epochs[1] != epochs[2]  # (each epoch has its own order: the comparison could fail)


# ---------------------------------------------------------------------------------------------------- collectives
@pytest.mark.slow
def test_one_all_reduce_per_optimizer_step_and_none_per_accumulation_micro_step(tmp_path):
    """2 gloo processes, 2 micro-batches per optimizer step: every all-reduce of the training steps is counted (a
    spy on torch.distributed.all_reduce in each rank); the non-finite guard's decision is the only one. The
    epoch-level logs, synced, all-reduce at the epoch end (after the last batch, outside validation)."""
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, "-c", f"import ddp_spies; ddp_spies.count_collectives({str(tmp_path)!r})"],
                              env=_cli_env(tmp_path, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", NODE_RANK="0",
                                           MASTER_ADDR="127.0.0.1", MASTER_PORT=port),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    outs = [p.communicate(timeout=400)[0] for p in procs]
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-3000:]
    for rank in (0, 1):
        counts = json.loads((tmp_path / f"collectives_rank{rank}.json").read_text())
        steps = [c for c in counts if c["stepped"]]
        micro = [c for c in counts if not c["stepped"]]
        assert len(steps) == 4 and len(micro) == 4  # 32 images / (2 ranks x 2 per batch) = 4 steps of 2 batches
        assert [c["all_reduce"] for c in steps] == [1, 1, 1, 1]
        assert [c["all_reduce"] for c in micro] == [0, 0, 0, 0]
        # and no other collective of ours inside a training batch (Lightning's strategy.reduce adds a barrier)
        assert all(sum(v for k, v in c.items() if k not in ("batch", "stepped", "all_reduce")) == 0 for c in counts)
        # epoch logs (train/*_epoch, sync_dist=True) are reduced over the ranks at the epoch end (Lightning's own
        # reduction of the logged values; 6 here: each key's sum and its image count), nowhere in a batch
        (epoch_end,) = json.loads((tmp_path / f"collectives_epoch_end_rank{rank}.json").read_text())
        assert epoch_end["epoch"] == 0 and epoch_end["all_reduce_logs"] == 6, epoch_end  # the same on both ranks


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------------------------------- W&B history
def _history_steps(run) -> list[int]:
    return [int(row["trainer/global_step"]) for row in run.history if "trainer/global_step" in row]


@pytest.mark.slow
def test_a_run_stopped_after_its_first_checkpoint_and_started_again_is_one_wandb_run(tmp_path):
    from wandb_records import wandb_runs  # tests/: W&B's own reader of the offline runs

    cmd = [str(TRAIN_CLI), "experiment=demo", *[o for o in TINY if not o.startswith(("logger", "data.synthetic.num_t"))],
           "data.synthetic.num_train=16", "data.val_batch_size=2", "trainer.max_epochs=2", "trainer.log_every_n_steps=1",
           "callbacks.last_checkpoint.every_n_train_steps=1", "logger=[csv,wandb]", "run_id=hist"]
    env = _cli_env(tmp_path)
    run = tmp_path / "outputs" / "train" / "runs" / "hist"
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, env=env)
        try:
            deadline = time.monotonic() + 180
            while proc.poll() is None and time.monotonic() < deadline:
                last = run / "checkpoints" / "last.ckpt"
                if last.is_file() and load_checkpoint_safely(last)["global_step"] >= 2:
                    break
                time.sleep(0.05)
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            proc.send_signal(signal.SIGTERM)  # `kill`, scancel, a preemption, a torchrun restart
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    first = (tmp_path / "first.log").read_text()
    assert proc.returncode == 128 + signal.SIGTERM, first[-3000:]
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "preempted" and status["error"].startswith("SIGTERM"), status
    stopped_at = load_checkpoint_safely(run / "checkpoints" / "last.ckpt")["global_step"]
    assert 2 <= stopped_at < 16 and f"SIGTERM checkpoint: {run / 'checkpoints' / 'last.ckpt'}" in first

    done = subprocess.run(cmd, capture_output=True, text=True, timeout=400, cwd=tmp_path, env=env)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert re.search(rf"resumed from '[^']*last\.ckpt': epoch \d, global step {stopped_at},", done.stdout + done.stderr)
    assert json.loads((run / "status.json").read_text())["status"] == "finished"

    wandb_id = json.loads((run / "run.json").read_text())["wandb_id"]
    attempts = wandb_runs(run)
    assert len(attempts) == 2 and all(a.path.name.endswith(f"-{wandb_id}") for a in attempts)  # one W&B run id
    run1, run2 = attempts
    assert {r["run_id"] for r in run1.of("run") + run2.of("run")} == {wandb_id}
    kinds1 = run1.kinds
    exits = run1.exit_codes + run2.exit_codes
    # the first attempt: marked preempting before it ended (W&B: preempted, not failed); finished once, at the end
    assert "preempting" in kinds1 and kinds1.index("preempting") < kinds1.index("exit")
    assert exits[0] != 0 and exits[1:] == [0]
    steps1, steps2 = _history_steps(run1), _history_steps(run2)
    # history goes on where the first attempt stopped (rows carry the step index: the step that was about to run)
    assert steps1 and steps2 and max(steps1) == stopped_at - 1 and min(steps2) == stopped_at and max(steps2) >= 15


# ---------------------------------------------------------------------------------------------------- timed last.ckpt
class LastCkptSpy(L.Callback):
    """After every training batch (after RequeueCheckpoint's own batch end: it comes first in the callback list):
    (epoch, batch, global step, ``global_step`` stored in ``last.ckpt`` or None). At one batch's start it moves the
    clock the timed checkpoint reads by ``tick_s``."""

    def __init__(self, path: Path, clock: list[float], tick_at: tuple[int, int], tick_s: float) -> None:
        self.path, self.clock, self.tick_at, self.tick_s = path, clock, tick_at, tick_s
        self.rows: list[tuple[int, int, int, int | None]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if (trainer.current_epoch, batch_idx) == self.tick_at:
            self.clock[0] += self.tick_s

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        saved = load_checkpoint_safely(self.path)["global_step"] if self.path.is_file() else None
        self.rows.append((trainer.current_epoch, batch_idx, trainer.global_step, saved))


def test_timed_last_ckpt_is_written_mid_epoch_after_every_minutes(tmp_path, monkeypatch):
    """callbacks.requeue_checkpoint.every_minutes: once that much training time has passed since the last save
    (RequeueCheckpoint's clock, time.monotonic: here a fake one that only the test moves, no sleeping), the request
    goes into the module's per-step decision (the all-reduce every rank joins under DDP) and last.ckpt is written
    right after the next optimizer step, in the middle of the epoch: newer than the epoch-end last.ckpt."""
    from types import SimpleNamespace

    from bapose.training import preemption

    clock = [1000.0]
    monkeypatch.setattr(preemption, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    cfg = compose_config([*TINY, "trainer.max_epochs=2", "trainer.num_sanity_val_steps=0",
                          "callbacks.requeue_checkpoint.every_minutes=0.5"], output_dir=tmp_path)
    per_epoch = 4  # 8 images / batch 2
    # 31 s (> 30 s) pass during the 2nd epoch's 2nd batch (global step 6)
    spy = LastCkptSpy(tmp_path / "checkpoints" / "last.ckpt", clock, tick_at=(1, 1), tick_s=31.0)
    L.seed_everything(cfg.seed, workers=True)
    dm = build_datamodule(cfg)
    module = build_module(cfg, codec=dm.codec)
    trainer = instantiate(cfg.trainer, callbacks=[*instantiate_list(cfg.callbacks), spy],
                          logger=instantiate_list(cfg.logger))
    trainer.fit(module, datamodule=dm)

    assert [r[:3] for r in spy.rows] == [(e, b, e * per_epoch + b + 1) for e in (0, 1) for b in range(per_epoch)]
    saved = [r[3] for r in spy.rows]
    # epoch 0: the clock stood still, no timed save; epoch 1 starts from the epoch-end last.ckpt (step 4); the time
    # passed at step 6 is decided at the next optimizer step: last.ckpt of step 7, mid-epoch; no second save after it
    assert saved == [None] * per_epoch + [per_epoch, per_epoch, 7, 7], spy.rows
    mid_epoch = {s for (e, _, _, s) in spy.rows if e == 1 and s is not None and s > per_epoch}
    assert mid_epoch == {7}
    assert load_checkpoint_safely(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 2 * per_epoch  # epoch end


# ---------------------------------------------------------------------------------------------------- submitit
def _submitit_tasks(folder: Path) -> list[int]:
    from test_sweep import _submitit_tasks as tasks

    return tasks(folder)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds submitit's job process through /proc")
def test_submitit_signal_mid_epoch_checkpoints_and_the_requeued_job_resumes_from_it(tmp_path):
    """hydra/launcher=slurm's path on submitit's local executor: USR2 in the middle of an epoch (no step-interval
    checkpoints) saves last.ckpt at the next optimizer step, newer than the epoch-end one; submitit requeues the
    job, which resumes from it."""
    sweep = tmp_path / "sweep"
    steps = tmp_path / "steps.txt"
    args = ["-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", "experiment=demo",
            *[o for o in TINY if not o.startswith("data.synthetic.num_train")], "data.synthetic.num_train=16",
            "trainer.max_epochs=3", "seed=0", "+callbacks.steps._target_=ddp_spies.StepFile",
            f"+callbacks.steps.path={steps}", f"hydra.sweep.dir={sweep}"]
    per_epoch = 8
    with open(tmp_path / "sweep.log", "w") as log:
        proc = subprocess.Popen([str(TRAIN_CLI), *args], env=_cli_env(tmp_path), cwd=tmp_path, stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            deadline, signalled = time.monotonic() + 180, None
            while proc.poll() is None and time.monotonic() < deadline and signalled is None:
                step = int(steps.read_text() or -1) if steps.is_file() else -1
                if per_epoch + 1 <= step <= per_epoch + 4:  # in the second epoch, after its last.ckpt at step 8
                    (task,) = _submitit_tasks(sweep)
                    os.kill(task, signal.SIGUSR2)
                    signalled = step
                time.sleep(0.02)
            assert signalled is not None, (tmp_path / "sweep.log").read_text()[-3000:]
            proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, (tmp_path / "sweep.log").read_text()[-3000:]
    job_logs = "".join(p.read_text(errors="replace") for p in (sweep / ".submitit").rglob("*_log.*"))
    assert "Caught signal SIGUSR2" in job_logs and "Requeued job" in job_logs, job_logs[-3000:]
    train_log = (sweep / "0" / "train.log").read_text()
    saved = re.search(r"at a signal checkpoint: \S+last\.ckpt \(epoch 1, global step (\d+)\)", train_log)
    assert saved and int(saved[1]) > per_epoch, train_log[-3000:]
    m = re.search(r"resumed from '([^']+)': epoch 1, global step (\d+)", train_log)
    assert m and Path(m[1]).name == "last.ckpt" and int(m[2]) == int(saved[1]) > per_epoch, train_log[-3000:]
    metrics = json.loads((sweep / "0" / "metrics.json").read_text())
    assert metrics["global_step"] == 3 * per_epoch and metrics["epoch"] == 3


# ---------------------------------------------------------------------------------------------------- multirun DDP
@pytest.mark.slow
def test_multirun_ddp_jobs_run_the_experiment_of_the_users_config_dir_on_every_rank(tmp_path):
    conf = tmp_path / "myconf" / "experiment"
    conf.mkdir(parents=True)
    (conf / "mine.yaml").write_text("# @package _global_\ndata:\n  batch_size: 3\n  synthetic:\n    num_train: 6\n")
    sweep = tmp_path / "sweep"
    args = ["-m", "--config-dir", str(tmp_path / "myconf"), "experiment=mine", "debug=fast_dev_run",
            *[o for o in TINY if not o.startswith(("data.batch_size", "data.synthetic.num_train"))],
            "model=dekr_w18s", "trainer=ddp_cpu", "trainer.devices=2", "seed=1,2", f"hydra.sweep.dir={sweep}"]
    done = subprocess.run([str(TRAIN_CLI), *args], env=_cli_env(tmp_path), cwd=tmp_path, capture_output=True,
                          text=True, timeout=500)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert json.loads((sweep / "sweep_status.json").read_text())["finished"] == 2
    for job, seed in (("0", 1), ("1", 2)):
        for rank, log in ((0, "debug.log"), (1, "debug_rank1.log")):
            text = (sweep / job / log).read_text()
            assert re.search(rf"process rank {rank} of 2 .* batch 3 per process", text), text[-2000:]
        assert "global batch 6 = 3 per process x 2 processes" in (sweep / job / "debug.log").read_text()
        assert json.loads((sweep / job / "run.json").read_text())["config"]["seed"] == seed
        assert f"seed={seed}" in json.loads((sweep / job / "status.json").read_text())["overrides"]
