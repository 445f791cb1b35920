"""Multiple-choice scoring runs each question's prompt once (a key/value cache shared by its
choices) and gives the log-likelihoods of scoring every choice in full, one unpadded
sequence at a time, in float64: the independent reference here."""

from __future__ import annotations

import pytest
import torch

from fedlora.data.types import Example
from fedlora.eval.scores import (
    ChoiceQuestion,
    _choice_rows,
    choice_accuracy,
    choice_scores,
    shared_prompt,
)
from fedlora.models import resolve_model
from fedlora.train.adapters import attach_slots
from fedlora.train.batches import IGNORE, Encoded, pad_id_of
from fedlora.train.prompt_format import prompt_token_ids

QUESTIONS = [
    ChoiceQuestion("What is two plus two?", ("four", "five", "twenty two"), 0),
    ChoiceQuestion("Name a colour of the sky on a clear day.", ("blue", "green"), 0),
    ChoiceQuestion("Which word is a fruit?", ("table", "apple", "river", "stone", "cloud"), 1),
    ChoiceQuestion("Say yes.", ("yes", "no"), 0),
]


def reference_scores(model, tokenizer, q: ChoiceQuestion, seq_len: int) -> list[float]:  # type: ignore[no-untyped-def]
    """Each choice alone, its whole prompt+choice row in float64, its tokens summed."""
    out = []
    for row in _choice_rows(tokenizer, q, seq_len, "chat"):
        ids = torch.tensor([row.input_ids])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0].double()
        logp = torch.log_softmax(logits, dim=-1)
        labels = row.labels
        out.append(
            sum(float(logp[j - 1, labels[j]]) for j in range(1, len(labels)) if labels[j] != IGNORE)
        )
    return out


@pytest.fixture(scope="module")
def tiny():  # type: ignore[no-untyped-def]
    base, tokenizer = resolve_model("tiny-llama", seed=0)
    base = base.double()
    model = attach_slots(base, [(4, 8.0)], "all-linear")
    # a nonzero adapter, so the PEFT path is exercised
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.05, generator=torch.Generator().manual_seed(3))
    model.eval()
    return model, tokenizer


@pytest.mark.parametrize("batch_size", [1, 4, 64])
def test_shared_prompt_scores_equal_full_sequences(tiny, batch_size: int) -> None:  # type: ignore[no-untyped-def]
    model, tokenizer = tiny
    got = choice_scores(model, tokenizer, QUESTIONS, 64, batch_size, pad_id_of(tokenizer))
    for q, scores in zip(QUESTIONS, got, strict=True):
        assert scores == pytest.approx(
            reference_scores(model, tokenizer, q, 64), rel=1e-9, abs=1e-9
        )


def test_every_choice_sees_one_prompt_cut_for_the_longest_choice(tiny) -> None:  # type: ignore[no-untyped-def]
    # Prepare: a prompt far longer than seq_len and choices of different lengths
    model, tokenizer = tiny
    long = ChoiceQuestion(" ".join(["word"] * 60) + " pick one", ("a", "a b c d e f g h"), 1)
    prompt = prompt_token_ids(tokenizer, Example(long.prompt, ""), "chat")
    longest = max(
        len(tokenizer(c, add_special_tokens=False)["input_ids"]) + 1 for c in long.choices
    )
    room = max(24 - longest, 12)
    # Execute
    rows = _choice_rows(tokenizer, long, 24, "chat")
    (scores,) = choice_scores(model, tokenizer, [long], 24, 4, pad_id_of(tokenizer))
    # Assert: one shared prompt, the end of the real one, and the shared-prompt scores
    assert all(r.input_ids[:room] == prompt[-room:] for r in rows)
    assert shared_prompt(rows) == room
    assert scores == pytest.approx(reference_scores(model, tokenizer, long, 24), rel=1e-9)


def test_rows_without_a_shared_prompt_are_found() -> None:
    scored_apart = [Encoded([1, 2, 3], [IGNORE, 2, 3]), Encoded([1, 5, 3], [IGNORE, IGNORE, 3])]
    nothing_scored = [Encoded([1, 2], [IGNORE, IGNORE])]
    gap = [Encoded([1, 2, 3, 4], [IGNORE, 2, IGNORE, 4])]
    assert shared_prompt(scored_apart) is None
    assert shared_prompt(nothing_scored) is None and shared_prompt(gap) is None
    assert shared_prompt([Encoded([1, 2, 3], [IGNORE, 2, 3]), Encoded([1, 7], [IGNORE, 7])]) == 1


def test_accuracy_picks_the_highest_likelihood(tiny) -> None:  # type: ignore[no-untyped-def]
    model, tokenizer = tiny
    pad = pad_id_of(tokenizer)
    scores = choice_scores(model, tokenizer, QUESTIONS, 64, 8, pad)
    expected = sum(
        max(range(len(s)), key=s.__getitem__) == q.answer
        for q, s in zip(QUESTIONS, scores, strict=True)
    )
    assert choice_accuracy(model, tokenizer, QUESTIONS, 64, 8, pad) == expected / len(QUESTIONS)
