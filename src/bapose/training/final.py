"""The final evaluation of a ``bapose-train`` run: the selected weights scored under the row's test protocol.

``val/*`` and ``test/*`` (and, with the rescoring stage, ``val_rescored/*`` and ``test_rescored/*``) are all
measured with the test's flip and scales (``test.flip`` / ``test.scales``), as ``bapose-eval`` measures them;
validation during fit may stay cheap (``module.val_flip`` / ``val_scales``). ``metrics.json`` says so under
``protocol``: for each group ``{"flip", "scales", "rescored"}``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L

from bapose.training.rescoring import RescoreOptions, run_rescoring_stage


def evaluate_selected(trainer: L.Trainer, module: Any, datamodule: Any, ckpt_path: str | None, run_test: bool,
                      rescore: RescoreOptions, out_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Validate (and test) the weights of ``ckpt_path`` (``None``: the current ones) on the full splits under the
    test protocol, then run the rescoring stage when ``rescore.enabled``.

    Returns:
        ``(metrics, val_results)``: ``val/<stat>``, ``test/<stat>``, the rescoring stage's keys and ``protocol``;
        the COCO-format people of the plain validation (``val_results.json``).
    """
    metrics: dict[str, Any] = {}
    module.collect_results = True  # keep the COCO-format people of the final evaluation (val_results.json)
    with module.final_evaluation():
        trainer.validate(module, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)
        val_results = module.results
        metrics.update({f"val/{k}": v for k, v in module.last_metrics.get("val", {}).items()})
        splits = ["val"]
        if run_test:
            trainer.test(module, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)
            metrics.update({f"test/{k}": v for k, v in module.last_metrics.get("test", {}).items()})
            splits.append("test")
        protocol = {split: {**module.protocol(split), "rescored": False} for split in splits}
        if rescore.enabled:  # DEKR's scoring net, trained on this run's training-set predictions
            metrics.update(run_rescoring_stage(rescore, trainer, module, datamodule, ckpt_path, out_dir, run_test))
            protocol.update({f"{split}_rescored": {**module.protocol(split), "rescored": True} for split in splits
                             if any(k.startswith(f"{split}_rescored/") for k in metrics)})
    metrics["protocol"] = protocol
    return metrics, val_results


def protocol_title(protocol: dict[str, Any], split: str) -> str:
    """``flip=..., scales=[...]`` of ``split`` in a ``protocol`` entry, for table titles."""
    p = protocol.get(split, {})
    return f"flip={p.get('flip')}, scales={p.get('scales')}"
