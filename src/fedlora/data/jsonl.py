"""Strict reader for user-supplied JSONL files of prompt/completion pairs."""

from __future__ import annotations

import json
import os
from pathlib import Path

from fedlora.data.types import Example
from fedlora.errors import DataError


def _example(obj: object, where: str) -> Example:
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    for key in ("prompt", "completion"):
        if key not in obj:
            raise DataError(f"{where}: missing key {key!r}")
        if not isinstance(obj[key], str):
            raise DataError(f"{where}: {key!r} must be a string, got {type(obj[key]).__name__}")
    if not obj["completion"]:
        # The loss is on the completion only; an empty one would train on nothing.
        raise DataError(f"{where}: 'completion' is empty")
    label = obj.get("label")
    if label is not None and not isinstance(label, str):
        raise DataError(f"{where}: 'label' must be a string or null, got {type(label).__name__}")
    return Example(obj["prompt"], obj["completion"], label)


def load_jsonl(path: str | os.PathLike[str]) -> list[Example]:
    """Read one client's examples: one JSON object per line, UTF-8.

    Each object needs string ``prompt`` and non-empty string ``completion``; an optional
    ``label`` must be a string or null; other keys are ignored. Blank lines are errors
    (they usually mean a truncated or concatenated file).

    Parameters
    ----------
    path
        The JSONL file.

    Returns
    -------
    list of Example
        In file order.

    Raises
    ------
    DataError
        With a one-line message naming the file (and line) for a missing or empty file,
        undecodable bytes, bad JSON, or a missing or mistyped field.
    """
    file = Path(path)
    try:
        raw = file.read_bytes()
    except FileNotFoundError as exc:
        raise DataError(f"{file}: file not found") from exc
    except OSError as exc:
        raise DataError(f"{file}: cannot read ({exc.strerror})") from exc
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the final newline ends the last line; it does not start a new one
    if not lines:
        raise DataError(f"{file}: file is empty")
    examples: list[Example] = []
    for number, blob in enumerate(lines, start=1):
        where = f"{file}:{number}"
        try:
            text = blob.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"{where}: not valid UTF-8") from exc
        if not text.strip():
            raise DataError(f"{where}: blank line")
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: bad JSON ({exc.msg} at column {exc.colno})") from exc
        examples.append(_example(obj, where))
    return examples
