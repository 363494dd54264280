"""Every config composes; every paper experiment instantiates its net and module (no data, no downloads)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from bapose.build import build_module, compose_config
from bapose.codecs import BAPoseCodec
from bapose.paths import config_dir
from bapose.training import BAPoseModule
from bapose.utils import resolvers

EXPERIMENTS = sorted(p.stem for p in (config_dir() / "experiment").glob("*.yaml"))
PAPER_ROWS = {"coco_w32_512", "coco_w48_640", "crowdpose_w32_512", "crowdpose_w48_640", "coco_dekr_w32_512",
              "coco_dekr_w48_640", "crowdpose_dekr_w32_512", "crowdpose_dekr_w48_640"}


def test_every_paper_row_has_an_experiment():
    assert PAPER_ROWS | {"demo"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_and_instantiates(name, tmp_path):
    torch.set_num_threads(1)
    cfg = compose_config([f"experiment={name}", "model.pretrained=false"], output_dir=tmp_path)
    size = cfg.data.input_size
    if name in PAPER_ROWS:
        dataset, *rest = name.split("_")
        width, paper_size = rest[-2], int(rest[-1])
        coco = dataset == "coco"
        assert size == paper_size and cfg.data.num_keypoints == (17 if coco else 14)
        assert cfg.model.backbone == f"hrnet_{width}" and (cfg.model.decoder is None) == ("dekr" in name)
        # BAPose §5.2's schedule on every row (issue 19 changed the CrowdPose rows from DEKR's 300 / 200, 260)
        assert cfg.trainer.max_epochs == 140
        assert list(cfg.scheduler.milestones) == [90, 120]
        assert cfg.optimizer._target_ == "torch.optim.Adam" and cfg.optimizer.lr == 1e-3
        assert 40 <= cfg.data.batch_size * cfg.trainer.devices <= 80  # DESIGN §4: 40-80 images per step
    # every paper row decodes and encodes with DEKR's rules (codec=dekr; issue 19: the BAPose rows too, so a pair
    # differs in the decoder alone), every other experiment with ours
    codec = BAPoseCodec(**{**OmegaConf.to_container(cfg.codec, resolve=True), "input_size": size})
    assert ((codec.offset_owner, codec.center_collision, codec.nms_rule) == ("smaller", "ignore", "dekr")) \
        == (name in PAPER_ROWS)
    t0 = time.perf_counter()
    module = build_module(cfg, codec=BAPoseCodec(input_size=size))
    assert isinstance(module, BAPoseModule) and module.net.num_keypoints == cfg.data.num_keypoints
    assert module.model_config["backbone"] == cfg.model.backbone
    opt = module.configure_optimizers()
    # a dict (one scheduler), or Lightning's ([optimizer], [scheduler, warm-up]) form with module.warmup_steps
    optimizer = opt["optimizer"] if isinstance(opt, dict) else opt[0][0] if isinstance(opt, tuple) else opt
    group = optimizer.param_groups[0]
    assert group.get("initial_lr", group["lr"]) == cfg.optimizer.lr
    assert group["lr"] == pytest.approx(cfg.optimizer.lr / max(1, cfg.module.warmup_steps))  # warm-up step 0
    if name == "demo":  # the demo must run as configured: one forward at its input size gives the contract shapes
        with torch.no_grad():
            hm, off = module.eval()(torch.zeros(1, 3, size, size, dtype=torch.uint8))
        k = cfg.data.num_keypoints
        assert hm.shape == (1, k + 1, size // 4, size // 4) and off.shape == (1, 2 * k, size // 4, size // 4)
    assert time.perf_counter() - t0 < 60


def test_trainer_presets(tmp_path):
    cpu = compose_config(["trainer=cpu"], output_dir=tmp_path)
    trainer = instantiate(cpu.trainer, logger=False)
    assert trainer.max_epochs == cpu.trainer.max_epochs
    assert type(trainer.strategy.checkpoint_io).__name__ == "AtomicCheckpointIO"
    ddp_cpu = compose_config(["trainer=ddp_cpu"], output_dir=tmp_path)
    trainer = instantiate(ddp_cpu.trainer, logger=False)  # builds the strategy; processes start only in fit
    assert trainer.strategy.process_group_backend == "gloo" and trainer.num_devices == 2
    for preset, precision in (("gpu", "bf16-mixed"), ("ddp", "bf16-mixed")):
        cfg = compose_config([f"trainer={preset}"], output_dir=tmp_path).trainer
        assert cfg.accelerator == "gpu" and cfg.precision == precision
    assert compose_config(["trainer=ddp"], output_dir=tmp_path).trainer.sync_batchnorm is True


def test_loggers_and_callbacks_compose(tmp_path, monkeypatch):
    cfg = compose_config([], output_dir=tmp_path)
    assert set(cfg.logger) == {"csv", "wandb"} and cfg.logger.wandb.log_model is False
    assert cfg.callbacks.model_checkpoint.monitor == "val/AP" and cfg.callbacks.model_checkpoint.mode == "max"
    # last.ckpt is the last_checkpoint callback's one file, rewritten at every epoch end (and every N steps)
    last = cfg.callbacks.last_checkpoint
    assert last.filename == "last" and last.save_top_k == 1 and last.monitor is None and last.save_on_train_epoch_end
    assert compose_config(["logger=[csv]"], output_dir=tmp_path).logger.keys() == {"csv"}


def _wandb_offline_in_a_fresh_process(tmp_path, **env) -> str:
    """``bapose.utils.resolvers.wandb_offline()`` as a new process sees it (W&B caches credentials per process), with
    a home folder of its own: no ~/.netrc, no W&B settings file but the ones the test writes."""
    import subprocess
    import sys

    base = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k != "NETRC"}
    base.update(HOME=str(tmp_path), NETRC=str(tmp_path / "netrc"), WANDB_SILENT="true", **env)
    code = "import bapose.utils.resolvers as b\ntry:\n print(b.wandb_offline())\nexcept Exception as e:\n print(e)"
    proc = subprocess.run([sys.executable, "-c", code], env=base, capture_output=True, text=True, timeout=120)
    return proc.stdout.strip().splitlines()[-1]


def test_wandb_is_offline_unless_logged_in_or_online(tmp_path, monkeypatch):
    # W&B's own credential lookup decides (wandb.login(verify=False, prompt=False)), not a netrc parser of ours
    assert _wandb_offline_in_a_fresh_process(tmp_path) == "True"  # no key anywhere
    key = "0123456789abcdef" * 3  # 48 characters: a key W&B accepts (its own length check)
    (tmp_path / "netrc").write_text(f"machine api.wandb.ai\n  login user\n  password {key}\n")
    assert _wandb_offline_in_a_fresh_process(tmp_path) == "False"  # `wandb login` wrote the key
    assert _wandb_offline_in_a_fresh_process(tmp_path, WANDB_MODE="offline") == "True"
    (tmp_path / "netrc").unlink()
    assert _wandb_offline_in_a_fresh_process(tmp_path, WANDB_API_KEY=key) == "False"
    # a key W&B refuses is a one-line config error, not a run that hangs trying to log in
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password abc\n")
    assert _wandb_offline_in_a_fresh_process(tmp_path).startswith("W&B credentials: API key must have 40+ char")
    assert _wandb_offline_in_a_fresh_process(tmp_path, WANDB_MODE="disabled") == "True"
    monkeypatch.setenv("WANDB_MODE", "online")
    assert resolvers.wandb_offline() is False
    cfg = compose_config([], output_dir=tmp_path)
    assert cfg.logger.wandb.offline is False and cfg.logger.wandb.group is None  # not a multirun
    assert cfg.logger.wandb.resume == "allow"


def test_sweep_and_launcher_presets(tmp_path):
    ws = compose_config(["sweep=widths_sizes"], output_dir=tmp_path)
    assert OmegaConf.to_container(ws.hydra.sweeper.params) == {"model": "bapose_w32,bapose_w48",
                                                               "data.input_size": "512,640"}
    assert str(ws.hydra.mode) == "RunMode.MULTIRUN"
    dil = compose_config(["sweep=dilations"], output_dir=tmp_path)
    assert "[1,6,12,18]" in dil.hydra.sweeper.params["model.decoder.dilations"]
    opt = compose_config(["sweep=optuna"], output_dir=tmp_path)
    assert opt.hydra.sweeper._target_.endswith("OptunaSweeper") and opt.hydra.sweeper.direction == "maximize"
    assert opt.optimized_metric == "val/AP"
    slurm = compose_config(["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"],
                           output_dir=tmp_path)
    launcher = slurm.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    # one SLURM task per GPU: Lightning's SLURMEnvironment maps tasks to DDP ranks
    assert (launcher.nodes, launcher.gpus_per_node, launcher.tasks_per_node) == (2, 4, 4)


@pytest.mark.parametrize("preset", sorted(p.stem for p in (config_dir() / "debug").glob("*.yaml")))
def test_debug_presets_compose(preset, tmp_path):
    cfg = compose_config([f"debug={preset}"], output_dir=tmp_path)
    assert cfg.task_name == "debug" and cfg.data.num_workers == 0 or preset == "profiler"


def test_eval_config_composes(tmp_path):
    cfg = compose_config(["ckpt_path=x.ckpt", "data=crowdpose", "test.flip=true", "test.scales=[0.5,1,2]"],
                         config_name="eval", output_dir=tmp_path)
    assert cfg.test.flip is True and list(cfg.test.scales) == [0.5, 1, 2] and cfg.data.num_keypoints == 14
    assert Path(cfg.paths.output_dir) == tmp_path


def test_cluster_settings_of_every_preset(tmp_path, coco_sample):
    """Issue 20: sanity validation (2 batches) in every trainer preset and experiment; the process-group timeout a
    config value that reaches the DDP strategy; val/test loaders with their own few, never persistent workers."""
    import datetime

    from bapose.build import build_datamodule

    for over in ([f"trainer={t}"] for t in ("cpu", "gpu", "ddp", "ddp_cpu")):
        assert compose_config(over, output_dir=tmp_path).trainer.num_sanity_val_steps == 2, over
    for name in EXPERIMENTS:
        cfg = compose_config([f"experiment={name}", "model.pretrained=false"], output_dir=tmp_path)
        assert cfg.trainer.num_sanity_val_steps == 2, name
    assert instantiate(compose_config(["trainer=cpu"], output_dir=tmp_path).trainer,
                       logger=False).num_sanity_val_steps == 2
    # README "Scaling out" names the one preset that turns it off
    assert compose_config(["debug=limit"], output_dir=tmp_path).trainer.num_sanity_val_steps == 0
    for preset in ("ddp", "ddp_cpu"):  # torch's default, 30 min
        assert instantiate(compose_config([f"trainer={preset}"], output_dir=tmp_path).trainer.strategy.timeout) \
            == datetime.timedelta(minutes=30)
    trainer = instantiate(compose_config(["trainer=ddp_cpu", "trainer.strategy.timeout.minutes=45"],
                                         output_dir=tmp_path).trainer, logger=False)
    assert trainer.strategy._timeout == datetime.timedelta(minutes=45)

    coco = compose_config(["data=coco"], output_dir=tmp_path).data
    assert 0 < coco.val_num_workers <= 2 < coco.num_workers and coco.persistent_workers is False
    dm = build_datamodule(compose_config([
        "data=coco", f"data.root={coco_sample}", "data.input_size=64", "data.train.ann_file=test_coco.json",
        "data.train.image_dir=.", "data.val.ann_file=test_coco.json", "data.val.image_dir=.",
        "data.persistent_workers=true", "data.num_workers=2"], output_dir=tmp_path))
    dm.setup("fit")
    train, val = dm.train_dataloader(), dm.val_dataloader()
    assert (train.num_workers, train.persistent_workers) == (2, True)  # no worker starts until iterated
    assert (val.num_workers, val.persistent_workers) == (coco.val_num_workers, False)
