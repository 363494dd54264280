"""Sweep reports: the jobs of one or more sweeps become one table row per configuration and a plot.

``bapose-report`` (``bapose.cli.report``) and ``notebooks/02_ablations.ipynb`` call :func:`sweep_report`::

    report = sweep_report(["outputs/train/multiruns/2026-05-01_12-00-00"], out_dir="reports/dilations")
    print(report.markdown())          # also written: report.md, report.csv, report.png

Where jobs come from (any mix, several at once):

* run folders of ``bapose-train`` (:mod:`~bapose.report.jobs`): a Hydra multirun folder (``<sweep>/<job num>/``), a
  single run folder, or any folder above them, read from the files bapose writes: the swept values from
  ``.hydra/overrides.yaml`` (else ``status.json``), the state from ``status.json`` (finished / failed with the error
  line / running / preempted), the numbers from ``metrics.json`` of a finished job (a resumed run keeps an earlier
  attempt's), the model from ``.hydra/config.yaml``. Whether the sweep logged to W&B or not, and whether wandb is
  installed, changes nothing: W&B's local files are never read;
* a W&B group or sweep on a W&B server (:mod:`~bapose.report.wandb_api`), ``wandb:ENTITY/PROJECT/groups/NAME`` (a
  ``bapose-train -m`` sweep is one group) or ``wandb:ENTITY/PROJECT/sweeps/ID`` (``https://wandb.ai/...`` URLs work
  too), through W&B's public API, ``wandb.Api``.

Columns are the swept keys whose value differs between finished jobs (and only those; keys in ``fold``, the seed,
are folded into mean ± std with n), the metric's split AP / AP50 / AP75 / AR (AP easy / medium / hard when the jobs
have CrowdPose numbers), params and GFLOPs of the configuration's model at its input size (:mod:`~bapose.report.cost`,
counted from the job's config as ``bapose-profile`` does), and the train time (:mod:`~bapose.report.table`; the plot:
:mod:`~bapose.report.plot`). Failed and unfinished jobs are listed with their error line (or their log's last line),
never dropped.
"""

from __future__ import annotations

from bapose.report.jobs import Job
from bapose.report.sweep import find_jobs, sweep_report
from bapose.report.table import Row, SweepReport
from bapose.report.wandb_api import is_wandb_spec

__all__ = ["Job", "Row", "SweepReport", "find_jobs", "is_wandb_spec", "sweep_report"]
