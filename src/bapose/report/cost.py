"""The params (M) and GFLOPs columns: each configuration's model counted from its job's config, as ``bapose-profile``
counts it (meta device: shapes only, no weights, no memory; multiply-adds, deformable convs as the convs they are)."""

from __future__ import annotations

from typing import Any

from bapose.report.jobs import Job
from bapose.report.values import ident

__all__ = ["job_cost"]

_CACHE: dict[str, tuple[float, float] | None] = {}


def _model_and_size(job: Job) -> tuple[dict[str, Any], Any] | None:
    """The job's resolved model config and ``data.input_size``, or None."""
    cfg = job.full_config()
    if not cfg or not isinstance(cfg.get("model"), dict):
        return None
    from omegaconf import OmegaConf

    from bapose.utils.resolvers import register_resolvers

    register_resolvers()  # the ${bapose.*} resolvers a config may use
    try:  # a run folder's config is unresolved (num_keypoints: ${data.num_keypoints}); W&B's is resolved already
        node = OmegaConf.create({"model": cfg["model"], "data": cfg.get("data") or {}})
        return OmegaConf.to_container(node.model, resolve=True), OmegaConf.select(node, "data.input_size")
    except Exception:  # noqa: BLE001 - an interpolation into a part of the config we did not keep
        return None


def job_cost(job: Job) -> tuple[float, float] | None:
    """``(params in M, GFLOPs)`` of the job's model at its ``data.input_size``, or None when its config does not say
    (or this version cannot build that model: the columns show ``-``). Counted once per distinct configuration."""
    found = _model_and_size(job)
    if found is None or "_target_" not in found[0]:
        return None
    key = ident(list(found))
    if key not in _CACHE:
        from bapose.models import config_cost

        try:  # the architecture only: no hub weights, no init_from checkpoint to read (it may be gone)
            cost = config_cost(*found)
            _CACHE[key] = cost.params_m, cost.gmacs
        except Exception:  # noqa: BLE001 - a model this version cannot build: the column shows '-'
            _CACHE[key] = None
    return _CACHE[key]
