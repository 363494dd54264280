"""What Lightning, ultralytics and MMPose users expect of a run's checkpoints: ``checkpoints/best.ckpt`` and
``checkpoints/last.ckpt`` under stable names (the epoch inside the file and in a log line), README's evaluation line
running as written, ``BAPoseModule.load_from_checkpoint`` round-tripping, and one finite-weights check per save."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import bapose
from bapose.build import compose_config
from bapose.checkpoints import io as ckpt_io
from bapose.checkpoints.io import load_checkpoint_safely
from bapose.predictor import Predictor
from bapose.training import BAPoseModule

REPO = Path(__file__).resolve().parents[1]
# the demo experiment (He-scaled heads: people with real scores), shrunk: two epochs of three steps at 64 px
TINY = [
    "experiment=demo", "data.input_size=64", "data.synthetic.num_train=8", "data.synthetic.num_val=3",
    "data.synthetic.image_size=64", "data.batch_size=2", "data.val_batch_size=2", "data.num_workers=0",
    "data.persistent_workers=false", "data.pin_memory=false", "logger=[csv]", "draw_images=0", "run_test=false",
    "trainer.max_epochs=2", "trainer.limit_train_batches=3", "test.flip=false",
]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> tuple[Path, str]:
    """A tiny `bapose-train experiment=demo` run through the console script, as `make train` starts it."""
    root = tmp_path_factory.mktemp("demo")
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.update(WANDB_MODE="offline", OMP_NUM_THREADS="1")
    proc = subprocess.run([str(Path(sys.executable).parent / "bapose-train"), *TINY, f"hydra.run.dir={root / 'run'}"],
                          env=env, capture_output=True, text=True, timeout=600, cwd=root)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return root / "run", proc.stdout + proc.stderr


def test_the_run_folder_holds_best_and_last_under_stable_names(demo_run) -> None:
    run, console = demo_run
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["best.ckpt", "last.ckpt"]
    best, last = (load_checkpoint_safely(run / "checkpoints" / n) for n in names)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["best_model_path"] == str(run / "checkpoints" / "best.ckpt")
    assert last["global_step"] == 6 and best["global_step"] in (3, 6)
    # the epoch it holds is inside the file, and each new best is said in one log line with it
    said = re.findall(r"new best val/AP (\S+) at epoch (\d+) \(step (\d+)\): (\S+)", console)
    assert said and said[-1][3].endswith("checkpoints/best.ckpt")
    assert int(said[-1][2]) == best["global_step"] and int(said[-1][1]) == best["epoch"]
    (state,) = [v for k, v in best["callbacks"].items() if k.startswith("BestCheckpoint")]
    assert float(said[-1][0]) == pytest.approx(float(state["best_model_score"]), abs=1e-4)


def _readme_eval_line() -> str:
    """README's line that evaluates a `make train` run's best checkpoint."""
    for code in re.findall(r"`([^`]*bapose-eval ckpt_path=[^`]*checkpoints/best\.ckpt[^`]*)`", (REPO / "README.md").read_text()):
        if "<time>" in code:
            return code
    raise AssertionError("README has no `bapose-eval ckpt_path=outputs/train/runs/<time>/checkpoints/best.ckpt` line")


def test_readme_eval_line_runs_as_written(demo_run, tmp_path) -> None:
    run, _ = demo_run
    line = _readme_eval_line()
    args = shlex.split(line.replace("outputs/train/runs/<time>", str(run)))
    assert args[0] == "bapose-eval"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(Path(sys.executable).parent / "bapose-eval"), *args[1:],
                           f"hydra.run.dir={tmp_path / 'eval'}"], env=env, capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    scored = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert scored["ckpt_path"] == str(run / "checkpoints" / "best.ckpt") and 0.0 <= scored["val/AP"] <= 1.0


def test_load_from_checkpoint_rebuilds_the_trained_module(demo_run) -> None:
    run, _ = demo_run
    path = run / "checkpoints" / "best.ckpt"
    module = BAPoseModule.load_from_checkpoint(path, map_location="cpu").eval()
    ckpt = load_checkpoint_safely(path)
    hp = ckpt["hyper_parameters"]
    # the net config part of the hyper-parameters: the demo's BAPose-W18-small with its dilations
    assert hp["model_config"]["backbone"] == "hrnet_w18_small" and hp["model_config"]["decoder"]["dilations"]
    assert hp["optimizer_config"]["_target_"] == "torch.optim.Adam" and hp["codec_config"]["input_size"] == 64
    assert all(torch.equal(v, ckpt["state_dict"][k]) for k, v in module.state_dict().items())
    assert module.codec.input_size == 64 and module.meta.name == "coco" and module.val_flip is True
    # it predicts what bapose.load_model's net (the same weights) predicts
    loaded = bapose.load_model(path, prefer_ema=False)
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(module.net(images), loaded.net(images)):
            torch.testing.assert_close(a, b)
    people = Predictor(module.net, module.codec)(images)[0]
    again = Predictor(loaded.net, loaded.codec)(images)[0]
    torch.testing.assert_close(torch.as_tensor(people.poses), torch.as_tensor(again.poses))


def test_one_finite_weights_check_per_save(tmp_path, monkeypatch) -> None:
    from bapose.training.fit import train

    calls: list[str] = []
    real = ckpt_io.assert_finite_state

    def spy(state, source="checkpoint"):
        calls.append(source)
        return real(state, source)

    monkeypatch.setattr(ckpt_io, "assert_finite_state", spy)
    saves: list[str] = []
    real_save = ckpt_io.atomic_torch_save

    def counting_save(obj, path, *args):
        saves.append(str(path))
        return real_save(obj, path, *args)

    monkeypatch.setattr(ckpt_io, "atomic_torch_save", counting_save)
    torch.set_num_threads(1)
    train(compose_config([*TINY, "trainer.limit_train_batches=2"], output_dir=tmp_path / "run"))
    assert len(saves) >= 3  # last.ckpt at both epoch ends and best.ckpt at least once
    assert len(calls) == len(saves) and all("step" in c for c in calls)
