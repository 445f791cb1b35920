"""Rows of a user's dataset as training examples: ``data.format`` or a column mapping.

``prompt-completion``: ``prompt``, ``completion``. ``alpaca``: ``instruction``, ``input``
(optional context), ``output``. ``dolly``: ``instruction``, ``context``, ``response``,
``category`` (the label). ``messages``: a ``messages`` list of ``{role, content}`` or a
ShareGPT ``conversations`` list of ``{from, value}``; every assistant turn becomes one
example whose prompt is the conversation before it, so each assistant turn, and nothing
else, is trained on. ``data.columns.*`` renames any of these fields (``prompt =
"question"``). A row that lacks a field, or holds a non-string in it, is an error naming the
file, the row (1-based) and the field.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fedlora.data.local import Row
from fedlora.data.types import Example
from fedlora.errors import DataError, did_you_mean

FORMATS = ("prompt-completion", "alpaca", "dolly", "messages")
TEMPLATES = ("chat", "chatml", "alpaca", "vicuna")
"""``data.template`` values (rendered by :mod:`fedlora.train.prompt_format`)."""

#: Each format's fields: role -> (column, required).
_FIELDS: dict[str, dict[str, tuple[str, bool]]] = {
    "prompt-completion": {
        "prompt": ("prompt", True),
        "completion": ("completion", True),
        "context": ("context", False),
        "label": ("label", False),
    },
    "alpaca": {
        "prompt": ("instruction", True),
        "context": ("input", False),
        "completion": ("output", True),
        "label": ("label", False),
    },
    "dolly": {
        "prompt": ("instruction", True),
        "context": ("context", False),
        "completion": ("response", True),
        "label": ("category", False),
    },
}
_ROLES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant"}
_ROLES.update({"system": "system", "model": "assistant"})


@dataclass(frozen=True)
class Columns:
    """``data.columns``: column names that override ``data.format``'s own (empty: the
    format's), e.g. ``data.columns.prompt = "question"``."""

    prompt: str = ""
    completion: str = ""
    context: str = ""
    label: str = ""
    messages: str = ""


def _text(row: Row, column: str, where: str, required: bool) -> str:
    value = row.get(column)
    if value is None:
        if required:
            raise DataError(
                f"{where}: missing field {column!r}{did_you_mean(column, row)}; "
                f"its fields: {', '.join(sorted(row)) or '(none)'} (data.format, data.columns)"
            )
        return ""
    if not isinstance(value, str):
        raise DataError(f"{where}: field {column!r} must be text, got {type(value).__name__}")
    return value


def _flat_example(row: Row, fields: Mapping[str, tuple[str, bool]], where: str) -> Example:
    prompt = _text(row, fields["prompt"][0], where, fields["prompt"][1])
    completion = _text(row, fields["completion"][0], where, True)
    if not completion.strip():
        # The loss is on the completion only: an empty one would train on nothing.
        raise DataError(f"{where}: field {fields['completion'][0]!r} is empty")
    context = _text(row, fields["context"][0], where, False)
    label_column = fields["label"][0]
    label = row.get(label_column)
    return Example(
        prompt,
        completion,
        label=None if label is None else str(label),
        context=context,
    )


def _turns(row: Row, column: str, where: str) -> list[tuple[str, str]]:
    names = [column] if column else [c for c in ("messages", "conversations") if c in row]
    if not names or row.get(names[0]) is None:
        raise DataError(
            f"{where}: missing field 'messages' (or ShareGPT 'conversations'); its fields: "
            f"{', '.join(sorted(row)) or '(none)'} (data.format, data.columns)"
        )
    raw = row[names[0]]
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        raise DataError(f"{where}: field {names[0]!r} must be a list of turns")
    turns = []
    for i, turn in enumerate(raw):
        spot = f"{where}: {names[0]}[{i}]"
        if not isinstance(turn, Mapping):
            raise DataError(f"{spot}: a turn must be an object")
        role = turn.get("role", turn.get("from"))
        content = turn.get("content", turn.get("value"))
        if role not in _ROLES:
            raise DataError(f"{spot}: unknown role {role!r} (user, assistant, system)")
        if not isinstance(content, str):
            raise DataError(f"{spot}: content must be text")
        turns.append((_ROLES[role], content))
    return turns


def _chat_examples(row: Row, column: str, label_column: str, where: str) -> list[Example]:
    turns = _turns(row, column, where)
    label = row.get(label_column) if label_column else None
    out = []
    for i, (role, content) in enumerate(turns):
        if role != "assistant" or i == 0 or turns[i - 1][0] != "user" or not content.strip():
            continue
        out.append(
            Example(
                turns[i - 1][1],
                content,
                label=None if label is None else str(label),
                history=tuple(turns[: i - 1]),
            )
        )
    if not out:
        raise DataError(f"{where}: no assistant turn that answers a user turn")
    return out


def examples_of(
    rows: Sequence[Row], source: str, fmt: str, columns: Columns | None = None
) -> list[list[Example]]:
    """The examples of each row (one per row, or one per assistant turn of ``messages``)."""
    if fmt not in FORMATS:
        raise DataError(f"data.format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    columns = columns or Columns()
    out = []
    for number, row in enumerate(rows, start=1):
        where = f"{source}: row {number}"
        if fmt == "messages":
            out.append(_chat_examples(row, columns.messages, columns.label, where))
            continue
        fields = dict(_FIELDS[fmt])
        for role in ("prompt", "completion", "context", "label"):
            override = getattr(columns, role)
            if override:
                fields[role] = (override, fields[role][1])
        out.append([_flat_example(row, fields, where)])
    return out
