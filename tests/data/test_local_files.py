"""A user's JSONL file through ``read_rows`` and ``examples_of``: good files load, every kind
of bad file names file, row and field in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedlora.data.formats import examples_of
from fedlora.data.local import read_rows
from fedlora.data.types import Example
from fedlora.errors import DataError


def _write(tmp_path: Path, content: str | bytes) -> Path:
    path = tmp_path / "client.jsonl"
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)
    return path


def load_jsonl(path: Path) -> list[Example]:
    return [e for exs in examples_of(read_rows(path), str(path), "prompt-completion") for e in exs]


def test_reads_examples_in_order_with_optional_label(tmp_path: Path) -> None:
    # Prepare
    rows = [
        {"prompt": "p1", "completion": "c1"},
        {"prompt": "", "completion": "c2", "label": "x", "extra": 1},
        {"prompt": "é", "completion": "ü", "label": None},
    ]
    path = _write(tmp_path, "".join(json.dumps(r) + "\n" for r in rows))
    # Execute
    examples = load_jsonl(path)
    # Assert
    assert examples == [Example("p1", "c1"), Example("", "c2", "x"), Example("é", "ü")]


def test_blank_lines_between_rows_are_skipped(tmp_path: Path) -> None:
    good = '{"prompt": "a", "completion": "b"}\n'
    assert len(load_jsonl(_write(tmp_path, good + "\n" + good))) == 2


def test_accepts_crlf_and_missing_final_newline(tmp_path: Path) -> None:
    # Prepare
    content = '{"prompt": "a", "completion": "b"}\r\n{"prompt": "c", "completion": "d"}'
    path = _write(tmp_path, content)
    # Execute
    examples = load_jsonl(path)
    # Assert
    assert [e.completion for e in examples] == ["b", "d"]


GOOD = '{"prompt": "a", "completion": "b"}\n'


@pytest.mark.parametrize(
    ("content", "where", "what"),
    [
        ("", "", "empty"),
        (GOOD + '{"prompt": "a", "completion": \n', ": row 2", "not valid JSON"),
        (GOOD + GOOD + '{"completion": "b"}\n', ": row 3", "missing field 'prompt'"),
        ('{"prompt": "a"}\n', ": row 1", "missing field 'completion'"),
        ('{"prompt": 3, "completion": "b"}\n', ": row 1", "field 'prompt' must be text"),
        ('{"prompt": "a", "completion": ["b"]}\n', ": row 1", "field 'completion' must be text"),
        ('{"prompt": "a", "completion": ""}\n', ": row 1", "is empty"),
        (GOOD + '["a", "b"]\n', ": row 2", "JSON object"),
        ('["a", "b"]\n', ": item 1", "JSON object"),  # a JSON array of non-objects
        (GOOD.encode() + b'{"prompt": "\xff", "completion": "b"}\n', ": row 2", "UTF-8"),
    ],
)
def test_rejects_bad_content_naming_file_and_row(
    tmp_path: Path, content: str | bytes, where: str, what: str
) -> None:
    # Prepare
    path = _write(tmp_path, content)
    # Execute
    with pytest.raises(DataError) as caught:
        load_jsonl(path)
    # Assert
    message = str(caught.value)
    assert message.startswith(f"{path}{where}:")
    assert what in message
    assert "\n" not in message


def test_missing_file(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "nope.jsonl"
    # Execute / Assert
    with pytest.raises(DataError, match="file not found") as caught:
        load_jsonl(path)
    assert str(path) in str(caught.value)
