"""``bapose-train``: fit a BAPose / DEKR model, evaluate the selected checkpoint, print the AP table.

The thin Hydra main over ``conf/train.yaml`` and :func:`bapose.training.fit.train`::

    bapose-train experiment=coco_w32_512 data.root=/data/coco
    bapose-train -m model.decoder.dilations='[1,6,12,18]','[1,3,6,9]' data.input_size=512,640
    bapose-train trainer=ddp trainer.devices=8
    bapose-train run_id=w32-a                                                  # started again: resumes that run
    bapose-train run_id=w32-a trainer.max_epochs=200                           # ... and trains it for longer
    bapose-train ckpt_path=last hydra.run.dir=outputs/train/runs/<stamp>     # resume that run

Resuming, the global batch / LR rule, DDP jobs inside a multirun and failed sweep jobs: ``bapose.training.runs``.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

import bapose.utils.resolvers  # noqa: F401 - registers the ${bapose.*} resolvers before Hydra composes
from bapose.paths import config_dir
from bapose.training import runs
from bapose.training.fit import train


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
