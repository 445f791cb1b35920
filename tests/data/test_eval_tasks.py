"""Held-out evaluation items: the marked answer is the true one, distractors are fair."""

from __future__ import annotations

import re

import pytest

from fedlora.data import eval_tasks
from fedlora.data.arithmetic import arithmetic_examples
from fedlora.errors import DataError


def _word(i: int, pos: str) -> dict[str, str]:
    return {"id": f"w{i}.{pos}", "word": f"w{i}", "pos": pos, "gloss": f"meaning {i} ({pos})"}


def test_spam_items_answer_is_the_label() -> None:
    # Prepare
    records = [
        {"id": f"g/{i}", "label": lab, "subject": "s", "body": "b"}
        for i, lab in enumerate(["spam", "ham", "spam"])
    ]
    # Execute
    items = eval_tasks.spam_items(records)
    # Assert
    assert [item.choices[item.answer] for item in items] == ["spam", "ham", "spam"]


def test_play_items_keep_only_chosen_plays() -> None:
    # Prepare
    records = [
        {"id": f"x:{i}", "play": play, "context": f"a{i}\nb{i}", "next": f"c{i}"}
        for i, play in enumerate(["Hamlet", "Othello", "Macbeth", "Hamlet"])
    ]
    # Execute
    items = eval_tasks.play_items(records, plays=("Macbeth", "Hamlet"))
    # Assert
    assert len(items) == 3
    for item in items:
        index = int(re.search(r"a(\d)", item.prompt).group(1))  # type: ignore[union-attr]
        assert item.choices[item.answer] == records[index]["play"]
        assert item.prompt.endswith(f"a{index}\nb{index}\nc{index}")


def test_play_items_refuse_a_play_without_heldout_passages() -> None:
    records = [{"id": "x:1", "play": "Hamlet", "context": "a", "next": "b"}]
    with pytest.raises(DataError, match="Macbeth"):
        eval_tasks.play_items(records, plays=("Hamlet", "Macbeth"))


def test_definition_items_are_fair_and_deterministic() -> None:
    # Prepare
    words = [_word(i, "noun") for i in range(12)] + [_word(i, "verb") for i in range(12, 20)]
    # Execute
    items = eval_tasks.definition_items(words, seed=7)
    again = eval_tasks.definition_items(words, seed=7)
    other = eval_tasks.definition_items(words, seed=8)
    # Assert
    assert items == again and items != other
    assert len(items) == len(words)
    by_word = {w["word"]: w for w in words}
    for item in items:
        word = by_word[re.search(r"'(w\d+)'", item.prompt).group(1)]  # type: ignore[union-attr]
        assert item.choices[item.answer] == word["gloss"]
        assert len(set(item.choices)) == 4
        assert all(f"({word['pos']})" in choice for choice in item.choices)
    assert len({item.answer for item in items}) > 1, "answer position must vary"


def test_definition_items_skip_words_without_enough_distractors() -> None:
    words = [_word(i, "adverb") for i in range(3)]
    assert eval_tasks.definition_items(words, seed=0) == []


def test_choice_task_dispatches_by_domain() -> None:
    # Prepare
    emails = [{"id": "g/1", "label": "spam", "subject": "s", "body": "b"}]
    words = [_word(i, "noun") for i in range(5)]
    # Execute / Assert
    assert eval_tasks.choice_task("email", emails, 0) == eval_tasks.spam_items(emails)
    assert eval_tasks.choice_task("dictionary", words, 3) == eval_tasks.definition_items(words, 3)
    assert eval_tasks.choice_task("code", [{"id": "HumanEval/0"}], 0) == []


def test_choice_item_checks_answer_index() -> None:
    with pytest.raises(DataError):
        eval_tasks.ChoiceItem("q", ("a", "b"), 2)


def _solve(prompt: str) -> int:
    """Independent solver for the four problem shapes, keyed on their verbs."""
    numbers = [int(x) for x in re.findall(r"\d+", prompt)]
    if "boxes" in prompt:
        return numbers[0] * numbers[1]
    if "loses" in prompt:
        return numbers[0] + numbers[1] - numbers[2]
    if "gives away" in prompt:
        return numbers[0] - numbers[1]
    return numbers[0] + numbers[1]


def test_arithmetic_answers_are_exact_and_seeded() -> None:
    # Execute
    examples = arithmetic_examples(200, seed=5)
    # Assert
    for example in examples:
        assert int(example.completion) == _solve(example.prompt) >= 0
    assert examples == arithmetic_examples(200, seed=5)
    assert examples != arithmetic_examples(200, seed=6)
    shapes = {("boxes" in e.prompt, "loses" in e.prompt, "away" in e.prompt) for e in examples}
    assert len(shapes) == 4
