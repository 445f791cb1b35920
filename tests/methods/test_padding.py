"""The pad rule (``pad = "fresh" | "zeros"``) of every method that pads a client's adapter:
FLoRIST (warm), FlexLoRA, FedAvg and FedProx with mixed ranks."""

from __future__ import annotations

import pytest
import torch
from helpers import dense, make_uploads, tiny_setup

from fedlora.errors import ConfigError
from fedlora.methods.base import Lora, Setup
from fedlora.methods.common import revive_dead_slots
from fedlora.methods.registry import build, make_config

PADDING_METHODS = ["florist", "flexlora", "fedavg", "fedprox"]


def dead_slots(adapter: Lora) -> dict[str, list[int]]:
    """Slots whose A row and B column are both zero, per layer."""
    return {
        layer: [j for j in range(a.shape[0]) if not a[j].any() and not b[:, j].any()]
        for layer, (a, b) in adapter.items()
    }


def gradient_reaches(adapter: Lora, layer: str, slot: int) -> bool:
    """Whether one gradient step of a generic loss on ``B A x`` moves ``slot`` of ``layer``."""
    a, b = (t.clone().double().requires_grad_(True) for t in adapter[layer])
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(a.shape[1], 3, generator=gen, dtype=torch.float64)
    y = torch.randn(b.shape[0], 3, generator=gen, dtype=torch.float64)
    loss = ((b @ (a @ x)) - y).pow(2).sum()
    grad_a, grad_b = torch.autograd.grad(loss, (a, b))
    return bool(grad_a[slot].any() or grad_b[:, slot].any())


def start_with_dead_slots(name: str, pad: str, setup: Setup):
    """Round 2's start of the rank-6 client after a round in which only one rank-2 client
    uploaded (the aggregate has rank 2 < 6, FLoRIST's k* too), so slots 2..5 carry nothing."""
    method = build(name, {"pad": pad, **({"tau": 1.0} if name == "florist" else {})}, setup=setup)
    gen = torch.Generator().manual_seed(3)
    uploads = [u for u in make_uploads(setup, gen) if u.cid == 1]
    state = method.aggregate(method.init_server(), uploads)
    client = setup.client(0)
    payload = method.broadcast(state, client)
    return method, state, method.client_start(None, payload, client, seed=11)


@pytest.mark.parametrize("name", PADDING_METHODS)
def test_fresh_padding_revives_slots_and_keeps_the_product(name: str) -> None:
    # Prepare
    setup = tiny_setup(ranks=(6, 2, 2))
    # Execute
    _, _, zeros = start_with_dead_slots(name, "zeros", setup)
    _, _, fresh = start_with_dead_slots(name, "fresh", setup)
    # Assert: zeros leaves slots 2..5 dead (no gradient reaches them); fresh leaves none dead,
    # the revived slots train, and both start from the same product B A
    for layer in ("l0", "l1"):
        assert dead_slots(zeros.adapter)[layer] == [2, 3, 4, 5]
        assert not any(gradient_reaches(zeros.adapter, layer, j) for j in range(2, 6))
        assert dead_slots(fresh.adapter)[layer] == []
        assert all(gradient_reaches(fresh.adapter, layer, j) for j in range(2, 6))
        torch.testing.assert_close(
            dense(fresh.adapter[layer][::-1]), dense(zeros.adapter[layer][::-1]), rtol=0, atol=0
        )
        # live slots are the broadcast's, untouched
        torch.testing.assert_close(fresh.adapter[layer].A[:2], zeros.adapter[layer].A[:2])


@pytest.mark.parametrize("name", PADDING_METHODS)
def test_default_pad_is_fresh_and_bad_values_are_refused(name: str) -> None:
    assert make_config(name).pad == "fresh"
    with pytest.raises(ConfigError, match=f"method.{name}: pad: must be one of fresh, zeros"):
        make_config(name, {"pad": "random"})


def test_revived_rows_are_pefts_init_shared_by_every_client() -> None:
    # Prepare: one dead slot (index 1) in an adapter of rank 3
    setup = tiny_setup(ranks=(3, 3))
    a = torch.randn(3, 16, generator=torch.Generator().manual_seed(0))
    b = torch.randn(16, 3, generator=torch.Generator().manual_seed(1))
    a[1], b[:, 1] = 0.0, 0.0
    # Execute
    first = revive_dead_slots({"l0": (a, b)}, setup)["l0"]
    again = revive_dead_slots({"l0": (a, b)}, setup)["l0"]
    # Assert: deterministic from the run seed, inside PEFT's bound 1/sqrt(n), B untouched
    assert torch.equal(first.A, again.A)
    assert first.A[1].any() and float(first.A[1].abs().max()) <= 0.25
    assert torch.equal(first.A[[0, 2]], a[[0, 2]]) and torch.equal(first.B, b)
