"""Issue 22: what a run writes to its console. One line per epoch summary; a progress bar refreshed per batch on a
terminal and a few times per epoch in a file or pipe (a SLURM log); the LR curve is Lightning's LearningRateMonitor
alone (``lr-Adam``), no second ``lr`` series."""

from __future__ import annotations

import csv
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.utils import instantiate

from bapose.build import compose_config
from bapose.errors import ConfigError
from bapose.training.callbacks import progress_bar

TESTS = Path(__file__).parent
TRAIN_CLI = Path(sys.executable).with_name("bapose-train")
EPOCHS, BATCHES = 2, 16  # 32 generated images, batch 2
TINY = [
    "experiment=demo", "data.input_size=64", "data.synthetic.num_train=32", "data.synthetic.num_val=2",
    "data.synthetic.image_size=64", "data.batch_size=2", "data.val_batch_size=2", "data.num_workers=0",
    "data.persistent_workers=false", "data.pin_memory=false", "logger=[csv]", "run_test=false", "draw_images=0",
    "trainer.limit_val_batches=1", f"trainer.max_epochs={EPOCHS}", "trainer.log_every_n_steps=4", "run_id=console",
]


class _Stdout(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.fixture
def stdout_is(monkeypatch):
    monkeypatch.delenv("TQDM_MINITERS", raising=False)  # Lightning would raise the rate to it

    def set_tty(tty: bool) -> None:
        monkeypatch.setattr(sys, "stdout", _Stdout(tty))
    return set_tty


def test_progress_bar_refresh_rate_follows_stdout_and_the_config_wins(stdout_is):
    node = compose_config([]).callbacks.progress_bar
    stdout_is(True)
    assert instantiate(node).refresh_rate == 1  # a terminal redraws in place: every batch
    stdout_is(False)
    assert instantiate(node).refresh_rate == 200  # a file keeps every redraw: every 200 batches and at the ends
    forced = compose_config(["callbacks.progress_bar.refresh_rate=5"]).callbacks.progress_bar
    for tty in (True, False):
        stdout_is(tty)
        assert instantiate(forced).refresh_rate == 5
    stdout_is(False)
    assert progress_bar(log_refresh_rate=50).refresh_rate == 50
    assert not progress_bar(refresh_rate=0).is_enabled  # 0: no bar
    for bad in (-1, 2.5, "10"):
        with pytest.raises(ConfigError, match=r"callbacks\.progress_bar: field 'refresh_rate' is .*expected an "
                                              r"integer >= 0"):
            progress_bar(refresh_rate=bad)
    with pytest.raises(ConfigError, match=r"field 'log_refresh_rate' is -3"):
        progress_bar(log_refresh_rate=-3)


def test_a_piped_run_prints_one_summary_line_per_epoch_and_a_bounded_progress_bar(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "TQDM_MINITERS")}
    env.update(OMP_NUM_THREADS="1", WANDB_MODE="offline", PYTHONWARNINGS="ignore", BAPOSE_ROOT=str(tmp_path),
               BAPOSE_CACHE=str(tmp_path / "cache"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([str(TRAIN_CLI), *TINY], capture_output=True, text=True, timeout=400, cwd=tmp_path,
                          env=env)  # stdout a pipe: not a terminal
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    run = tmp_path / "outputs" / "train" / "runs" / "console"
    log_file = (run / "train.log").read_text()
    for epoch in range(EPOCHS):
        summary = re.compile(rf"epoch {epoch} \| step {(epoch + 1) * BATCHES} \| .*val/AP \d\.\d{{4}}")
        assert len(summary.findall(done.stdout)) == 1, done.stdout[-3000:]
        assert not summary.search(done.stderr)
        assert len(summary.findall(log_file)) == 1
        # on its own line, not glued to a progress bar's
        assert re.search(rf"(^|\n)\[[^\]]+\]\[bapose\]\[INFO\] - epoch {epoch} \|", done.stdout.replace("\r", "\n"))
        # the epoch's bar was drawn at its start and its end only (per batch it would show 0, 1, ..., 16)
        counts = {int(n) for n in re.findall(rf"Epoch {epoch}: +\d+%\|[^|]*\| (\d+)/{BATCHES} ", done.stdout)}
        assert counts == {0, BATCHES}, sorted(counts)
    # every bar update (train, sanity check, validation) is one '\r'-separated chunk: a handful per epoch, not one
    # per batch (refreshed per batch this run writes 93)
    updates = re.findall(r"\| \d+/(?:\d+|\?) \[", done.stdout)
    assert 0 < len(updates) <= 20 * EPOCHS, len(updates)

    # the LR curve: the LR monitor's series, logged; no second `lr` column
    with open(run / "csv" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert "lr-Adam" in rows[0] and "lr" not in rows[0]
    lrs = [float(r["lr-Adam"]) for r in rows if r["lr-Adam"]]
    assert len(lrs) >= EPOCHS * BATCHES // 4 and all(v > 0 for v in lrs)
    # each epoch's line carries that epoch's train loss (the CSV log's train/loss_epoch), not the previous epoch's
    said = {int(e): float(v) for e, v in re.findall(r"epoch (\d+) \| step \d+ \| train/loss ([0-9.]+)", log_file)}
    logged = {int(r["epoch"]): float(r["train/loss_epoch"]) for r in rows if r.get("train/loss_epoch")}
    assert sorted(said) == list(range(EPOCHS)) and all(abs(said[e] - logged[e]) < 1e-5 for e in said), (said, logged)
