"""DDP on CPU (gloo): results gathered over 2 processes score exactly like a single process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bapose.cli.train import compose_config

# 5 val images over 2 ranks: DistributedSampler pads with a repeated image, which the gather must drop
DATA = [
    "data.input_size=64", "data.synthetic.num_train=4", "data.synthetic.num_val=5", "data.synthetic.image_size=64",
    "data.batch_size=2", "data.val_batch_size=2", "data.num_workers=0", "data.persistent_workers=false",
    "data.pin_memory=false",
]


def _bapose_eval(args: list[str], run_dir: Path) -> dict:
    exe = Path(sys.executable).parent / "bapose-eval"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([str(exe), *args, f"hydra.run.dir={run_dir}"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.mark.slow
def test_ddp_cpu_gathered_ap_equals_single_process(tmp_path):
    torch.set_num_threads(1)
    cfg = compose_config(DATA, output_dir=tmp_path / "train")
    ckpt = tmp_path / "model.ckpt"
    _save_module_checkpoint(cfg, ckpt)

    # the checkpoint is saved without a trainer, so it stores no dataset: data= names it
    single = _bapose_eval([f"ckpt_path={ckpt}", "trainer=cpu", "data=synthetic", *DATA], tmp_path / "single")
    ddp = _bapose_eval([f"ckpt_path={ckpt}", "trainer=ddp_cpu", "trainer.devices=2", "data=synthetic", *DATA],
                       tmp_path / "ddp")
    assert ddp["val/AP"] == single["val/AP"] and ddp["val/AR"] == single["val/AR"]
    key = lambda r: (r["image_id"], -r["score"], r["keypoints"])  # noqa: E731
    res_single = json.loads((tmp_path / "single" / "results.json").read_text())
    res_ddp = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert len({r["image_id"] for r in res_single}) == 5  # every val image, none twice
    assert sorted(res_ddp, key=key) == sorted(res_single, key=key)


def _save_module_checkpoint(cfg, path: Path) -> None:
    """A Lightning-style checkpoint of a freshly seeded module (net weights + bapose metadata)."""
    import lightning as L

    from bapose.cli.train import build_datamodule, build_module

    L.seed_everything(0)
    dm = build_datamodule(cfg)
    module = build_module(cfg, codec=dm.codec)
    module.meta = dm.meta
    # move BatchNorm statistics off their init values so the test does not pass on a degenerate net
    with torch.no_grad():
        for m in module.net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    ckpt = {"state_dict": module.state_dict(), "epoch": 0, "global_step": 0}
    module.on_save_checkpoint(ckpt)
    torch.save(ckpt, path)
