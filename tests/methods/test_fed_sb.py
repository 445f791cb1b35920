"""Fed-SB: fixed seeded B and A around a trained r×r core; the server averages the cores,
which is exact (float64 references; d=16, r=4, K=3)."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_same, run_round, snapshot, tiny_setup

from fedlora.errors import ConfigError
from fedlora.methods import registry
from fedlora.methods.base import Setup
from fedlora.methods.fed_sb import fixed_factors


def run_rounds(method, setup: Setup, rounds: int):
    state = method.init_server()
    gen = torch.Generator().manual_seed(9)
    out = []
    for _ in range(rounds):
        res = run_round(method, state, setup, gen=gen)
        out.append(res)
        state = res.state
    return out


def test_fixed_factors_are_seeded_unit_variance_and_differ_per_layer() -> None:
    setup = tiny_setup(d=256, layers=2)
    f0, again = fixed_factors(setup, "l0"), fixed_factors(setup, "l0")
    assert torch.equal(f0.B, again.B) and torch.equal(f0.A, again.A)
    assert not torch.equal(f0.B, fixed_factors(setup, "l1").B)
    # columns of B and rows of A have unit expected squared norm (nearly orthonormal)
    torch.testing.assert_close((f0.B.T @ f0.B).diagonal(), torch.ones(4), atol=0.3, rtol=0)
    torch.testing.assert_close((f0.A @ f0.A.T).diagonal(), torch.ones(4), atol=0.3, rtol=0)


@pytest.mark.parametrize("weighting", ["samples", "uniform"])
def test_global_update_is_the_exact_mean_of_the_clients_products(weighting: str) -> None:
    setup = tiny_setup(weighting=weighting)
    method = registry.build("fed_sb", setup=setup)
    s = setup.clients[0].scaling
    for res in run_rounds(method, setup, 3):
        total = sum(u.n_samples for u in res.uploads)
        w = {
            u.cid: (u.n_samples / total if weighting == "samples" else 1 / len(res.uploads))
            for u in res.uploads
        }
        for layer, (left, right) in method.global_delta(res.state).items():
            fixed = fixed_factors(setup, layer)
            b, a = fixed.B.double(), fixed.A.double()
            # the client's trained model is s·B·R_k·A (its "B" entry is the core R_k)
            ref = sum(p * s * b @ res.trained[c][layer].B.double() @ a for c, p in w.items())
            torch.testing.assert_close(left.double() @ right.double(), ref, rtol=1e-5, atol=1e-6)


def test_only_the_core_trains_and_travels() -> None:
    setup = tiny_setup()
    method = registry.build("fed_sb", setup=setup)
    for res in run_rounds(method, setup, 2):
        for cid, start in res.starts.items():
            assert start.trainable == frozenset({"B"})
            for layer, pair in start.adapter.items():
                fixed = fixed_factors(setup, layer)
                assert torch.equal(pair.A, fixed.A) and torch.equal(start.b_basis[layer], fixed.B)
                assert tuple(pair.B.shape) == (4, 4)
                assert torch.equal(res.trained[cid][layer].A, fixed.A)
        for u in res.uploads:
            assert {k: tuple(v.shape) for k, v in u.payload.items()} == {
                "l0.R": (4, 4),
                "l1.R": (4, 4),
            }
    payload = method.broadcast(res.state, setup.clients[0])
    assert {k: tuple(v.shape) for k, v in payload.items()} == {"l0.R": (4, 4), "l1.R": (4, 4)}


def test_result_does_not_depend_on_upload_order_or_mutate_inputs() -> None:
    setup = tiny_setup()
    method = registry.build("fed_sb", setup=setup)
    state = method.init_server()
    forward = run_round(method, state, setup, gen=torch.Generator().manual_seed(3))
    backward = run_round(
        method, state, setup, gen=torch.Generator().manual_seed(3), upload_order=[2, 1, 0]
    )
    assert_same(forward.state, backward.state)
    before = (snapshot(state), snapshot(forward.uploads))
    method.aggregate(state, forward.uploads)
    assert_same(before, (state, forward.uploads))


def test_heterogeneous_ranks_are_refused() -> None:
    with pytest.raises(ConfigError, match="same LoRA rank"):
        registry.build("fed_sb", setup=tiny_setup(ranks=(4, 8, 4)))
