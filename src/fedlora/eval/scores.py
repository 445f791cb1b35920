"""Scores of a model on held-out data, with gradients off.

- :func:`completion_loss`: token-weighted mean cross-entropy over completion tokens only.
- :func:`choice_accuracy`: each choice scored by the summed log-likelihood of its tokens
  after the prompt (the end-of-text token is not scored); the highest wins.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from fedlora.data.types import Example
from fedlora.models.placement import device_of
from fedlora.train.batches import IGNORE, Encoded, collate, encode
from fedlora.train.lm_loss import labelled_log_probs
from fedlora.train.progress import progress


@dataclass(frozen=True)
class ChoiceQuestion:
    """A multiple-choice item: ``choices[answer]`` is right."""

    prompt: str
    choices: tuple[str, ...]
    answer: int


def _token_logprob_sums(
    model: nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: summed log-prob of labelled tokens and their count (the head runs on the
    labelled positions only, :mod:`fedlora.train.lm_loss`)."""
    log_probs, rows = labelled_log_probs(model, batch)
    n = batch["input_ids"].shape[0]
    sums = torch.zeros(n, dtype=log_probs.dtype, device=log_probs.device)
    counts = torch.zeros(n, dtype=torch.long, device=log_probs.device)
    sums.index_add_(0, rows, log_probs)
    counts.index_add_(0, rows, torch.ones_like(rows))
    return sums, counts


@torch.no_grad()
def completion_loss(
    model: nn.Module, examples: Sequence[Encoded], batch_size: int, pad_id: int
) -> float:
    """Mean per-token cross-entropy over the completion tokens of ``examples``."""
    if not examples:
        raise ValueError("no examples to evaluate")
    model.eval()
    total, count = 0.0, 0
    with progress(len(examples), "eval loss") as bar:
        for i in range(0, len(examples), batch_size):
            batch = collate(examples[i : i + batch_size], pad_id, device_of(model))
            sums, counts = _token_logprob_sums(model, batch)
            total -= float(sums.sum())
            count += int(counts.sum())
            bar.advance(len(batch["input_ids"]))
    return total / max(count, 1)


@torch.no_grad()
def choice_accuracy(
    model: nn.Module,
    tokenizer: object,
    questions: Sequence[ChoiceQuestion],
    seq_len: int,
    batch_size: int,
    pad_id: int,
    template: str = "chat",
) -> float:
    """Fraction of ``questions`` whose right choice has the highest likelihood (prompts
    rendered with ``template``)."""
    if not questions:
        raise ValueError("no questions to evaluate")
    model.eval()
    rows: list[Encoded] = []
    for q in questions:
        for choice in q.choices:
            enc = encode(tokenizer, Example(q.prompt, choice), seq_len, template)
            labels = list(enc.labels)
            # Score the choice's own tokens: the end-of-text label says nothing about it.
            eos = getattr(tokenizer, "eos_token_id", None)
            scored = [j for j, lab in enumerate(labels) if lab != IGNORE]
            if len(scored) > 1 and labels[scored[-1]] == eos:
                labels[scored[-1]] = IGNORE
            rows.append(Encoded(enc.input_ids, labels))
    scores: list[float] = []
    device = device_of(model)
    with progress(len(rows), "eval choices") as bar:
        for i in range(0, len(rows), batch_size):
            sums, _ = _token_logprob_sums(model, collate(rows[i : i + batch_size], pad_id, device))
            scores.extend(float(s) for s in sums)
            bar.advance(len(sums))
    right, k = 0, 0
    for q in questions:
        best = max(range(len(q.choices)), key=lambda j: scores[k + j])
        right += int(best == q.answer)
        k += len(q.choices)
    return right / len(questions)
