"""DDP on CPU (gloo): results gathered over 2 processes score exactly like a single process; 2-process training
validates, checkpoints and resumes (``trainer=ddp_cpu``)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bapose.build import compose_config

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
    # He-scaled heads: a fresh net with DEKR's Normal(0, 0.001) heads predicts ~0 everywhere, so no one to gather
    cfg = compose_config([*DATA, "+model.head_init=kaiming"], output_dir=tmp_path / "train")
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

    from bapose.build import build_datamodule, build_module

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


# ---------------------------------------------------------------------------------------------------- DDP training
FIT = [
    "data.input_size=64", "data.synthetic.num_train=8", "data.synthetic.num_val=5", "data.synthetic.image_size=64",
    "data.batch_size=2", "data.val_batch_size=2", "data.num_workers=0", "data.persistent_workers=false",
    "data.pin_memory=false", "logger=[csv]", "draw_images=0", "run_test=false", "model=dekr_w18s",
    "trainer=ddp_cpu", "trainer.devices=2", "trainer.log_every_n_steps=1",
    # every top-30 centre becomes a person: a 4-step net has people in every image to compare (with He-scaled
    # heads: DEKR's Normal(0, 0.001) heads leave a 4-step net's center map at ~0, not above 0)
    "codec.center_threshold=0.0", "+model.head_init=kaiming",
]


def _bapose_train(args: list[str], root: Path, extra_env: dict | None = None) -> str:
    exe = Path(sys.executable).parent / "bapose-train"
    tests = str(Path(__file__).parent)
    env = {**{k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}, "OMP_NUM_THREADS": "1",
           "PYTHONWARNINGS": "ignore", "BAPOSE_ROOT": str(root),
           "PYTHONPATH": os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")])), **(extra_env or {})}
    proc = subprocess.run([str(exe), *args], env=env, capture_output=True, text=True, timeout=400, cwd=root)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out


@pytest.mark.slow
def test_ddp_cpu_fits_validates_and_resumes_like_one_process(tmp_path):
    """2 gloo processes: fit 1 epoch, start again with the same run_id and 2 epochs (resumes from last.ckpt); the
    2-process validation of the best checkpoint equals a 1-process evaluation of it; the ranks drew their own
    augmentations; every rank has its own log file."""
    from bapose.training.evaluate import evaluate

    run = tmp_path / "outputs" / "train" / "runs" / "ddp-a"
    spy = ["+callbacks.draws._target_=ddp_spies.RecordDraws", f"+callbacks.draws.out_dir={tmp_path / 'draws'}"]
    first = _bapose_train([*FIT, "run_id=ddp-a", "trainer.max_epochs=1", *spy], tmp_path)
    assert "global batch 4 = 2 per process x 2 processes (2 devices x 1 nodes) x 1 accumulated" in first
    assert json.loads((run / "metrics.json").read_text())["global_step"] == 2  # 8 images / (2 ranks x 2)

    # started again with the same identity: finds its folder, resumes at step 2, finishes the 2-epoch schedule
    second = _bapose_train([*FIT, "run_id=ddp-a", "trainer.max_epochs=2", *spy], tmp_path)
    resumed = r"resumed from '[^']*ddp-a/checkpoints/last\.ckpt': epoch \d, global step 2,"
    assert re.search(resumed, second), second[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["global_step"] == 4 and metrics["epoch"] == 2
    # one log file per process
    assert "process rank 0 of 2" in (run / "train.log").read_text()
    assert "process rank 1 of 2" in (run / "train_rank1.log").read_text()
    assert "global batch 4" in (run / "train.log").read_text()

    # the same best checkpoint scored by one process: the same people, hence the same AP
    torch.set_num_threads(1)
    data = [o for o in FIT if o.startswith(("data.", "codec."))]
    ev = compose_config([f"ckpt_path={metrics['best_model_path']}", *data], config_name="eval",
                        output_dir=tmp_path / "eval")
    single = evaluate(ev)
    for k in ("AP", "AP50", "AR"):
        assert single[f"val/{k}"] == pytest.approx(metrics[f"val/{k}"], abs=1e-6)
    key = lambda r: (r["image_id"], -r["score"], r["keypoints"])  # noqa: E731
    two = json.loads((run / "val_results.json").read_text())
    one = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert len({r["image_id"] for r in two}) == 5 and sorted(two, key=key) == sorted(one, key=key)

    # each rank drew its own augmentations (the same seed on both ranks once gave 2 copies of every draw)
    draws = {r: [json.loads(line) for line in (tmp_path / "draws" / f"draws_rank{r}.jsonl").read_text().splitlines()]
             for r in (0, 1)}
    assert len(draws[0]) == len(draws[1]) == 4 * 2  # 2 batches of 2 per epoch and rank, 2 epochs
    params = {r: [(d["scale"], d["rotation"], d["flip"]) for d in draws[r]] for r in (0, 1)}
    assert all(a != b for a, b in zip(params[0], params[1]))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_torchrun_two_nodes_share_one_run_folder_and_a_restart_resumes(tmp_path):
    """README's multi-node torchrun line, with two "nodes" of one process each on this machine (c10d rendezvous on
    localhost): both ranks compose the same run folder from the rendezvous id, rank 1 logs as node 1, the global
    batch counts both nodes; the same two commands started again (a torchrun restart) resume from that folder."""
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TORCHELASTIC_"))
              and k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "HYDRA_FULL_ERROR")},
           "OMP_NUM_THREADS": "1", "BAPOSE_ROOT": str(tmp_path), "BAPOSE_CACHE": str(tmp_path / "cache"),
           "WANDB_MODE": "offline"}
    overrides = ["experiment=demo", *DATA, "data.synthetic.num_train=8", "trainer=ddp_cpu", "trainer.devices=1",
                 "trainer.num_nodes=2", "logger=[csv]", "draw_images=0", "trainer.limit_val_batches=1"]

    def launch(epochs: int) -> list[str]:
        port = _free_port()
        cmd = [str(torchrun), "--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d",
               f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=twonodes", "-m", "bapose.cli.train", *overrides,
               f"trainer.max_epochs={epochs}"]
        nodes = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True) for _ in range(2)]
        outs = [p.communicate(timeout=300)[0] for p in nodes]
        for p, out in zip(nodes, outs, strict=True):
            assert p.returncode == 0, out[-3000:]
        return outs

    launch(1)
    runs = tmp_path / "outputs" / "train" / "runs"
    assert [p.name for p in runs.iterdir()] == ["torchrun-twonodes"]
    run = runs / "torchrun-twonodes"
    rank0, rank1 = (run / "train.log").read_text(), (run / "train_rank1.log").read_text()
    assert re.search(rf"process rank 0 of 2 \(local rank 0, node \d\) on \S+, run folder {re.escape(str(run))}", rank0)
    assert re.search(rf"process rank 1 of 2 \(local rank 0, node \d\) on \S+, run folder {re.escape(str(run))}", rank1)
    assert {re.search(r"node (\d)\)", t)[1] for t in (rank0, rank1)} == {"0", "1"}
    assert "global batch 4 = 2 per process x 2 processes (1 devices x 2 nodes) x 1 accumulated" in rank0
    assert json.loads((run / "metrics.json").read_text())["global_step"] == 2  # 8 images / (2 ranks x 2)

    outs = launch(2)  # the restart: same rendezvous id, one more epoch
    assert [p.name for p in runs.iterdir()] == ["torchrun-twonodes"]
    assert any(re.search(r"resumed from '[^']*last\.ckpt': epoch 1, global step 2", o) for o in outs), outs[0][-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["global_step"] == 4 and metrics["epoch"] == 2
