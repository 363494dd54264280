"""The final evaluation of a run uses the row's test protocol for val/* as well as test/* (issue 19 item 3), says so
in metrics.json (`protocol`), and fits the rescoring net with the protocol it is applied with."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bapose.training.evaluate import evaluate
from bapose.build import compose_config
from bapose.training.fit import train
from bapose.errors import ConfigError


def _people(results: list) -> list:
    return sorted(results, key=lambda r: (r["image_id"], -r["score"], r["keypoints"]))


def _row(coco_sample: Path) -> list[str]:
    """The COCO W32 paper row (flip test, rescoring, model_selection=last), shrunk to seconds on the 4 real COCO
    sample images: a small net from scratch, 64 px, one epoch of two steps, one CPU process."""
    data = [f"data.root={coco_sample}", "data.train.ann_file=test_coco.json", "data.train.image_dir=.",
            "data.val.ann_file=test_coco.json", "data.val.image_dir=.", "data.input_size=64", "data.batch_size=2",
            "data.num_workers=0", "data.persistent_workers=false", "data.pin_memory=false"]
    return ["experiment=coco_w32_512", "model=bapose_w18s", "model.pretrained=false", "trainer=cpu",
            "trainer.devices=1", "trainer.max_epochs=1", "+trainer.limit_train_batches=2", "logger=[csv]",
            "draw_images=0", "module.warmup_steps=0", "rescore.max_images=4", "rescore.epochs=5",
            # an untrained net has no confident centers: keep the top-30 so there are people to score and rescore
            "codec.center_threshold=-1", *data]


def test_paper_row_reports_val_under_its_test_protocol_as_bapose_eval_does(tmp_path: Path, coco_sample: Path) -> None:
    torch.set_num_threads(1)
    run = tmp_path / "run"
    cfg = compose_config(_row(coco_sample), output_dir=run)
    assert cfg.test.flip is True and cfg.module.val_flip is False  # the row: flip test; validation during fit: none
    train(cfg)
    saved = json.loads((run / "metrics.json").read_text())
    protocol = saved["protocol"]
    assert protocol["val"] == {"flip": True, "scales": [1.0], "rescored": False}
    assert protocol["test"] == {"flip": True, "scales": [1.0], "rescored": False}
    assert protocol["val_rescored"] == {"flip": True, "scales": [1.0], "rescored": True}
    assert protocol["test_rescored"] == {"flip": True, "scales": [1.0], "rescored": True}
    ckpt = saved["evaluated_checkpoint"]
    assert ckpt.endswith("last.ckpt")

    plain = evaluate(compose_config([f"ckpt_path={ckpt}", "test.flip=true", "codec.center_threshold=-1"],
                                    config_name="eval", output_dir=tmp_path / "eval"))
    rescored = evaluate(compose_config([f"ckpt_path={ckpt}", "test.flip=true", "codec.center_threshold=-1",
                                        f"codec.rescore_path={saved['rescore_path']}"], config_name="eval",
                                       output_dir=tmp_path / "eval_rescored"))
    stats = [k.split("/", 1)[1] for k in saved if k.startswith("val/")]
    assert len(stats) >= 10
    for stat in stats:
        assert plain[f"val/{stat}"] == pytest.approx(saved[f"val/{stat}"], abs=1e-6)
        assert rescored[f"val/{stat}"] == pytest.approx(saved[f"val_rescored/{stat}"], abs=1e-6)
    assert plain["protocol"] == {"val": {"flip": True, "scales": [1.0], "rescored": False}}
    assert rescored["protocol"]["val"]["rescored"] is True
    # an untrained net scores ~0 AP on real people: the people themselves show what was measured. The final
    # validation's people are bapose-eval's with the flip test, person by person, and not those without it
    final = _people(json.loads((run / "val_results.json").read_text()))
    assert len(final) > 0 and final == _people(json.loads((tmp_path / "eval" / "results.json").read_text()))
    assert _people(json.loads((run / "val_results_rescored.json").read_text())) \
        == _people(json.loads((tmp_path / "eval_rescored" / "results.json").read_text()))
    evaluate(compose_config([f"ckpt_path={ckpt}", "codec.center_threshold=-1"], config_name="eval",
                            output_dir=tmp_path / "eval_noflip"))
    unflipped = _people(json.loads((tmp_path / "eval_noflip" / "results.json").read_text()))
    assert len(unflipped) == len(final) and unflipped != final


def test_rescoring_fit_under_another_protocol_is_refused_before_fit(tmp_path: Path, coco_sample: Path) -> None:
    for bad in ("rescore.flip=false", "rescore.scales=[0.5,1.0]"):
        with pytest.raises(ConfigError, match="protocol it is applied with"):
            train(compose_config([*_row(coco_sample), bad], output_dir=tmp_path / "bad"))
        assert not (tmp_path / "bad" / "checkpoints").exists()
