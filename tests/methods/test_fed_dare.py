"""Fed-DARE: seeded DARE uploads, averaged sparse deltas, bit-identical sync (d=16, r=4, K=3)."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_same, conforms, run_round, snapshot, tiny_setup

from fedlora.errors import ConfigError, PayloadError
from fedlora.methods import registry
from fedlora.methods.base import ServerState, Setup
from fedlora.ops.prng import seeded_keep_mask


def run_rounds(method, setup: Setup, rounds: int, state: ServerState | None = None):
    state = state if state is not None else method.init_server()
    gen = torch.Generator().manual_seed(7)
    views, results = None, []
    for _ in range(rounds):
        res = run_round(method, state, setup, gen=gen, views=views)
        results.append(res)
        state, views = res.state, res.views
    return results


def weights_of(res) -> dict[int, float]:
    total = sum(u.n_samples for u in res.uploads)
    return {u.cid: u.n_samples / total for u in res.uploads}


@pytest.mark.parametrize("value", [1.0, -0.1, "0.5", True])
def test_bad_drop_probability_is_refused(value: object) -> None:
    with pytest.raises(ConfigError, match="p_up"):
        registry.make_config("fed_dare", {"p_up": value})


def test_heterogeneous_ranks_are_refused() -> None:
    with pytest.raises(ConfigError, match="same LoRA rank"):
        registry.build("fed_dare", setup=tiny_setup(ranks=(4, 8, 4)))


def test_upload_is_the_seeded_dare_of_the_delta() -> None:
    # Prepare
    setup = tiny_setup()
    method = registry.build("fed_dare", setup=setup)
    (res,) = run_rounds(method, setup, 1)
    for u in res.uploads:
        view, trained = res.starts[u.cid].view, res.trained[u.cid]
        assert conforms(u.payload, method.upload_schema(setup.client(u.cid)))
        for s in setup.layers:
            for part in ("A", "B"):
                sparse = u.payload[f"{s.name}.d{part}"]
                new = getattr(trained[s.name], part).double()
                delta = new - view[f"{s.name}.{part}"].double()
                # Assert: positions regenerable from the seed, survivors scaled by 1/(1 − 0.9)
                mask = seeded_keep_mask(sparse.mask_seed, delta.numel(), 0.1)
                assert torch.equal(sparse.indices, mask.nonzero().reshape(-1))
                expected = torch.where(mask.reshape(delta.shape), delta / 0.1, 0.0)
                torch.testing.assert_close(
                    sparse.to_dense().double(), expected, rtol=1e-5, atol=1e-6
                )


def test_masks_differ_between_clients_layers_and_rounds() -> None:
    setup = tiny_setup()
    method = registry.build("fed_dare", setup=setup)
    r1, r2 = run_rounds(method, setup, 2)
    seeds = [sp.mask_seed for r in (r1, r2) for u in r.uploads for sp in u.payload.values()]
    assert len(set(seeds)) == len(seeds) == 2 * 3 * 2 * 2


def test_no_drop_is_fedavg_of_the_factors() -> None:
    # Prepare
    setup = tiny_setup()
    method = registry.build("fed_dare", {"p_up": 0.0}, setup=setup)
    # Execute
    (res,) = run_rounds(method, setup, 1)
    # Assert: A + Σ p_k (A_k − A) = Σ p_k A_k
    w = weights_of(res)
    for s in setup.layers:
        for part in ("A", "B"):
            avg = sum(p * getattr(res.trained[c][s.name], part).double() for c, p in w.items())
            torch.testing.assert_close(
                res.state.tensors[f"{s.name}.{part}"].double(), avg, rtol=1e-5, atol=1e-6
            )


def test_server_adds_the_weighted_average_of_sparse_deltas() -> None:
    # Prepare
    setup = tiny_setup()
    method = registry.build("fed_dare", setup=setup)
    state0 = method.init_server()
    (res,) = run_rounds(method, setup, 1, state=state0)
    w = weights_of(res)
    for s in setup.layers:
        for part in ("A", "B"):
            prev = state0.tensors[f"{s.name}.{part}"].double()
            # dense float64 reference built from the trained factors and the uploads' seeds
            ref = prev.clone()
            for u in res.uploads:
                seed = u.payload[f"{s.name}.d{part}"].mask_seed
                mask = seeded_keep_mask(seed, prev.numel(), 0.1).reshape(prev.shape)
                delta = getattr(res.trained[u.cid][s.name], part).double() - prev
                ref += w[u.cid] * torch.where(mask, delta / 0.1, 0.0)
            torch.testing.assert_close(
                res.state.tensors[f"{s.name}.{part}"].double(), ref, rtol=1e-5, atol=1e-6
            )


def test_broadcast_is_the_sparse_union_of_the_uploads() -> None:
    setup = tiny_setup()
    method = registry.build("fed_dare", setup=setup)
    state0 = method.init_server()
    (res,) = run_rounds(method, setup, 1, state=state0)
    payload = method.broadcast(res.state, setup.clients[0])
    assert sorted(payload) == ["l0.dA", "l0.dB", "l1.dA", "l1.dB"]
    for name, sparse in payload.items():
        union = set()
        for u in res.uploads:
            union |= set(u.payload[name].indices.tolist())
        # the union of the clients' kept positions (less exact cancellations: none here)
        assert set(sparse.indices.tolist()) == union
        assert bool((sparse.values != 0).all())
        layer, part = name.split(".")
        applied = res.state.tensors[f"{layer}.{part[1]}"] - state0.tensors[f"{layer}.{part[1]}"]
        torch.testing.assert_close(sparse.to_dense(), applied, rtol=1e-6, atol=1e-7)


def test_server_and_clients_stay_bit_identical() -> None:
    setup = tiny_setup()
    method = registry.build("fed_dare", setup=setup)
    results = run_rounds(method, setup, 4)
    states = [method.init_server()] + [r.state for r in results]
    for res, state in zip(results, states, strict=False):
        for cid, view in res.views.items():
            for key in (f"{s.name}.{p}" for s in setup.layers for p in ("A", "B")):
                assert torch.equal(
                    view[key].view(torch.int32), state.tensors[key].view(torch.int32)
                ), (state.round, cid, key)


def test_result_does_not_depend_on_upload_order() -> None:
    setup = tiny_setup()
    method = registry.build("fed_dare", setup=setup)
    state = method.init_server()
    forward = run_round(method, state, setup, gen=torch.Generator().manual_seed(3))
    backward = run_round(
        method, state, setup, gen=torch.Generator().manual_seed(3), upload_order=[1, 2, 0]
    )
    assert_same(forward.state, backward.state)


def test_aggregate_does_not_mutate_its_inputs() -> None:
    setup = tiny_setup()
    method = registry.build("fed_dare", setup=setup)
    state = method.init_server()
    res = run_round(method, state, setup)
    before = (snapshot(state), snapshot(res.uploads))
    method.aggregate(state, res.uploads)
    assert_same(before, (state, res.uploads))


def test_delta_without_a_synced_view_is_refused() -> None:
    setup = tiny_setup()
    method = registry.build("fed_dare", setup=setup)
    (res,) = run_rounds(method, setup, 1)
    client = setup.clients[0]
    with pytest.raises(PayloadError, match="missed"):
        method.client_start(None, method.broadcast(res.state, client), client, 0)


def test_global_delta_is_scaled_b_and_a() -> None:
    setup = tiny_setup()
    method = registry.build("fed_dare", setup=setup)
    (res,) = run_rounds(method, setup, 1)
    for layer, (left, right) in method.global_delta(res.state).items():
        assert torch.equal(left, setup.clients[0].scaling * res.state.tensors[f"{layer}.B"])
        assert torch.equal(right, res.state.tensors[f"{layer}.A"])
