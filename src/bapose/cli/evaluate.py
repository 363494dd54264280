"""``bapose-eval``: score a checkpoint on a dataset split; the thin Hydra main over ``conf/eval.yaml`` and
:func:`bapose.training.evaluate.evaluate`::

    bapose-eval ckpt_path=outputs/train/runs/<stamp>/checkpoints/best.ckpt
    bapose-eval ckpt_path=... data=crowdpose data.root=/data/crowdpose split=test test.flip=true test.scales=[0.5,1,2]
    bapose-eval ckpt_path=... trainer=ddp trainer.devices=4          # results gathered over ranks, scored once
"""

from __future__ import annotations

import bapose.utils.resolvers  # noqa: F401 - registers the ${bapose.*} resolvers before Hydra composes
from bapose.training.evaluate import evaluate
from bapose.utils.entry import hydra_entry

# the console script `bapose-eval`
main = hydra_entry("eval", "bapose-eval", evaluate)

if __name__ == "__main__":
    main()
