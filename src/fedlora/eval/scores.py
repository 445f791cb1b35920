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
from fedlora.train.batches import IGNORE, Encoded, collate, encode_parts, join, prompt_room
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


def _choice_rows(
    tokenizer: object, q: ChoiceQuestion, seq_len: int, template: str
) -> list[Encoded]:
    """One encoded row per choice: the prompt unlabelled, the choice's tokens labelled (its
    end-of-text label dropped: it says nothing about the choice). Every choice sees the same
    prompt, cut once to leave room for the longest choice (as :func:`encode` would cut it
    for that choice), so that the choices are compared on one context."""
    eos = getattr(tokenizer, "eos_token_id", None)
    parts = [encode_parts(tokenizer, Example(q.prompt, c), template) for c in q.choices]
    room = prompt_room(seq_len, max(len(c_ids) for _, c_ids in parts))
    rows = []
    for p_ids, c_ids in parts:
        enc = join(p_ids, c_ids, seq_len, room)
        labels = list(enc.labels)
        scored = [j for j, lab in enumerate(labels) if lab != IGNORE]
        if len(scored) > 1 and labels[scored[-1]] == eos:
            labels[scored[-1]] = IGNORE
        rows.append(Encoded(enc.input_ids, labels))
    return rows


def shared_prompt(rows: Sequence[Encoded]) -> int | None:
    """How many leading tokens a question's choice rows share before each one's first scored
    token, when they share them all and each row's scored tokens follow without a gap; None
    otherwise (truncation cut the prompt differently for some choice, or nothing is scored)."""
    starts = []
    for r in rows:
        scored = [j for j, lab in enumerate(r.labels) if lab != IGNORE]
        if not scored or scored != list(range(scored[0], scored[0] + len(scored))):
            return None
        starts.append(scored[0])
    p = starts[0]
    if p == 0 or any(s != p for s in starts):
        return None
    head = rows[0].input_ids[:p]
    return p if all(r.input_ids[:p] == head for r in rows) else None


def _chunks(items: Sequence[int], sizes: Sequence[int], limit: int) -> list[list[int]]:
    """``items`` in order, cut into runs whose ``sizes`` sum to at most ``limit`` (a run
    holds at least one item)."""
    runs: list[list[int]] = []
    total = 0
    for item, size in zip(items, sizes, strict=True):
        if runs and total + size <= limit:
            runs[-1].append(item)
            total += size
        else:
            runs.append([item])
            total = size
    return runs


def _wide(logits: torch.Tensor) -> torch.Tensor:
    """At least float32 for the softmax, as the model's own loss (float64 stays)."""
    return logits if logits.dtype == torch.float64 else logits.float()


def _scored_tokens(row: Encoded) -> list[int]:
    return [tok for tok, lab in zip(row.input_ids, row.labels, strict=True) if lab != IGNORE]


def _shared_prompt_scores(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    choices: Sequence[Sequence[Sequence[int]]],
    pad_id: int,
    device: torch.device,
) -> list[list[float]]:
    """Summed log-probability of each choice's tokens after its question's prompt, with each
    prompt run once: the prompts (left-padded) fill a key/value cache, which is repeated per
    choice; the choices then run on it. The first choice token is scored by the prompt's last
    logits, the others by the choice pass."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    out = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=positions,
        use_cache=True,
        logits_to_keep=1,
    )
    first = torch.log_softmax(_wide(out.logits[:, -1]), dim=-1)
    owner = [q for q, cs in enumerate(choices) for _ in cs]
    flat = [c for cs in choices for c in cs]
    index = torch.tensor(owner, device=device)
    cache = out.past_key_values
    cache.reorder_cache(index)
    longest = max(len(c) for c in flat)
    cids = torch.full((len(flat), longest), pad_id, dtype=torch.long)
    cmask = torch.zeros((len(flat), longest), dtype=torch.long)
    for r, c in enumerate(flat):
        cids[r, : len(c)] = torch.tensor(c)
        cmask[r, : len(c)] = 1
    cids, cmask = cids.to(device), cmask.to(device)
    lengths = mask.sum(1)[index]
    out2 = model(
        input_ids=cids,
        attention_mask=torch.cat([mask[index], cmask], dim=1),
        position_ids=lengths[:, None] + torch.arange(longest, device=device)[None, :],
        past_key_values=cache,
        use_cache=False,
    )
    rest = torch.log_softmax(_wide(out2.logits[:, :-1]), dim=-1)
    sums = first[index, cids[:, 0]]
    if longest > 1:
        picked = rest.gather(2, cids[:, 1:, None])[..., 0] * cmask[:, 1:]
        sums = sums + picked.sum(1)
    values = sums.tolist()
    out_scores: list[list[float]] = [[] for _ in prompts]
    for q, v in zip(owner, values, strict=True):
        out_scores[q].append(float(v))
    return out_scores


@torch.no_grad()
def choice_scores(
    model: nn.Module,
    tokenizer: object,
    questions: Sequence[ChoiceQuestion],
    seq_len: int,
    batch_size: int,
    pad_id: int,
    template: str = "chat",
) -> list[list[float]]:
    """Summed log-likelihood of each question's choices (prompts rendered with ``template``).

    A question whose choices share their prompt (the normal case) runs that prompt once
    (:func:`_shared_prompt_scores`); one whose choices truncation cut differently runs each
    choice in full. Batches hold about ``batch_size`` choice rows.
    """
    model.eval()
    device = device_of(model)
    rows = [_choice_rows(tokenizer, q, seq_len, template) for q in questions]
    prefix = [shared_prompt(r) for r in rows]
    out: list[list[float]] = [[] for _ in questions]
    shared = [i for i, p in enumerate(prefix) if p is not None]
    alone = [i for i, p in enumerate(prefix) if p is None]
    with progress(len(questions), "eval choices") as bar:
        for chunk in _chunks(shared, [len(rows[i]) for i in shared], batch_size):
            got = _shared_prompt_scores(
                model,
                [rows[i][0].input_ids[: prefix[i]] for i in chunk],
                [[_scored_tokens(r) for r in rows[i]] for i in chunk],
                pad_id,
                device,
            )
            for i, g in zip(chunk, got, strict=True):
                out[i] = g
            bar.advance(len(chunk))
        for i in alone:
            for k in range(0, len(rows[i]), max(1, batch_size)):
                batch = collate(rows[i][k : k + max(1, batch_size)], pad_id, device)
                out[i].extend(float(v) for v in _token_logprob_sums(model, batch)[0])
            bar.advance(1)
    return out


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
    """Fraction of ``questions`` whose right choice has the highest likelihood
    (:func:`choice_scores`)."""
    if not questions:
        raise ValueError("no questions to evaluate")
    scores = choice_scores(model, tokenizer, questions, seq_len, batch_size, pad_id, template)
    right = sum(
        int(max(range(len(q.choices)), key=lambda j: s[j]) == q.answer)
        for q, s in zip(questions, scores, strict=True)
    )
    return right / len(questions)
