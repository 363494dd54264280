"""Score a checkpoint on a dataset split (COCO AP, or CrowdPose AP easy/medium/hard): ``evaluate(cfg)``, what
``bapose-eval`` runs (:mod:`bapose.cli.evaluate`)::

    bapose-eval ckpt_path=outputs/train/runs/<stamp>/checkpoints/best.ckpt
    bapose-eval ckpt_path=... data=crowdpose data.root=/data/crowdpose split=test test.flip=true test.scales=[0.5,1,2]
    bapose-eval ckpt_path=... trainer=ddp trainer.devices=4          # results gathered over ranks, scored once

The checkpoint is loaded with ``torch.load(weights_only=True)``; the net is rebuilt from the model config the
checkpoint carries, and a checkpoint of another architecture or joint count fails naming the keys/shapes that differ.
Without ``data=`` the dataset is the one the checkpoint stores (``bapose.data``: files, joint set, rule set, input
size; ``data.<key>=`` overrides change single keys, e.g. ``data.root``); with ``data=...`` its joint set must be the
checkpoint's, and the input size stays the checkpoint's unless ``data.input_size=`` is given.
Writes ``metrics.json`` and the COCO-format ``results.json`` into the run folder.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from bapose.io import write_json
from bapose.utils.run_files import METRICS_FILE
from bapose.utils.tables import format_metrics_table
from bapose.build import build_datamodule
from bapose.checkpoints.io import load_checkpoint_safely
from bapose.checkpoints.schema import CheckpointInfo
from bapose.errors import CheckpointError, ConfigError
from bapose.loading import load_model
from bapose.training.callbacks import progress_bar
from bapose.training.module import BAPoseModule

log = logging.getLogger("bapose")


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Score ``cfg.ckpt_path`` on ``cfg.split`` of ``cfg.data``; returns ``{"<split>/AP": ..., ...}``."""
    if cfg.get("seed") is not None:
        L.seed_everything(int(cfg.seed), workers=True)
    split = cfg.split
    if split not in ("val", "test"):
        raise ConfigError(f"field 'split' is {split!r}; expected 'val' or 'test'")
    path = Path(str(cfg.ckpt_path))
    checkpoint = load_checkpoint_safely(path)  # read once: its dataset entry here, its weights in load_model
    info = CheckpointInfo.of(checkpoint, path)
    cfg = with_eval_data(cfg, info, path)
    datamodule = build_datamodule(cfg)
    meta = datamodule.meta
    # the net the checkpoint was trained as (its own model config unless model_from_checkpoint=false), checked
    # against this dataset's joint set (another one is refused, naming both); the datamodule's codec decodes, with the checkpoint's stored decode knobs
    loaded = load_model(path, model=cfg.get("model"), model_from_checkpoint=bool(cfg.model_from_checkpoint),
                        meta=meta, input_size=datamodule.input_size, prefer_ema=bool(cfg.prefer_ema),
                        device="cpu", checkpoint=checkpoint)
    net, stored = loaded.net, loaded.info
    if stored.input_size not in (None, datamodule.input_size):
        log.warning("checkpoint '%s' was trained at input size %s; evaluating at data.input_size=%s", path,
                    stored.input_size, datamodule.input_size)

    if getattr(datamodule, "eval_resize", "pad") is None and stored.eval_resize:
        # data.eval_resize=null: resize as the checkpoint was evaluated (a converted DEKR checkpoint: DEKR's warp)
        datamodule.eval_resize = stored.eval_resize
        log.info("resizing %s images as checkpoint '%s' says: eval_resize=%s", split, path, stored.eval_resize)
    flip, scales = bool(cfg.test.flip), [float(s) for s in cfg.test.scales]
    codec = datamodule.codec.with_checkpoint_defaults(stored.codec)
    module = BAPoseModule(net, codec=codec, val_flip=flip, val_scales=scales, test_flip=flip,
                          test_scales=scales, model_config=stored.model)
    module.collect_results = True
    # the training run's progress bar rule (a few lines per split in a SLURM log, not one per image)
    bars = [progress_bar()] if cfg.trainer.get("enable_progress_bar", True) is not False else []
    trainer: L.Trainer = instantiate(cfg.trainer, logger=False, callbacks=bars, enable_checkpointing=False)
    if split == "val":
        trainer.validate(module, datamodule=datamodule, verbose=False)
    else:
        trainer.test(module, datamodule=datamodule, verbose=False)

    stats = module.last_metrics[split]
    metrics: dict[str, Any] = {f"{split}/{k}": v for k, v in stats.items()}
    metrics.update({"ckpt_path": str(path), "split": split, "flip": flip, "scales": scales,
                    "protocol": {split: {**module.protocol(split), "rescored": codec.rescore_path is not None}},
                    "checkpoint_epoch": loaded.epoch, "checkpoint_global_step": loaded.global_step})
    if trainer.is_global_zero:
        out_dir = Path(cfg.paths.output_dir)
        write_json(out_dir / "results.json", module.results)
        write_json(out_dir / METRICS_FILE, metrics)
        print(format_metrics_table(stats, f"{split} AP of {path} (flip={flip}, scales={scales}, "
                                               f"{len(module.results)} people)"), flush=True)
        print(f"run folder: {out_dir} (results.json, metrics.json)", flush=True)
    return metrics


def _command_line() -> list[str]:
    """This run's command-line overrides (empty outside Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def _merge_given(stored: Any, given: Any) -> Any:
    """``stored`` with every non-null value of ``given`` on top (dicts merged key by key). A ``given`` dict whose
    values are all null (``conf/data/checkpoint.yaml``'s ``synthetic:``, ``test:``) leaves ``stored`` as it is, also
    when ``stored`` is null (a COCO checkpoint has no ``synthetic`` options and must not get an all-null dict)."""
    if isinstance(given, dict):
        out = dict(stored) if isinstance(stored, dict) else {}
        for key, value in given.items():
            merged = _merge_given(out.get(key), value)
            if merged is not None:
                out[key] = merged
        return out if out or isinstance(stored, dict) else stored
    return given if given is not None else stored


def with_eval_data(cfg: DictConfig, info: CheckpointInfo | Mapping[str, Any], path: Path) -> DictConfig:
    """``cfg`` with ``cfg.data`` the dataset to score on: the checkpoint's (``data: checkpoint``, the default: its
    stored ``bapose.data`` with the non-null keys of ``cfg.data`` on top) or the ``data=`` group given; the input
    size the checkpoint's unless ``data.input_size=`` is on the command line.

    Raises:
        CheckpointError: the default without a stored dataset (a checkpoint written before bapose kept it), naming
            which ``data=`` to give.
    """
    info = info if isinstance(info, CheckpointInfo) else CheckpointInfo.from_dict(info, path)
    cfg = cfg.copy()
    data = cfg.get("data")
    from_checkpoint = data is None or bool(data.get("from_checkpoint", False))
    stored_size = info.input_size
    if from_checkpoint:
        spec = info.data
        if not isinstance(spec, dict):
            name = info.meta
            group = name if name in ("coco", "crowdpose") else "custom"
            raise CheckpointError(
                f"checkpoint '{path}' does not store the dataset it was trained on (field 'bapose.data'; written "
                f"before bapose kept it); give one with joint set {info.describe_joint_set()}: data={group} "
                f"data.root=<dataset folder> (or data=synthetic for a checkpoint of the generated demo set)")
        given = OmegaConf.to_container(data, resolve=True) if data is not None else {}
        given.pop("from_checkpoint", None)
        node = _merge_given(spec, given)
        log.info("bapose-eval: dataset '%s' from checkpoint '%s' (%s rules, input size %s)", node.get("name"),
                 path, node.get("eval_mode"), node.get("input_size"))
    else:
        node = OmegaConf.to_container(data, resolve=True)
        told = any(o.split("=", 1)[0].lstrip("+~") == "data.input_size" for o in _command_line())
        if isinstance(stored_size, int) and not told and node.get("input_size") != stored_size:
            log.info("bapose-eval: input size %s, the checkpoint's (data.input_size=%s to change it)", stored_size,
                     node.get("input_size"))
            node["input_size"] = stored_size
    from omegaconf import open_dict

    with open_dict(cfg):
        cfg.data = OmegaConf.create(node)
    return cfg
