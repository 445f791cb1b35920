"""Strict JSONL reader: good files load, every kind of bad file names file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedlora.data.jsonl import load_jsonl
from fedlora.data.types import Example
from fedlora.errors import DataError


def _write(tmp_path: Path, content: str | bytes) -> Path:
    path = tmp_path / "client.jsonl"
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)
    return path


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
        (GOOD + '{"prompt": "a", "completion": \n', ":2", "bad JSON"),
        (GOOD + GOOD + '{"completion": "b"}\n', ":3", "missing key 'prompt'"),
        ('{"prompt": "a"}\n', ":1", "missing key 'completion'"),
        ('{"prompt": 3, "completion": "b"}\n', ":1", "'prompt' must be a string"),
        ('{"prompt": "a", "completion": ["b"]}\n', ":1", "'completion' must be a string"),
        ('{"prompt": "a", "completion": ""}\n', ":1", "empty"),
        ('{"prompt": "a", "completion": "b", "label": 1}\n', ":1", "'label'"),
        ('["a", "b"]\n', ":1", "JSON object"),
        (GOOD + "\n" + GOOD, ":2", "blank line"),
        (GOOD.encode() + b'{"prompt": "\xff", "completion": "b"}\n', ":2", "UTF-8"),
    ],
)
def test_rejects_bad_content_naming_file_and_line(
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
