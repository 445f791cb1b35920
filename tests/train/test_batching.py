"""Batching: a packed batch gives the loss and gradients of the same examples padded (float64,
1e-6), on the tiny models and the built-in one, with the attention implementation each uses
on the CPU; length grouping still shows every example once per pass."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from fedlora.models import resolve_model
from fedlora.train.adapters import attach_slots, live_lora, set_trainable, slot_name
from fedlora.train.batches import Encoded, collate
from fedlora.train.batching import GROUP_WINDOW, collate_packed, rows_of, sampler, slots
from fedlora.train.lm_loss import completion_only_loss


def examples(count: int, seed: int, vocab: int = 250) -> list[Encoded]:
    """Examples of lengths 2..40 with prompts of various lengths (one with none)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for k in range(count):
        n = int(torch.randint(2, 41, (1,), generator=gen))
        prompt = 0 if k == 1 else int(torch.randint(1, n, (1,), generator=gen))
        ids = torch.randint(3, vocab, (n,), generator=gen).tolist()
        out.append(Encoded(ids, [-100] * prompt + ids[prompt:]))
    return out


def trainable_model(name: str) -> tuple[torch.nn.Module, list[torch.nn.Parameter]]:
    base, _ = resolve_model(name, seed=0, dtype=torch.float64)
    model = attach_slots(base, [(4, 8.0)], "all-linear")
    slot = slot_name(4, 8.0)
    model.set_adapter(slot)
    params = set_trainable(model, slot, frozenset({"A", "B"}))
    with torch.no_grad():  # B = 0 at init would hide A's gradient
        for pair in live_lora(model, slot).values():
            pair.B.normal_(0, 0.1)
    return model, params


def assert_packed_equals_padded(model: torch.nn.Module, params: list, batch: list[Encoded]) -> None:
    padded, packed = collate(batch, pad_id=0), collate_packed(batch, pad_id=0, capacity=64)
    assert packed["input_ids"].shape[0] < len(batch)  # rows really were shared
    a = completion_only_loss(model, padded)
    b = completion_only_loss(model, packed)
    torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)
    for ga, gb in zip(torch.autograd.grad(a, params), torch.autograd.grad(b, params), strict=True):
        torch.testing.assert_close(gb, ga, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2"])
def test_a_packed_batch_has_the_loss_and_gradients_of_the_padded_one(name: str) -> None:
    model, params = trainable_model(name)
    assert_packed_equals_padded(model, params, examples(8, seed=1))


@pytest.mark.slow
def test_the_built_in_model_packs_exactly_too() -> None:
    model, params = trainable_model("smollm2-135m")
    assert_packed_equals_padded(model, params, examples(6, seed=2, vocab=49000))


def test_packing_places_every_example_once_within_capacity() -> None:
    lengths = [30, 5, 64, 12, 40, 1, 22, 60, 3]
    rows = rows_of(lengths, 64)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 64 for row in rows)
    # first-fit decreasing needs no more rows than the tokens need, rounded up, plus one
    assert len(rows) <= -(-sum(lengths) // 64) + 1


def test_packing_computes_fewer_slots_than_padding() -> None:
    batch = examples(8, seed=3)
    assert slots(collate_packed(batch, 0, 64)) < slots(collate(batch, 0))


def test_grouping_sees_every_example_once_per_pass_in_batches_of_similar_length() -> None:
    # Prepare
    batch_size, window = 4, 4 * GROUP_WINDOW
    data = examples(window * 3, seed=4)
    lengths = [len(e.input_ids) for e in data]

    # Execute: one pass
    draw = sampler(data, "group", batch_size, seed=9)
    batches = [draw.take(batch_size) for _ in range(len(data) // batch_size)]

    # Assert: every example once; within a batch lengths are close (sorted windows)
    assert Counter(i for b in batches for i in b) == Counter(range(len(data)))
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches)
    random_spread = sum(
        max(lengths[i] for i in b) - min(lengths[i] for i in b)
        for b in (sampler(data, "pad", batch_size, seed=9).take(batch_size) for _ in batches)
    )
    assert spread < random_spread / 3
    again = sampler(data, "group", batch_size, seed=9)
    assert [again.take(batch_size) for _ in batches] == batches
