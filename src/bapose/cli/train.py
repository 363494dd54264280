"""``bapose-train``: fit a BAPose / DEKR model, evaluate the best checkpoint, print the AP table.

``train(cfg)`` is a plain function (tests and notebooks call it with a composed config); ``main()`` is the thin Hydra
entry point over ``conf/train.yaml``::

    bapose-train experiment=coco_w32_512 data.root=/data/coco
    bapose-train -m model.decoder.dilations='[1,6,12,18]','[1,3,6,9]' data.input_size=512,640
    bapose-train trainer=ddp trainer.devices=8
    bapose-train run_id=w32-a                                                  # started again: resumes that run
    bapose-train run_id=w32-a trainer.max_epochs=200                           # ... and trains it for longer
    bapose-train ckpt_path=last hydra.run.dir=outputs/train/runs/<stamp>     # resume that run

Resuming, the global batch / LR rule, DDP jobs inside a multirun and failed sweep jobs: ``bapose.training.runs``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import numpy as np
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import bapose.utils.logging as blog  # registers the ${bapose.*} resolvers before Hydra composes
from bapose.errors import BAPoseError, ConfigError
from bapose.paths import config_dir
from bapose.training import preemption, resume, runs
from bapose.training.runs import resolve_ckpt_path  # noqa: F401 - public here since 0.1 (tests, notebooks)
from bapose.training.final import evaluate_selected, protocol_title
from bapose.training.rescoring import RescoreOptions, check_protocol, rescored_tables
from bapose.training.selection import check_selection_rule, select_checkpoint, selection_metrics

log = logging.getLogger("bapose")


def compose_config(overrides: list[str] | tuple[str, ...] = (), config_name: str = "train",
                   output_dir: str | Path | None = None) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` as ``bapose-train`` would (for tests, notebooks and scripts).

    The Hydra runtime config is installed too (``${hydra:...}`` interpolations resolve); ``output_dir`` replaces
    ``paths.output_dir`` (Hydra only creates run folders in ``main``).
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
    HydraConfig().set_config(cfg)
    if output_dir is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
    return cfg


def instantiate_checked(node: Any, *args: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` that lets a bapose error of a constructor through as itself.

    Hydra wraps whatever a ``_target_`` raises in an ``InstantiationException`` (the message becomes the repr of the
    original plus ``full_key``): a ``ConfigError`` naming the field and what was expected would reach the user as
    Hydra's error, and ``except ConfigError`` would miss it.
    """
    try:
        return instantiate(node, *args, **kwargs)
    except InstantiationException as e:
        cause: BaseException | None = e.__cause__
        while cause is not None and not isinstance(cause, BAPoseError):
            cause = cause.__cause__
        if cause is None:
            raise
        raise cause from None


def instantiate_list(cfg: DictConfig | None) -> list[Any]:
    """Build every ``_target_`` node of a ``{name: node}`` group (callbacks, loggers); ``None`` / empty gives ``[]``.
    A factory that returns ``None`` (the W&B logger with ``WANDB_MODE=disabled``) contributes nothing."""
    if not cfg:
        return []
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"expected a mapping of {{name: {{_target_: ...}}}}, got {type(cfg).__name__}")
    built = [instantiate_checked(node) for node in cfg.values() if isinstance(node, DictConfig) and "_target_" in node]
    return [obj for obj in built if obj is not None]


def build_datamodule(cfg: DictConfig) -> L.LightningDataModule:
    """The datamodule of ``cfg.data``, given the ``codec`` group's kwargs (it builds the one codec instance that
    the dataset encodes with and the module decodes with)."""
    codec = OmegaConf.to_container(cfg.codec, resolve=True) if cfg.get("codec") is not None else None
    datamodule = instantiate_checked(cfg.data, codec=codec)
    if cfg.data.get("num_keypoints", 0) is None:
        # K read from the dataset's json (data.num_keypoints: null): the model config reads ${data.num_keypoints}
        from omegaconf import open_dict

        with open_dict(cfg):
            cfg.data.num_keypoints = datamodule.meta.num_keypoints
    return datamodule


def build_module(cfg: DictConfig, codec: Any, **overrides: Any) -> L.LightningModule:
    """Instantiate the net from ``cfg.model`` and wrap it in ``cfg.module`` (no data is touched)."""
    net = instantiate_checked(cfg.model)
    # objects go in through a partial: Hydra would try to turn a dataclass kwarg (the codec) into a config node;
    # the optimizer node loses bapose's `scale_lr` key (applied by runs.scale_lr_to_global_batch)
    module = instantiate_checked(runs.module_config(cfg.module), _partial_=True)(net=net, codec=codec, **overrides)
    # stored in every checkpoint so bapose-eval rebuilds exactly this net
    module.model_config = OmegaConf.to_container(cfg.model, resolve=True)
    return module


def log_config(loggers: list[Any], cfg: DictConfig) -> None:
    """Send the resolved run config to every logger (this also starts the W&B run, even under fast_dev_run)."""
    # key by key: the `hydra` node holds values (job.num, ...) that only exist inside a multirun job
    plain = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
             for k, v in cfg.items() if k != "hydra"}
    for lg in loggers:
        lg.log_hyperparams(plain)


def save_prediction_image(module: Any, dataset: Any, path: Path, count: int) -> Path | None:
    """Draw the module's predictions on the first ``count`` validation images and save one tiled PNG."""
    import cv2

    from bapose.training.callbacks import draw_predictions
    from bapose.vis import tile_images

    drawn = draw_predictions(module, dataset, count)
    if not drawn:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(tile_images([im for _, im in drawn]), cv2.COLOR_RGB2BGR))
    return path


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, evaluate the best checkpoint on val (and test), write ``metrics.json`` and ``val_predictions.png``.

    Returns:
        ``{"val/AP": ..., ..., "test/AP": ..., "best_model_path": ..., "epoch": ..., "global_step": ...}``.
    """
    t0 = time.perf_counter()
    if cfg.get("seed") is not None:
        L.seed_everything(int(cfg.seed), workers=True)
    out_dir = Path(cfg.paths.output_dir)
    # the final-evaluation protocol is checked before fit: a typo must not cost a training run
    selection_rule = check_selection_rule(cfg.get("model_selection") or "best")
    rescore = RescoreOptions.from_config(cfg.get("rescore"))

    datamodule = build_datamodule(cfg)
    module = build_module(cfg, codec=datamodule.codec)
    check_protocol(rescore, module)  # the rescoring net is fit with the protocol it is applied with
    # the run folder's identity (run.json): a restart with another training config stops here, a finished run
    # says so and keeps its results (nothing is written before the config itself was found valid)
    finished = resume.begin_run(cfg)
    if finished is not None:
        return finished
    callbacks = instantiate_list(cfg.get("callbacks"))
    loggers = instantiate_list(cfg.get("logger"))
    trainer: L.Trainer = instantiate_checked(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    metrics: dict[str, Any] = {}
    try:
        log_config(loggers, cfg)
        # trainer checks, global batch / LR rule, the checkpoint to resume from (ckpt_path=auto: this folder's last)
        ckpt_path = runs.prepare_fit(cfg, trainer, module, datamodule, loggers)
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)

        # model_selection: the best val/AP checkpoint, or the last epoch (the paper rows, as DEKR reports)
        selection = select_checkpoint(trainer, selection_rule)
        best = selection.path
        if best is None:
            log.warning("no %s checkpoint (fast_dev_run, or no validation ran): evaluating the current weights",
                        selection.rule)
        # what the selected checkpoint holds, on the full validation set (and test), under the row's test protocol
        evaluated, val_results = evaluate_selected(trainer, module, datamodule, best, bool(cfg.get("run_test")),
                                                   rescore, out_dir)
        metrics.update(evaluated)
        metrics.update({"best_model_path": best or "", "epoch": int(trainer.current_epoch),
                        "global_step": int(trainer.global_step), "nonfinite_steps": int(module.nonfinite_steps),
                        **selection_metrics(selection)})
        metrics["train_seconds"] = round(time.perf_counter() - t0, 1)

        if trainer.is_global_zero:
            for split in ("val", "test"):
                if split in module.last_metrics and (split == "val" or cfg.get("run_test")):
                    title = f"{split} AP ({Path(best).name if best else 'final weights'}, " \
                            f"{protocol_title(metrics['protocol'], split)})"
                    print(blog.format_metrics_table(module.last_metrics[split], title), flush=True)
            for table in rescored_tables(metrics):
                print(table, flush=True)
            blog.write_json(out_dir / "metrics.json", metrics)
            blog.write_json(out_dir / "val_results.json", val_results)
            png = save_prediction_image(module, getattr(datamodule, "val_dataset", None),
                                        out_dir / "val_predictions.png", int(cfg.get("draw_images", 0) or 0))
            print(f"run folder: {out_dir}" + (f" (predictions drawn in {png.name})" if png else ""), flush=True)
            resume.finish_run(out_dir, trainer.current_epoch, trainer.global_step)
    except BaseException as err:
        stop = preemption.preempted()  # stopped at a signal for a requeue / restart: W&B shows it preempted
        blog.finish_loggers(loggers, failed=stop is None, preempted=stop[0] if stop else None)
        if stop is not None and isinstance(err, SystemExit) and not isinstance(err, blog.RunPreempted):
            code = err.code if isinstance(err.code, int) and err.code != 0 else 128 + stop[1]
            raise blog.RunPreempted(stop[0], code) from err
        raise
    blog.finish_loggers(loggers)
    return metrics


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    """The Hydra task of ``bapose-train``: one run, or one job of a multirun; returns ``cfg.optimized_metric`` for
    sweepers (Optuna).

    A bapose error (bad data, config or checkpoint; a diverged run) ends a single run with its one-line message, not
    a traceback (``HYDRA_FULL_ERROR=1`` keeps the traceback); in a multirun the failed job is recorded in its
    ``status.json`` and the sweep goes on (``bapose.training.runs.run_job``).
    """
    return runs.run_job(cfg, train, prog="bapose-train", module="bapose.cli.train", task_name="train")


def main() -> None:
    """Console entry point ``bapose-train``; after a multirun the exit status is the number of failed jobs."""
    hydra_main()
    runs.exit_after_sweep()


if __name__ == "__main__":
    main()
