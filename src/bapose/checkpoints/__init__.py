"""Checkpoint files: atomic writes and safe reads (:mod:`.io`), what a checkpoint says about itself (:mod:`.schema`),
starting a net from another checkpoint's layers (:mod:`.init_from`) and DEKR releases as bapose checkpoints
(:mod:`.convert`)."""

from bapose.checkpoints.io import load_checkpoint_safely
from bapose.checkpoints.schema import CHECKPOINT_KEY, CheckpointInfo

__all__ = ["CHECKPOINT_KEY", "CheckpointInfo", "load_checkpoint_safely"]
