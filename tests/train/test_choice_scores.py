"""Multiple-choice scoring runs each question's prompt once (a key/value cache shared by its
choices) and gives the log-likelihoods of scoring every choice in full, one unpadded
sequence at a time, in float64: the independent reference here."""

from __future__ import annotations

import pytest
import torch

from fedlora.data.types import Example
from fedlora.eval.scores import ChoiceQuestion, choice_accuracy, choice_scores, shared_prompt
from fedlora.models import resolve_model
from fedlora.train.adapters import attach_slots
from fedlora.train.batches import IGNORE, Encoded, encode, pad_id_of

QUESTIONS = [
    ChoiceQuestion("What is two plus two?", ("four", "five", "twenty two"), 0),
    ChoiceQuestion("Name a colour of the sky on a clear day.", ("blue", "green"), 0),
    ChoiceQuestion("Which word is a fruit?", ("table", "apple", "river", "stone", "cloud"), 1),
    ChoiceQuestion("Say yes.", ("yes", "no"), 0),
]


def reference_scores(model, tokenizer, q: ChoiceQuestion, seq_len: int) -> list[float]:  # type: ignore[no-untyped-def]
    """Each choice alone, the whole prompt+choice sequence in float64, its tokens summed."""
    eos = tokenizer.eos_token_id
    out = []
    for choice in q.choices:
        enc = encode(tokenizer, Example(q.prompt, choice), seq_len, "chat")
        labels = list(enc.labels)
        if labels[-1] == eos and sum(lab != IGNORE for lab in labels) > 1:
            labels[-1] = IGNORE
        ids = torch.tensor([enc.input_ids])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0].double()
        logp = torch.log_softmax(logits, dim=-1)
        total = sum(
            float(logp[j - 1, labels[j]]) for j in range(1, len(labels)) if labels[j] != IGNORE
        )
        out.append(total)
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


def test_a_question_truncated_differently_per_choice_is_scored_in_full(tiny) -> None:  # type: ignore[no-untyped-def]
    # Prepare: a long prompt and seq_len so short that the prompt is cut to make room for
    # each choice, and by a different amount for choices of different lengths
    model, tokenizer = tiny
    long = ChoiceQuestion(" ".join(["word"] * 60) + " pick one", ("a", "a b c d e f g h"), 1)
    pad = pad_id_of(tokenizer)
    rows = [encode(tokenizer, Example(long.prompt, c), 24, "chat") for c in long.choices]
    assert shared_prompt([Encoded(r.input_ids, r.labels) for r in rows]) is None
    # Execute
    (scores,) = choice_scores(model, tokenizer, [long], 24, 4, pad)
    # Assert
    assert scores == pytest.approx(reference_scores(model, tokenizer, long, 24), rel=1e-9)


def test_accuracy_picks_the_highest_likelihood(tiny) -> None:  # type: ignore[no-untyped-def]
    model, tokenizer = tiny
    pad = pad_id_of(tokenizer)
    scores = choice_scores(model, tokenizer, QUESTIONS, 64, 8, pad)
    expected = sum(
        max(range(len(s)), key=s.__getitem__) == q.answer
        for q, s in zip(QUESTIONS, scores, strict=True)
    )
    assert choice_accuracy(model, tokenizer, QUESTIONS, 64, 8, pad) == expected / len(QUESTIONS)
