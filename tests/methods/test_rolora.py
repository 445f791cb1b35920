"""RoLoRA: odd rounds train and average B, even rounds A; each average is exact against a
dense float64 reference of the clients' own products (d=16, r=4, K=3)."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_same, run_round, snapshot, tiny_setup

from fedlora.errors import ConfigError
from fedlora.methods import registry
from fedlora.methods.base import ServerState, Setup
from fedlora.methods.rolora import trained_factor
from fedlora.ops.sparse import Sparse


def run_rounds(method, setup: Setup, rounds: int):
    state: ServerState = method.init_server()
    gen = torch.Generator().manual_seed(11)
    views, results = None, []
    for _ in range(rounds):
        res = run_round(method, state, setup, gen=gen, views=views)
        results.append(res)
        state, views = res.state, res.views
    return results


def weights_of(res) -> dict[int, float]:
    total = sum(u.n_samples for u in res.uploads)
    return {u.cid: u.n_samples / total for u in res.uploads}


def test_factor_alternates_starting_with_b() -> None:
    assert [trained_factor(t) for t in range(1, 5)] == ["B", "A", "B", "A"]
    with pytest.raises(ValueError, match="from 1"):
        trained_factor(0)


def test_clients_train_only_the_rounds_factor() -> None:
    setup = tiny_setup()
    method = registry.build("rolora", setup=setup)
    results = run_rounds(method, setup, 4)
    for t, res in enumerate(results, start=1):
        factor = trained_factor(t)
        for start in res.starts.values():
            assert start.trainable == frozenset({factor})
        for u in res.uploads:
            frozen = "A" if factor == "B" else "B"
            for s in setup.layers:
                entry = u.payload[f"{s.name}.d{frozen}"]
                assert isinstance(entry, Sparse) and entry.nnz == 0


@pytest.mark.parametrize("weighting", ["samples", "uniform"])
def test_each_round_is_the_exact_mean_of_the_clients_products(weighting: str) -> None:
    # Prepare: float64 dense reference Σ p_k s·B_k·A_k of what each client trained
    setup = tiny_setup(weighting=weighting)
    method = registry.build("rolora", setup=setup)
    s = setup.clients[0].scaling
    for res in run_rounds(method, setup, 4):
        if weighting == "samples":
            w = weights_of(res)
        else:
            w = {u.cid: 1 / len(res.uploads) for u in res.uploads}
        for layer, (left, right) in method.global_delta(res.state).items():
            ref = sum(
                p * s * res.trained[c][layer].B.double() @ res.trained[c][layer].A.double()
                for c, p in w.items()
            )
            got = left.double() @ right.double()
            # Assert: the shared frozen factor makes the average of one factor exact
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_the_frozen_factor_never_changes_in_its_round() -> None:
    setup = tiny_setup()
    method = registry.build("rolora", setup=setup)
    prev = method.init_server()
    for t, res in enumerate(run_rounds(method, setup, 3), start=1):
        frozen = "A" if trained_factor(t) == "B" else "B"
        for sp in setup.layers:
            key = f"{sp.name}.{frozen}"
            assert torch.equal(res.state.tensors[key], prev.tensors[key])
        payload = method.broadcast(res.state, setup.clients[0])
        assert sorted(payload) == sorted(f"{sp.name}.d{trained_factor(t)}" for sp in setup.layers)
        prev = res.state


def test_server_and_clients_stay_bit_identical() -> None:
    setup = tiny_setup()
    method = registry.build("rolora", setup=setup)
    results = run_rounds(method, setup, 4)
    states = [method.init_server()] + [r.state for r in results]
    for res, state in zip(results, states, strict=False):
        for view in res.views.values():
            for key in (f"{s.name}.{p}" for s in setup.layers for p in ("A", "B")):
                assert torch.equal(view[key], state.tensors[key])


def test_a_lying_upload_of_the_frozen_factor_is_ignored() -> None:
    setup = tiny_setup()
    method = registry.build("rolora", setup=setup)
    state = method.init_server()
    res = run_round(method, state, setup)
    forged = [
        type(u)(u.cid, u.n_samples, {**u.payload, "l0.dA": torch.ones(4, 16)}) for u in res.uploads
    ]
    assert_same(method.aggregate(state, forged), res.state)


def test_result_does_not_depend_on_upload_order_or_mutate_inputs() -> None:
    setup = tiny_setup()
    method = registry.build("rolora", setup=setup)
    state = method.init_server()
    forward = run_round(method, state, setup, gen=torch.Generator().manual_seed(3))
    backward = run_round(
        method, state, setup, gen=torch.Generator().manual_seed(3), upload_order=[2, 0, 1]
    )
    assert_same(forward.state, backward.state)
    before = (snapshot(state), snapshot(forward.uploads))
    method.aggregate(state, forward.uploads)
    assert_same(before, (state, forward.uploads))


def test_heterogeneous_ranks_are_refused() -> None:
    with pytest.raises(ConfigError, match="same LoRA rank"):
        registry.build("rolora", setup=tiny_setup(ranks=(4, 8, 4)))
