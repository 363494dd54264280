"""A Hydra multirun (2 backbones x 2 D-WASP dilation sets) runs 4 jobs, each with its own offline W&B run."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

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
        (log_file,) = runs[0].glob("run-*.wandb")
        assert f"-{sweep_dir.name}".encode() in log_file.read_bytes()
    assert combos == {(b, tuple(d)) for b, d in itertools.product(BACKBONES, DILATIONS)}
    assert len(run_dirs) == 4
