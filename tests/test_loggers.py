"""Logger presets: `logger=tensorboard` alone and beside CSV and W&B; a tiny CPU training writes TensorBoard event
files whose scalars are the run's own (read back with TensorBoard's EventAccumulator). Offline, no GPU."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bapose.build import compose_config

TINY = [
    "data.input_size=64", "data.synthetic.num_train=8", "data.synthetic.num_val=2", "data.synthetic.image_size=64",
    "data.batch_size=2", "data.val_batch_size=2", "data.num_workers=0", "data.persistent_workers=false",
    "data.pin_memory=false", "draw_images=0", "run_test=false",
]


def test_tensorboard_preset_composes_alone_and_beside_the_others(tmp_path):
    alone = compose_config(["logger=tensorboard"], output_dir=tmp_path)
    assert alone.logger.keys() == {"tensorboard"}
    tb = alone.logger.tensorboard
    assert tb._target_ == "lightning.pytorch.loggers.TensorBoardLogger"
    assert (tb.save_dir, tb.name, tb.version) == (str(tmp_path), "tensorboard", "")
    three = compose_config(["logger=[csv,tensorboard,wandb]"], output_dir=tmp_path)
    assert list(three.logger) == ["csv", "tensorboard", "wandb"]


def test_a_tiny_run_writes_tensorboard_events_with_its_loss_and_ap(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    env = {**{k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}, "WANDB_MODE": "offline",
           "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [str(Path(sys.executable).with_name("bapose-train")), "logger=[csv,tensorboard,wandb]", "debug=limit", *TINY,
           "trainer.max_epochs=1", "trainer.limit_train_batches=3", "trainer.limit_val_batches=1",
           f"hydra.run.dir={run}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=500, cwd=tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]

    events = sorted((run / "tensorboard").glob("events.out.tfevents.*"))
    assert events, sorted(p.name for p in run.rglob("*"))[:40]
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss_step", "train/loss_epoch", "val/AP", "val/AR", "lr-Adam"} <= tags and "hp_metric" not in tags
    loss = acc.Scalars("train/loss_step")
    # one point per optimizer step (debug=limit logs every step), finite and positive
    assert [e.step for e in loss] == [0, 1, 2] and all(math.isfinite(e.value) and e.value > 0 for e in loss)
    ap = acc.Scalars("val/AP")
    assert ap and all(0.0 <= e.value <= 1.0 for e in ap)
    # the very numbers of the CSV log: every step's loss, and val/AP at each validation (the epoch's, then the final
    # evaluation's, which metrics.json reports)
    rows = (run / "csv" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")

    def column(name: str) -> list[tuple[int, float]]:
        i, s = header.index(name), header.index("step")
        return [(int(r.split(",")[s]), float(r.split(",")[i])) for r in rows[1:] if r.split(",")[i]]

    csv_loss, csv_ap = column("train/loss_step"), column("val/AP")
    assert [e.step for e in loss] == [s for s, _ in csv_loss] and [e.step for e in ap] == [s for s, _ in csv_ap]
    assert [e.value for e in loss] == pytest.approx([v for _, v in csv_loss], rel=1e-6)  # TB stores float32
    assert [e.value for e in ap] == pytest.approx([v for _, v in csv_ap], rel=1e-6, abs=1e-9)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["global_step"] == 3 and ap[-1].value == pytest.approx(metrics["val/AP"], abs=1e-9)
    # and the other two loggers of the list ran too
    assert len(list((run / "wandb").glob("offline-run-*"))) == 1


def test_without_wandb_mode_or_a_key_a_run_logs_to_wandb_offline(tmp_path):
    """`make train` on a fresh machine: no WANDB_MODE, no API key, no ~/.netrc. The credential lookup finds none, the
    run logs offline (W&B must not ask for a login), and its offline W&B run is in the run folder."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k != "HYDRA_FULL_ERROR"}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), WANDB_SILENT="true", OMP_NUM_THREADS="1",
               PYTHONWARNINGS="ignore")
    run = tmp_path / "run"
    cmd = [str(Path(sys.executable).with_name("bapose-train")), "logger=[csv,wandb]", "debug=limit", *TINY,
           "trainer.max_epochs=1", "trainer.limit_train_batches=1", f"hydra.run.dir={run}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "wandb login" not in proc.stdout + proc.stderr
    (offline,) = run.glob("wandb/offline-run-*")
    assert offline.name.endswith(json.loads((run / "run.json").read_text())["wandb_id"])
    assert json.loads((run / "status.json").read_text())["status"] == "finished"

