"""Callbacks the multi-process tests load into ``bapose-train`` runs (``+callbacks.<name>._target_=ddp_spies.X``, with
``tests/`` on ``PYTHONPATH``): they write what each rank saw into the run folder, so the test can compare ranks."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import lightning as L


class _RecordingTransform:
    """Wraps a ``TrainTransform``: every draw goes to ``<out>/draws_rank<r>.jsonl`` (one line per sample; works in
    DataLoader workers too, each appends its own lines)."""

    def __init__(self, transform, path: Path, rank: int) -> None:
        self.transform, self.path, self.rank = transform, path, rank

    def __call__(self, *args, **kwargs):
        out = self.transform(*args, **kwargs)
        p = out["params"]
        with open(self.path, "a") as f:
            f.write(json.dumps({"rank": self.rank, "pid": os.getpid(), "scale": p.scale, "rotation": p.rotation,
                                "shift": list(p.shift), "flip": p.flip}) + "\n")
        return out


class RecordDraws(L.Callback):
    """Records the augmentation parameters every rank draws for its training samples."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def setup(self, trainer, pl_module, stage):
        ds = getattr(trainer.datamodule, "train_dataset", None)
        if stage == "fit" and ds is not None and not isinstance(ds.transform, _RecordingTransform):
            self.out_dir.mkdir(parents=True, exist_ok=True)
            path = self.out_dir / f"draws_rank{trainer.global_rank}.jsonl"
            ds.transform = _RecordingTransform(ds.transform, path, trainer.global_rank)


class StepFile(L.Callback):
    """Writes the global step to ``path`` after every training batch (a test outside the job watches it); after
    step ``slow_after`` each batch takes ``slow_s`` seconds longer, so the watcher acts before the run goes on (a
    tiny run on an idle machine finishes an epoch in well under a second)."""

    def __init__(self, path: str, slow_after: int | None = None, slow_s: float = 0.0) -> None:
        self.path = Path(path)
        self.slow_after, self.slow_s = slow_after, float(slow_s)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.is_global_zero:
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(str(trainer.global_step))
            os.replace(tmp, self.path)
        if self.slow_after is not None and trainer.global_step > self.slow_after:
            time.sleep(self.slow_s)


def _from_logged_metric_sync() -> bool:
    """The caller is Lightning reducing a ``self.log(..., sync_dist=True)`` value (``_ResultMetric.compute`` in
    ``logger_connector/result.py``), not another collective of the epoch end (a ModelCheckpoint's decisions)."""
    frame = sys._getframe(2)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "compute" and Path(code.co_filename).parts[-2:] == ("logger_connector", "result.py"):
            return True
        frame = frame.f_back
    return False


class _CollectiveSpy(L.Callback):
    """Counts the calls of torch.distributed collectives between a training batch's start and end, and those of
    each training epoch's end: after its last batch, in the training stage (validation, which runs in between, is
    not counted), until the next epoch starts or training ends. Epoch-level logs (``on_epoch=True,
    sync_dist=True``) are reduced there: Lightning computes them at the first read after ``epoch_end_reached``;
    ``all_reduce_logs`` counts the all-reduces of that reduction alone (Lightning's checkpoint callbacks make others
    at the same time)."""

    NAMES = ("all_reduce", "broadcast", "all_gather", "barrier", "broadcast_object_list", "all_gather_object")

    def __init__(self, out: Path) -> None:
        import torch.distributed as dist

        self.out, self.counts, self.rows = out, dict.fromkeys(self.NAMES, 0), []
        self.epoch_ends: list[dict] = []  # one row per training epoch: the collectives of its end
        self._trainer, self._at_epoch_end = None, False
        for name in self.NAMES:
            real = getattr(dist, name)

            def counted(*args, _real=real, _name=name, **kwargs):
                self.counts[_name] += 1
                if self._at_epoch_end and self._trainer is not None and self._trainer.training:
                    self.epoch_ends[-1][_name] += 1
                    if _name == "all_reduce" and _from_logged_metric_sync():
                        self.epoch_ends[-1]["all_reduce_logs"] += 1
                return _real(*args, **kwargs)

            setattr(dist, name, counted)

    def on_train_epoch_start(self, trainer, pl_module):
        self._trainer, self._at_epoch_end = trainer, False
        self.epoch_ends.append({"epoch": trainer.current_epoch, **dict.fromkeys(self.NAMES, 0), "all_reduce_logs": 0})

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.before = dict(self.counts), trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        counts, step = self.before
        self.rows.append({"batch": batch_idx, "stepped": trainer.global_step != step,
                          **{k: self.counts[k] - counts[k] for k in self.NAMES}})
        self._at_epoch_end = batch_idx + 1 >= trainer.num_training_batches

    def on_train_end(self, trainer, pl_module):
        self._at_epoch_end = False
        (self.out / f"collectives_rank{trainer.global_rank}.json").write_text(json.dumps(self.rows))
        (self.out / f"collectives_epoch_end_rank{trainer.global_rank}.json").write_text(json.dumps(self.epoch_ends))


def count_collectives(out_dir: str) -> None:
    """One rank of a 2-process gloo fit (RANK / WORLD_SIZE / MASTER_* set by the test), 2 micro-batches per optimizer
    step, the real train config's callbacks; writes each training batch's collective counts."""
    import torch
    from hydra.utils import instantiate

    from bapose.build import build_datamodule, build_module, compose_config, instantiate_list

    torch.set_num_threads(1)
    cfg = compose_config(["data.input_size=64", "data.synthetic.num_train=32", "data.synthetic.num_val=2",
                          "data.synthetic.image_size=64", "data.batch_size=2", "data.val_batch_size=2",
                          "data.num_workers=0", "data.pin_memory=false", "logger=[csv]", "model=dekr_w18s",
                          "trainer=ddp_cpu", "trainer.devices=2", "trainer.max_epochs=1",
                          "trainer.accumulate_grad_batches=2", "trainer.log_every_n_steps=1",
                          "trainer.limit_val_batches=1", "trainer.num_sanity_val_steps=0"],
                         output_dir=Path(out_dir) / "run")
    L.seed_everything(0, workers=True)
    dm = build_datamodule(cfg)
    module = build_module(cfg, codec=dm.codec)
    callbacks = [*instantiate_list(cfg.callbacks), _CollectiveSpy(Path(out_dir))]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=instantiate_list(cfg.logger))
    trainer.fit(module, datamodule=dm)
