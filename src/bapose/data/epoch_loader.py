"""The training DataLoader whose data order is a function of (seed, epoch): a run resumed at an epoch end trains on
exactly the batches, in the same order and with the same augmentation draws, as the run that was not interrupted.

A plain ``DataLoader(shuffle=True)`` draws its shuffle and its workers' base seed from torch's global generator when
an epoch's iteration starts; a resumed process has another generator state there (Lightning's checkpoints do not
hold it), so the order and every augmentation after a resume differ from the uninterrupted run's. Here an epoch's
iteration first re-seeds the loader's own ``generator`` from (seed, epoch) — the shuffle (``RandomSampler``) and the
workers' base seed come from it, and Lightning's rank-aware worker seeding (``pl_worker_init_function``) derives
every worker's augmentation stream from that base seed — and sets the epoch of a sampler that has ``set_epoch``
(Lightning's ``DistributedSampler`` under DDP, which shuffles by seed + epoch). Without workers the main process
draws the augmentations from a stream seeded by torch's initial seed (``CocoKeypointDataset``), so torch's global
generator is re-seeded from (seed, epoch) too. The epoch comes from the trainer (its fit loop's processed epochs), so
nothing needs saving: a resumed trainer knows its epoch before the first iteration starts.

What it does not make exact (README "Scaling out"): persistent workers (``data.persistent_workers=true`` keeps the
first epoch's workers and their streams across epochs, a resumed run starts new ones), and a resume in the middle
of an epoch (the epoch's order is the same, but Lightning starts it from its first batch again and stops after the
batches that were left: the batches before the checkpoint are trained twice, the last ones not at all).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed for ``epoch`` of a run seeded with ``seed`` (numpy's ``SeedSequence`` mixing)."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch)]).generate_state(1, np.uint64)[0] >> 1)


class EpochSeededLoader(DataLoader):
    """``DataLoader`` whose iteration for epoch ``e`` is seeded from ``(seed, e)`` (module docstring).

    Args:
        *args, **kwargs: ``DataLoader`` arguments (a ``generator`` is made when none is given).
        epoch_fn: returns the epoch the next iteration serves (the datamodule asks the trainer's fit loop);
            ``None``: 0.
        seed: the run's seed; ``None`` takes ``PL_GLOBAL_SEED`` (set by ``seed_everything``), else 0.
    """

    def __init__(self, *args: Any, epoch_fn: Callable[[], int] | None = None, seed: int | None = None,
                 **kwargs: Any) -> None:
        if kwargs.get("generator") is None:
            kwargs["generator"] = torch.Generator()
        super().__init__(*args, **kwargs)
        self.epoch_fn = epoch_fn
        self.seed = seed

    def __iter__(self) -> Any:
        epoch = int(self.epoch_fn()) if self.epoch_fn is not None else 0
        base = self.seed if self.seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))
        seed = epoch_seed(base, epoch)
        self.generator.manual_seed(seed)
        for sampler in (self.sampler, getattr(self.batch_sampler, "sampler", None)):
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
        if self.num_workers == 0:
            torch.manual_seed(seed)  # the main process draws the augmentations (its stream follows torch's seed)
        return super().__iter__()
