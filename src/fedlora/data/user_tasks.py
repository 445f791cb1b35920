"""``eval.tasks``: evaluation sets from the user's own files.

A file whose rows have ``question``, ``choices`` and ``answer`` (MMLU-style; ``answer`` is
the index, a letter ``A``…, or the right choice's text) is a multiple-choice task, scored by
the likelihood of each choice. Any other file is a completion task (held-out loss on its
completions): ``prompt``/``completion`` rows as they are, other rows in ``data.format``. A
task is named by its file's stem.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from pathlib import Path

from fedlora.data.eval_tasks import ChoiceItem
from fedlora.data.formats import Columns, examples_of
from fedlora.data.local import Row, read_rows
from fedlora.data.types import Example
from fedlora.errors import DataError

CHOICE_FIELDS = ("question", "choices", "answer")
NO_COLUMNS = Columns()


@dataclass(frozen=True)
class UserTask:
    name: str
    examples: list[Example] = field(default_factory=list)
    questions: list[ChoiceItem] = field(default_factory=list)


def _answer(value: object, choices: list[str], where: str) -> int:
    if isinstance(value, bool):
        raise DataError(f"{where}: field 'answer' must be an index, a letter or a choice")
    if isinstance(value, int):
        index = value
    elif isinstance(value, str) and value in choices:
        index = choices.index(value)
    elif isinstance(value, str) and len(value) == 1 and value.upper() in string.ascii_uppercase:
        index = string.ascii_uppercase.index(value.upper())
    else:
        raise DataError(f"{where}: field 'answer' must be an index, a letter or a choice")
    if not 0 <= index < len(choices):
        raise DataError(f"{where}: field 'answer' is {value!r}, outside {len(choices)} choices")
    return index


def _question(row: Row, where: str) -> ChoiceItem:
    question, choices = row.get("question"), row.get("choices")
    if not isinstance(question, str):
        raise DataError(f"{where}: field 'question' must be text")
    if not isinstance(choices, list) or len(choices) < 2:
        raise DataError(f"{where}: field 'choices' must be a list of at least 2 texts")
    if not all(isinstance(c, str) and c for c in choices):
        raise DataError(f"{where}: field 'choices' must hold non-empty texts")
    return ChoiceItem(question, tuple(choices), _answer(row.get("answer"), choices, where))


def load_task(path: str, fmt: str, columns: Columns = NO_COLUMNS, limit: int = 0) -> UserTask:
    """The task in ``path`` (first ``limit`` items; 0 = all)."""
    rows = read_rows(path)
    if limit > 0:
        rows = rows[:limit]
    name = Path(path).stem
    if all(k in rows[0] for k in CHOICE_FIELDS):
        return UserTask(
            name, questions=[_question(r, f"{path}: row {i}") for i, r in enumerate(rows, 1)]
        )
    if "prompt" in rows[0] and "completion" in rows[0]:
        fmt, columns = "prompt-completion", NO_COLUMNS
    examples = [e for exs in examples_of(rows, path, fmt, columns) for e in exs]
    return UserTask(name, examples=examples)


def load_tasks(
    paths: tuple[str, ...], fmt: str, columns: Columns = NO_COLUMNS, limit: int = 0
) -> list[UserTask]:
    """Every task of ``eval.tasks``; two files with one stem are an error."""
    tasks = [load_task(p, fmt, columns, limit) for p in paths]
    seen: dict[str, str] = {}
    for path, task in zip(paths, tasks, strict=True):
        if task.name in seen:
            raise DataError(f"{path}: task name {task.name!r} is also {seen[task.name]}'s")
        seen[task.name] = path
    return tasks
