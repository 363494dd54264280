"""Metric tables as the console and the log print them."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

__all__ = ["METRIC_ORDER", "format_metrics_table", "metric_order"]


METRIC_ORDER = ("AP", "AP50", "AP75", "APm", "APl", "AP_easy", "AP_medium", "AP_hard", "AR", "AR50", "AR75", "ARm",
                "ARl")


def metric_order(metrics: Iterable[str]) -> list[str]:
    """Metric names in a stable, paper-like order (:data:`METRIC_ORDER`, then the rest sorted)."""
    names = set(metrics)
    return [k for k in METRIC_ORDER if k in names] + sorted(names - set(METRIC_ORDER))


def format_metrics_table(metrics: Mapping[str, float], title: str = "") -> str:
    """A fixed-width two-row table of AP/AR numbers, keys in a stable, paper-like order."""
    keys = metric_order(metrics)
    if not keys:
        return f"{title}: (no metrics)"
    width = max(8, *(len(k) + 1 for k in keys))  # "-1.0000" (COCO: nobody in that range) needs 7 + a space
    head = "".join(f"{k:>{width}}" for k in keys)
    vals = "".join(f"{metrics[k]:>{width}.4f}" if isinstance(metrics[k], float) and math.isfinite(metrics[k])
                   else f"{metrics[k]!s:>{width}}" for k in keys)
    line = "-" * len(head)
    return "\n".join(x for x in (title, line, head, vals, line) if x)
