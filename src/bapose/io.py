"""Files every layer reads and writes: json in and out (strict for inputs, atomic for outputs).

Checkpoints have their own module (:mod:`bapose.checkpoints.io`), images theirs (:mod:`bapose.data.images`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from bapose.errors import DataError, where

__all__ = ["read_json", "read_json_object", "read_json_or_empty", "write_json"]


def read_json(path: str | os.PathLike, expected: str = "a COCO keypoint json") -> Any:
    """The parsed content of a json file; DataError naming the file when it is missing or not json."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{where(path)}: file not found; expected {expected}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{where(path)}: not valid JSON ({err}); expected {expected}") from None


def read_json_object(path: str | os.PathLike, expected: str = "a COCO keypoint json") -> dict[str, Any]:
    """:func:`read_json` of a file whose top level must be a json object."""
    data = read_json(path, expected)
    if not isinstance(data, dict):
        raise DataError(f"{where(path)}: top level is a {type(data).__name__}; expected {expected} object")
    return data


def read_json_or_empty(path: str | os.PathLike) -> dict[str, Any]:
    """A json object file the suite wrote itself (``status.json``, ``run.json``, ``metrics.json``) as a dict;
    ``{}`` when it is missing, unreadable or not an object (a run that never got that far)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented json via a temp file + rename (readers never see half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=float) + "\n")
    os.replace(tmp, path)
    return path
