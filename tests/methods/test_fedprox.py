"""FedProx: the proximal term and its gradient against the dense formula; FedAvg otherwise."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_same, make_uploads, random_lora, run_round, tiny_setup

from fedlora.errors import ConfigError
from fedlora.methods.base import ClientStart, LoraPair
from fedlora.methods.fedavg import FedAvg, FedAvgConfig
from fedlora.methods.fedprox import FedProx, FedProxConfig
from fedlora.methods.registry import build, make_config


def _leaf_copy(adapter):
    return {
        n: LoraPair(p.A.clone().requires_grad_(True), p.B.clone().requires_grad_(True))
        for n, p in adapter.items()
    }


@pytest.mark.parametrize("trainable", [frozenset({"A", "B"}), frozenset({"B"})])
def test_term_and_gradient_equal_the_dense_formula(trainable):
    # Prepare
    setup = tiny_setup((4, 4, 4))
    gen = torch.Generator().manual_seed(0)
    start = ClientStart(adapter=random_lora(setup, 4, gen, torch.float64), trainable=trainable)
    moved = random_lora(setup, 4, gen, torch.float64)
    current = _leaf_copy(moved)
    mu = 0.3
    method = FedProx(FedProxConfig(mu=mu), setup)
    expected = 0.0
    for n, p in moved.items():
        ref = start.adapter[n]
        if "A" in trainable:
            expected += float(((p.A - ref.A) ** 2).sum())
        if "B" in trainable:
            expected += float(((p.B - ref.B) ** 2).sum())
    expected *= mu / 2

    # Execute
    term = method.regulariser(current, start)
    term.backward()

    # Assert
    assert abs(float(term.detach()) - expected) < 1e-10 * expected
    for n, p in current.items():
        ref = start.adapter[n]
        torch.testing.assert_close(p.B.grad, mu * (moved[n].B - ref.B))
        if "A" in trainable:
            torch.testing.assert_close(p.A.grad, mu * (moved[n].A - ref.A))
        else:
            assert p.A.grad is None
    assert all(x.grad is None for pair in start.adapter.values() for x in pair)


def test_term_is_zero_at_the_start_and_absent_for_mu_zero():
    setup = tiny_setup((4, 4))
    start = ClientStart(adapter=random_lora(setup, 4, torch.Generator().manual_seed(1)))
    assert float(FedProx(FedProxConfig(), setup).regulariser(start.adapter, start).detach()) == 0.0
    assert FedProx(FedProxConfig(mu=0.0), setup).regulariser(start.adapter, start) is None


@pytest.mark.parametrize("mu", [-0.1, float("nan"), float("inf"), "big"])
def test_config_rejects_bad_mu(mu):
    with pytest.raises(ValueError, match="mu: must be"):
        FedProxConfig(mu=mu)
    with pytest.raises(ConfigError, match="method.fedprox: mu"):
        make_config("fedprox", {"mu": mu})


@pytest.mark.parametrize("ranks", [(4, 4, 4), (2, 4, 6)])
def test_rounds_are_fedavg_rounds(ranks):
    # Prepare
    setup = tiny_setup(ranks)
    prox, avg = build("fedprox", {"mu": 0.05}, setup=setup), FedAvg(FedAvgConfig(), setup)

    # Execute: the same two rounds (same fake training) with both methods
    p1 = run_round(prox, prox.init_server(), setup)
    a1 = run_round(avg, avg.init_server(), setup)
    p2 = run_round(prox, p1.state, setup, views=p1.views)
    a2 = run_round(avg, a1.state, setup, views=a1.views)

    # Assert
    assert_same(p2.state.tensors, a2.state.tensors)
    assert_same(p2.payloads, a2.payloads)
    uploads = make_uploads(setup, torch.Generator().manual_seed(2))
    assert_same(
        prox.aggregate(p1.state, uploads).tensors,
        avg.aggregate(p1.state, uploads).tensors,
    )
