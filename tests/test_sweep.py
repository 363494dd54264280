"""Hydra multiruns: 2 backbones x 2 D-WASP dilation sets run 4 jobs, each with its own offline W&B run; jobs that are
themselves 2-process DDP runs; a failed job recorded without ending the sweep; an Optuna study in sqlite."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from wandb_records import the_wandb_run

TINY = [
    "data.input_size=64", "data.synthetic.num_train=4", "data.synthetic.num_val=2", "data.synthetic.image_size=64",
    "data.batch_size=2", "data.val_batch_size=2", "data.num_workers=0", "data.persistent_workers=false",
    "data.pin_memory=false", "draw_images=0", "run_test=false",
]
BACKBONES = ["hrnet_w18_small", "hrnet_w18_small_v2"]
DILATIONS = [[1, 6, 12, 18], [1, 3, 6, 9]]


@pytest.mark.slow
def test_multirun_width_x_dilations_gives_four_runs_with_own_wandb(tmp_path):
    exe = Path(sys.executable).parent / "bapose-train"
    sweep_dir = tmp_path / "sweep"
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [str(exe), "-m", "debug=fast_dev_run", *TINY, f"model.backbone={','.join(BACKBONES)}",
           "model.decoder.dilations=" + ",".join("[" + ",".join(map(str, d)) + "]" for d in DILATIONS),
           f"hydra.sweep.dir={sweep_dir}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    jobs = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in jobs] == ["0", "1", "2", "3"]
    combos, run_dirs = set(), set()
    for job in jobs:
        cfg = yaml.safe_load((job / ".hydra" / "config.yaml").read_text())
        combos.add((cfg["model"]["backbone"], tuple(cfg["model"]["decoder"]["dilations"])))
        metrics = json.loads((job / "metrics.json").read_text())
        assert 0.0 <= metrics["val/AP"] <= 1.0 and metrics["global_step"] == 1
        runs = list((job / "wandb").glob("offline-run-*"))
        # one run per job: without wandb.finish() the next job would reuse the first job's run
        assert len(runs) == 1
        run_dirs.add(runs[0].name)
        # every job of the sweep logs into the same W&B group, named after the sweep folder
        assert the_wandb_run(job).run["run_group"].endswith(f"-{sweep_dir.name}")
    assert combos == {(b, tuple(d)) for b, d in itertools.product(BACKBONES, DILATIONS)}
    assert len(run_dirs) == 4


# --------------------------------------------------------------------------------------------- DDP jobs, failures
def _multirun(args: list[str], tmp_path: Path, timeout: int = 500) -> tuple[subprocess.CompletedProcess, str]:
    exe = Path(sys.executable).parent / "bapose-train"
    env = {**{k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}, "WANDB_MODE": "offline",
           "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([str(exe), *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=tmp_path)
    return proc, proc.stdout + proc.stderr


@pytest.mark.slow
def test_multirun_of_ddp_jobs_starts_each_job_once_and_the_sweep_once(tmp_path):
    sweep_dir = tmp_path / "sweep"
    proc, out = _multirun(["-m", "debug=fast_dev_run", *TINY, "logger=[csv]", "model=dekr_w18s", "trainer=ddp_cpu",
                           "trainer.devices=2", "optimizer.lr=0.001,0.002", f"hydra.sweep.dir={sweep_dir}"], tmp_path)
    assert proc.returncode == 0, out[-4000:]
    # Lightning re-runs the command line for rank 1: inside -m that once started the whole sweep again
    assert out.count("Launching 2 jobs locally") == 1
    jobs = sorted(p.name for p in sweep_dir.iterdir() if p.is_dir())
    assert jobs == ["0", "1"]
    for job, lr in zip(jobs, (0.001, 0.002)):
        folder = sweep_dir / job
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["global_step"] == 1 and json.loads((folder / "status.json").read_text())["status"] == "finished"
        assert yaml.safe_load((folder / ".hydra" / "config.yaml").read_text())["optimizer"]["lr"] == lr
        # each job ran as 2 processes of its own (per-rank Hydra logs, per-rank output of the launcher)
        assert "global batch 4 = 2 per process x 2 processes" in (folder / "debug.log").read_text()
        assert "process rank 1 of 2" in (folder / "debug_rank1.log").read_text()
        assert len(list((folder / "ranks").rglob("stdout.log"))) == 2
    assert json.loads((sweep_dir / "sweep_status.json").read_text())["finished"] == 2


@pytest.mark.slow
def test_a_failed_job_does_not_end_the_sweep(tmp_path):
    sweep_dir = tmp_path / "sweep"
    # job 0 fails inside fit (Adam refuses a negative LR), after its W&B run started
    proc, out = _multirun(["-m", "debug=fast_dev_run", *TINY, "optimizer.lr=-1,0.001", f"hydra.sweep.dir={sweep_dir}"],
                          tmp_path)
    assert proc.returncode == 1, out[-4000:]  # the exit status counts the failed jobs
    failed = json.loads((sweep_dir / "0" / "status.json").read_text())
    assert failed["status"] == "failed" and failed["error"] == "ValueError: Invalid learning rate: -1"
    assert json.loads((sweep_dir / "1" / "status.json").read_text())["status"] == "finished"
    assert 0.0 <= json.loads((sweep_dir / "1" / "metrics.json").read_text())["val/AP"] <= 1.0
    summary = json.loads((sweep_dir / "sweep_status.json").read_text())
    assert summary["jobs"] == 2 and [j["job"] for j in summary["failed"]] == ["0"]
    assert "1 of 2 jobs failed" in out and "job 0 (failed): ValueError: Invalid learning rate: -1" in out
    # W&B: each run named after its sweep job, in the sweep's group; the failed one finished with exit code 1
    for job, code in (("0", 1), ("1", 0)):
        wandb_run = the_wandb_run(sweep_dir / job)
        run = wandb_run.run
        assert run["display_name"].startswith(f"{job}-") and f"optimizer.lr={'-1' if job == '0' else '0.001'}" in \
            run["display_name"] and run["run_group"] == f"train-{sweep_dir.name}"
        assert wandb_run.exit_codes == [code]


@pytest.mark.slow
def test_optuna_study_in_sqlite_completes_trials_and_marks_the_failed_one(tmp_path):
    import optuna

    db = tmp_path / "optuna.db"
    # with the sampler's seed 1230 the three trials draw lr = -1 (fails), 0.001, 0.001
    proc, out = _multirun(["sweep=optuna", "debug=fast_dev_run", *TINY, "logger=[csv]", "hydra.sweeper.n_trials=3",
                           "hydra.sweeper.sampler.seed=1230", f"hydra.sweeper.storage=sqlite:///{db}",
                           'hydra.sweeper.params={optimizer.lr:"choice(0.001,-1.0)"}',
                           f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path)
    assert proc.returncode == 1, out[-4000:]  # one failed trial
    study = optuna.load_study(study_name="bapose", storage=f"sqlite:///{db}")
    states = [(t.state.name, t.params["optimizer.lr"]) for t in study.trials]
    assert states == [("FAIL", -1.0), ("COMPLETE", 0.001), ("COMPLETE", 0.001)]
    assert all(0.0 <= t.value <= 1.0 for t in study.trials if t.state.name == "COMPLETE")


def _submitit_tasks(folder: Path) -> list[int]:
    """PIDs of the processes submitit's local executor runs for the jobs under ``folder``."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if proc.name.isdigit() and b"submitit.core._submit" in cmd and any(str(folder).encode() in c for c in cmd):
            pids.append(int(proc.name))
    return pids


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds submitit's job process through /proc")
def test_submitit_launcher_requeues_a_signalled_job_that_resumes_in_its_own_folder(tmp_path):
    """`hydra/launcher=slurm` and `submitit_local` share Hydra's submitit launcher: a job that gets submitit's
    preemption / time-out signal (USR2, sent by SLURM `signal_delay_s` before the limit) checkpoints through Hydra's
    launcher, exits with submitit's requeue code and is started again from its pickle; here the local executor plays
    SLURM. The requeued job finds its own job folder, resumes from its last.ckpt and ends at the full schedule."""
    import signal
    import time

    from bapose.checkpoints.io import load_checkpoint_safely

    sweep_dir = tmp_path / "sweep"
    exe = Path(sys.executable).parent / "bapose-train"
    env = {**{k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR" and not k.startswith("SLURM_")},
           "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "BAPOSE_ROOT": str(tmp_path)}
    args = ["-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", "experiment=demo",
            *[o for o in TINY if not o.startswith("data.synthetic.num_train")], "data.synthetic.num_train=8",
            "logger=[csv]", "trainer.max_epochs=4", "callbacks.last_checkpoint.every_n_train_steps=1", "seed=0",
            f"hydra.sweep.dir={sweep_dir}"]
    with open(tmp_path / "sweep.log", "w") as log:
        proc = subprocess.Popen([str(exe), *args], env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline, signalled = time.monotonic() + 120, None
            last = sweep_dir / "0" / "checkpoints" / "last.ckpt"
            while proc.poll() is None and time.monotonic() < deadline and signalled is None:
                if last.is_file() and load_checkpoint_safely(last)["global_step"] >= 5:
                    tasks = _submitit_tasks(sweep_dir)
                    assert len(tasks) == 1, tasks
                    os.kill(tasks[0], signal.SIGUSR2)
                    signalled = tasks[0]
                time.sleep(0.05)
            assert signalled is not None, (tmp_path / "sweep.log").read_text()[-3000:]
            proc.wait(timeout=240)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    out = (tmp_path / "sweep.log").read_text()
    assert proc.returncode == 0, out[-3000:]
    job_logs = "".join(p.read_text(errors="replace") for p in (sweep_dir / ".submitit").rglob("*_log.*"))
    # (submitit's local executor reports every USR2 as a time-out; SLURM tells preemption and time-out apart)
    assert "Caught signal SIGUSR2" in job_logs and "Requeued job" in job_logs, job_logs[-3000:]
    train_log = (sweep_dir / "0" / "train.log").read_text()
    m = re.search(r"resumed from '([^']+)': epoch \d+, global step (\d+)", train_log)
    assert m and Path(m[1]) == last and int(m[2]) >= 5, train_log[-3000:]
    assert sorted(p.name for p in sweep_dir.iterdir() if p.name.isdigit()) == ["0"]  # no second folder
    metrics = json.loads((sweep_dir / "0" / "metrics.json").read_text())
    assert metrics["global_step"] == 4 * 4 and metrics["epoch"] == 4  # 8 images / batch 2 = 4 steps an epoch
    assert json.loads((sweep_dir / "0" / "status.json").read_text())["status"] == "finished"
