"""Swept values and metric numbers as the report compares, orders and prints them (shared by every report file)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

DEFAULT = "(default)"  # shown for a swept key a job did not set


def fmt_value(v: Any) -> str:
    """A swept value as the table shows it: lists ``[1, 6, 12, 18]``, floats in short form, None as ``null``."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(fmt_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {fmt_value(x)}" for k, x in v.items()) + "}"
    return str(v)


def ident(v: Any) -> str:
    """A value's identity for grouping (``[1, 6]`` from an override and from a config are the same)."""
    return json.dumps(v, sort_keys=True, default=str)


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def order(v: Any) -> tuple[int, Any]:
    """Sort order of a swept value: the default first, then numbers by value, then the rest by their text."""
    if v == DEFAULT:
        return (0, "")
    if is_number(v):
        return (1, float(v))
    return (2, fmt_value(v))


def natural(name: str) -> list[Any]:
    """``job 10`` after ``job 9``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{"model.decoder.dilations": [...], ...}``."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def numeric_metrics(d: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of a metrics.json / W&B summary (paths, protocol dicts and NaN left out)."""
    return {k: float(v) for k, v in d.items() if is_number(v)}


def short(key: str) -> str:
    """The last part of a dotted key (``input_size`` of ``data.input_size``)."""
    return key.split(".")[-1] if key else key
