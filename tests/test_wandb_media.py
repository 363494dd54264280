"""The offline W&B run of a training holds the drawn validation images, the final AP table, the resolved config and
(with logger.wandb.log_model) the best checkpoint as an artifact: checked by reading the run's own files with W&B's
own reader (tests/wandb_records.py)."""

from __future__ import annotations

import json
import shutil

import cv2
import pytest
import torch
import wandb

from bapose.build import compose_config, instantiate_list
from bapose.training.fit import train
from bapose.errors import ConfigError
from bapose.report import sweep_report
from wandb_records import WandbRun, the_wandb_run  # tests/: W&B's own reader of the offline run

# the `make train` config (experiment=demo: flip-test validation, 128-px scenes) shrunk to 64 px and a few steps
DEMO_TINY = ["experiment=demo", "data.input_size=64", "data.synthetic.image_size=64", "data.synthetic.num_train=8",
             "data.synthetic.num_val=4", "data.batch_size=2", "data.val_batch_size=2", "data.num_workers=0",
             "data.persistent_workers=false", "trainer.max_epochs=2", "trainer.limit_train_batches=2",
             "trainer.num_sanity_val_steps=0", "module.warmup_steps=0", "draw_images=3", "run_test=true"]


def test_offline_wandb_run_holds_validation_images_final_ap_table_config_and_best_checkpoint(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))  # the artifact staging copies
    cfg = compose_config([*DEMO_TINY, "logger.wandb.log_model=true"], output_dir=tmp_path / "run")
    assert cfg.logger.wandb.offline is True
    metrics = train(cfg)

    # with an artifact logged, wandb-core writes the transaction log out shortly *after* finish() returns (it is
    # complete when the process ends); stopping the service waits for it
    wandb.teardown()
    run = the_wandb_run(tmp_path / "run")
    assert run.exit_codes == [0]

    # drawn predictions at every validation of fit (2 epochs), on the same 3 images each time
    logged = [row for row in run.history if "val/predictions" in row]
    assert [row["trainer/global_step"] for row in logged] == [2, 4]
    assert all(row["val/predictions"]["count"] == 3 for row in logged)
    assert logged[0]["val/predictions"]["captions"] == logged[1]["val/predictions"]["captions"]
    for row in logged:
        for name in row["val/predictions"]["filenames"]:
            image = cv2.imread(str(run.files / name))
            assert image is not None and min(image.shape[:2]) >= 256  # 64-px inputs are drawn at >= 256 px
    assert len(list((run.files / "media" / "images").rglob("*.png"))) == 6

    # the final evaluation's AP table: one row per split, the numbers train() returned
    table_path = run.files / run.summary["final/AP_table"]["path"]
    table = json.loads(table_path.read_text())
    cols = table["columns"]
    assert cols[:4] == ["split", "checkpoint", "flip", "scales"] and cols[4:8] == ["AP", "AP50", "AP75", "APm"]
    rows = {r[0]: dict(zip(cols, r, strict=True)) for r in table["data"]}
    assert set(rows) == {"val", "test"}
    best = metrics["best_model_path"]
    assert rows["val"]["checkpoint"] == best.rsplit("/", 1)[-1] and rows["val"]["flip"] is True
    for split in ("val", "test"):
        for k in ("AP", "AP50", "AR"):
            assert rows[split][k] == pytest.approx(metrics[f"{split}/{k}"])

    # the resolved config (interpolations filled in) and the overrides that made the run
    assert run.config["model"]["num_keypoints"] == 17 and run.config["data"]["input_size"] == 64
    assert run.config["module"]["loss"]["offset_weight"] == 0.1  # the demo experiment's value
    assert "logger.wandb.log_model=true" in run.config["hydra_overrides"]

    # the best checkpoint as a model artifact, logged offline (uploaded by `wandb sync`)
    (model,) = [a for a in run.artifacts if a["type"] == "model"]
    assert set(model["aliases"]) >= {"best"} and model["metadata"]["original_filename"] == best.rsplit("/", 1)[-1]
    (entry,) = model["files"]
    assert entry["path"] == "model.ckpt" and entry["size"] == (tmp_path / "run" / "checkpoints" /
                                                             best.rsplit("/", 1)[-1]).stat().st_size

    # bapose-report reads the run folder bapose wrote (metrics.json), not the W&B run: the same number
    report = sweep_report([tmp_path / "run"], cost=False)
    assert report.rows[0].stats["val/AP"][0] == pytest.approx(metrics["val/AP"]) and not report.problems
    # a W&B log cut short (the process was killed): W&B's reader finds no exit record
    cut = WandbRun(tmp_path / "cut" / run.path.name)
    shutil.copytree(run.path, cut.path)
    cut.log.write_bytes(cut.log.read_bytes()[: cut.log.stat().st_size // 2])
    assert cut.exit_codes == []


def test_wandb_media_callback_is_configured_and_log_model_is_checked(tmp_path):
    cfg = compose_config([], output_dir=tmp_path)
    assert cfg.callbacks.wandb_media.num_images == cfg.draw_images == 4
    # the factory (issue 20: no logger at all with WANDB_MODE=disabled) builds bapose's WandbLogger
    assert cfg.logger.wandb._target_ == "bapose.utils.wandb.wandb_logger"
    from bapose.utils.wandb import WandbLogger
    assert [type(lg) for lg in instantiate_list(cfg.logger) if isinstance(lg, WandbLogger)] == [WandbLogger]
    bad = compose_config(["logger.wandb.log_model=all"], output_dir=tmp_path)
    with pytest.raises(ConfigError, match="logger.wandb.log_model"):
        instantiate_list(bad.logger)
