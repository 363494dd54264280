"""Callbacks the multi-process tests load into ``bapose-train`` runs (``+callbacks.<name>._target_=ddp_spies.X``, with
``tests/`` on ``PYTHONPATH``): they write what each rank saw into the run folder, so the test can compare ranks."""

from __future__ import annotations

import json
import os
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
