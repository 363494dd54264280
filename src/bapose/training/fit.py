"""Fit a BAPose / DEKR model, evaluate the selected checkpoint under the row's test protocol, write the run's files.

``train(cfg)`` is a plain function over a composed config (``bapose.build.compose_config``); ``bapose-train`` is the
thin Hydra main over it (``bapose.cli.train``). Resuming, the global batch / LR rule, DDP jobs inside a multirun and
failed sweep jobs: :mod:`bapose.training.runs`; a run folder's identity: :mod:`bapose.training.resume`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf

from bapose.io import write_json
from bapose.utils.run_files import METRICS_FILE, RunPreempted, finish_loggers
from bapose.utils.tables import format_metrics_table
from bapose.build import build_datamodule, build_module, instantiate_checked, instantiate_list
from bapose.training import preemption, resume, runs
from bapose.training.final import evaluate_selected, protocol_title
from bapose.training.rescoring import RescoreOptions, check_protocol, rescored_tables
from bapose.training.selection import check_selection_rule, select_checkpoint, selection_metrics

log = logging.getLogger("bapose")

__all__ = ["log_config", "save_prediction_image", "train"]


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
                    print(format_metrics_table(module.last_metrics[split], title), flush=True)
            for table in rescored_tables(metrics):
                print(table, flush=True)
            write_json(out_dir / METRICS_FILE, metrics)
            write_json(out_dir / "val_results.json", val_results)
            png = save_prediction_image(module, getattr(datamodule, "val_dataset", None),
                                        out_dir / "val_predictions.png", int(cfg.draw_images or 0))
            print(f"run folder: {out_dir}" + (f" (predictions drawn in {png.name})" if png else ""), flush=True)
            resume.finish_run(out_dir, trainer.current_epoch, trainer.global_step)
    except BaseException as err:
        stop = preemption.preempted()  # stopped at a signal for a requeue / restart: W&B shows it preempted
        finish_loggers(loggers, failed=stop is None, preempted=stop[0] if stop else None)
        if stop is not None and isinstance(err, SystemExit) and not isinstance(err, RunPreempted):
            code = err.code if isinstance(err.code, int) and err.code != 0 else 128 + stop[1]
            raise RunPreempted(stop[0], code) from err
        raise
    finish_loggers(loggers)
    return metrics
