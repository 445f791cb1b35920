"""Templates: fields end up where they should, long texts are clipped at word breaks."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedlora.data import templates


@settings(max_examples=60, deadline=None)
@given(text=st.text(alphabet="ab \n", max_size=80), limit=st.integers(1, 40))
def test_clip_is_a_short_prefix_cut_at_a_break(text: str, limit: int) -> None:
    # Execute
    out = templates.clip(text, limit)
    # Assert
    assert text.startswith(out)
    assert len(out) <= limit
    head = text[:limit]
    can_break = head.rfind("\n") > 0 or head.rfind(" ") > 0
    if len(text) <= limit:
        assert out == text
    elif can_break:
        assert text[len(out)] in " \n", "a word was cut in half"
    else:
        assert out == head


def test_clip_rejects_non_positive_limit() -> None:
    with pytest.raises(ValueError):
        templates.clip("abc", 0)


def test_code_example_keeps_signature_and_clips_long_bodies() -> None:
    # Prepare
    body = "".join(f"    x{i} = {i}\n" for i in range(100))
    record = {
        "id": "HumanEval/0",
        "prompt": 'def f(x):\n    """Doc."""\n',
        "solution": body,
        "entry_point": "f",
    }
    # Execute
    example = templates.code_example(record)
    # Assert
    assert example.prompt.endswith('def f(x):\n    """Doc."""')
    assert len(example.completion) <= templates.CODE_COMPLETION_CHARS
    assert body.startswith(example.completion)
    assert example.completion.split("\n")[-1] in body.split("\n"), "a line was cut in half"


def test_literature_example_names_play_and_labels_it() -> None:
    # Prepare
    record = {"id": "x:1", "play": "Macbeth", "context": "l1\nl2", "next": "l3"}
    # Execute
    example = templates.literature_example(record)
    # Assert
    assert "Macbeth" in example.prompt and example.prompt.endswith("l1\nl2")
    assert (example.completion, example.label) == ("l3", "Macbeth")


@pytest.mark.parametrize("label", templates.EMAIL_LABELS)
def test_email_example_completion_is_label(label: str) -> None:
    # Prepare
    record = {"id": "g/1", "label": label, "subject": "Hi", "body": "word " * 200}
    # Execute
    example = templates.email_example(record)
    # Assert
    assert (example.completion, example.label) == (label, label)
    assert "Subject: Hi\n" in example.prompt
    body = example.prompt.split("Subject: Hi\n", 1)[1]
    assert len(body) <= templates.EMAIL_BODY_CHARS and body.endswith("word")


def test_dictionary_example_asks_for_word_and_pos() -> None:
    # Prepare
    record = {"id": "dog.noun", "word": "dog", "pos": "noun", "gloss": "a domestic animal"}
    # Execute
    example = templates.dictionary_example(record)
    # Assert
    assert "'dog'" in example.prompt and "noun" in example.prompt
    assert (example.completion, example.label) == ("a domestic animal", "noun")
