"""Exceptions that name the file, the field and what was expected.

Every user-facing failure in bapose raises one of these (never a bare traceback deep inside a worker), so callers
and CLIs can print a one-line, actionable message.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class BAPoseError(Exception):
    """Base class of every error bapose raises on purpose."""


class DataError(BAPoseError, ValueError):
    """A dataset, annotation or image is missing or malformed."""


class ConfigError(BAPoseError, ValueError):
    """A configuration value is invalid (unknown key, wrong type, impossible value)."""


class CheckpointError(BAPoseError, RuntimeError):
    """A checkpoint is unreadable, truncated, or belongs to another model."""


def where(file: object = None, field: str | None = None, ann_id: object = None) -> str:
    """Format the location part of an error message: ``file 'x.json', annotation id 7, field 'keypoints'``."""
    parts = []
    if file is not None:
        parts.append(f"file '{file}'")
    if ann_id is not None:
        parts.append(f"annotation id {ann_id}")
    if field is not None:
        parts.append(f"field '{field}'")
    return ", ".join(parts)


def check_unique_ids(file: object, repeated: list) -> None:
    """A DataError naming the annotation ids of ``file`` that appear more than once (the first ten), if any."""
    if repeated:
        shown = sorted(set(repeated), key=str)
        raise DataError(f"{where(file, 'annotations.id')}: annotation id(s) {shown[:10]}"
                        f"{f' and {len(shown) - 10} more' if len(shown) > 10 else ''} appear more than once; "
                        "expected unique annotation ids")


def user_message(err: BaseException) -> str:
    """The one line to show a user for ``err``.

    An error raised inside a DataLoader worker reaches the main process re-raised by torch as
    ``"Caught DataError in DataLoader worker process 0.\\nOriginal Traceback (most recent call last): ..."``: its own
    message (file, field, what was expected) is the traceback's last line, returned here with the worker named.
    Any other error gives its message unchanged.
    """
    text = str(err)
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Caught ") and "Original Traceback" in text:
        last = lines[-1]
        head = f"{type(err).__module__}.{type(err).__name__}: "
        for prefix in (head, f"{type(err).__name__}: "):
            if last.startswith(prefix):
                last = last[len(prefix):]
                break
        worker = lines[0].removeprefix(f"Caught {type(err).__name__} in ").rstrip(".")
        return f"{last} (in {worker})"
    return text


def exit_on_error(prog: str, fn: Callable[[], T]) -> T:
    """Run a console script's body: a bapose error ends the program with one actionable line, not a traceback.

    ``HYDRA_FULL_ERROR=1`` keeps the traceback (the same switch Hydra uses for its own errors).
    """
    try:
        return fn()
    except BAPoseError as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        raise SystemExit(f"{prog}: {user_message(e)}") from None
