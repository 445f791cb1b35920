"""Reading the fields of a node's reply: every value typed, bounded and finite, or refused.

A reply is hostile until read (docs/threat-model.md). Its scalars must have their type
(``bool`` is not an ``int``), integers a range, floats a finite value; its text is cut to
:data:`MAX_TEXT` characters before it reaches a record or a log; its JSON fields are length-
and depth-checked before the (recursive) parser sees them, and their numbers must be finite
(``NaN`` and ``Infinity`` are refused, as strict JSON does). Every failure raises
``PayloadError`` naming the field.
"""

from __future__ import annotations

import json
import math
from typing import Any

from flwr.app import ConfigRecord

from fedlora.errors import PayloadError

MAX_TEXT = 1024
"""Longest text from a node kept (an error message): longer text is cut to this."""

MAX_KEY = 128
"""Longest key of a JSON object a node sends."""

MAX_JSON_DEPTH = 4
"""Deepest nesting a JSON field of a reply may have (a deeply nested one is refused, never
recursed into)."""

MAX_JSON_CHARS = 1 << 16
"""Longest JSON field of a reply (its figures go into ``metrics.jsonl``)."""

MAX_COUNT = 1 << 53
"""Largest count a reply may report (an exact float64 integer)."""


def get(rec: ConfigRecord, key: str, kind: type | tuple[type, ...]) -> Any:
    """Field ``key`` of ``rec``, which must be there and of type ``kind``."""
    if key not in rec:
        raise PayloadError(f"flower message lacks {key!r}")
    value = rec[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise PayloadError(f"flower message field {key!r} has type {type(value).__name__}")
    return value


def count(rec: ConfigRecord, key: str) -> int:
    """A non-negative integer field, at most :data:`MAX_COUNT`."""
    value = get(rec, key, int)
    if not 0 <= value <= MAX_COUNT:
        raise PayloadError(f"flower reply field {key!r} is {value}, not a count")
    return int(value)


def number(rec: ConfigRecord, key: str, *, low: float = -math.inf) -> float:
    """A finite number field, at least ``low``."""
    value = get(rec, key, (int, float))
    if isinstance(value, bool) or not math.isfinite(value) or value < low:
        raise PayloadError(f"flower reply field {key!r} is {value!r}, not a finite number")
    return float(value)


def text(rec: ConfigRecord, key: str) -> str:
    """A text field, cut to :data:`MAX_TEXT` characters."""
    value = get(rec, key, str)
    return value if len(value) <= MAX_TEXT else value[:MAX_TEXT] + " [cut]"


def _nesting(text: str) -> int:
    """The deepest bracket nesting of JSON text, outside strings."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a finite number")


def _check_plain(value: Any, key: str) -> None:
    """Refuse anything but objects of short keys, lists, finite numbers, booleans, null and
    short text."""
    if isinstance(value, dict):
        for k, v in value.items():
            if len(k) > MAX_KEY:
                raise PayloadError(f"flower reply field {key!r} has a key of {len(k)} characters")
            _check_plain(v, key)
    elif isinstance(value, list):
        for v in value:
            _check_plain(v, key)
    elif isinstance(value, str):
        if len(value) > MAX_TEXT:
            raise PayloadError(f"flower reply field {key!r} holds text of {len(value)} characters")
    elif isinstance(value, float) and not math.isfinite(value):
        raise PayloadError(f"flower reply field {key!r} holds a number that is not finite")


def json_field(rec: ConfigRecord, key: str) -> Any:
    """A JSON field of a reply, parsed only if it is short and shallow enough, holding only
    finite numbers, short text and short keys."""
    raw = get(rec, key, str)
    if len(raw) > MAX_JSON_CHARS:
        raise PayloadError(f"flower reply field {key!r} is {len(raw)} characters long")
    if _nesting(raw) > MAX_JSON_DEPTH:  # refused before the (recursive) parser sees it
        raise PayloadError(f"flower reply field {key!r} nests deeper than {MAX_JSON_DEPTH}")
    try:
        value = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise PayloadError(f"flower reply field {key!r} is not JSON: {exc}") from None
    _check_plain(value, key)
    return value


def scores(value: Any) -> dict[str, dict[str, float]]:
    """Scores as ``{set: {metric: finite number}}``."""
    valid = isinstance(value, dict) and all(
        isinstance(entry, dict)
        and all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            for v in entry.values()
        )
        for entry in value.values()
    )
    if not valid:
        raise PayloadError("flower evaluation reply's scores are not {set: {metric: number}}")
    return value  # type: ignore[no-any-return]
