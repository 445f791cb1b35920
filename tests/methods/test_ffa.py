"""FFA-LoRA: A frozen and shared, B averaged, only B on the wire."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import (
    assert_same,
    conforms,
    global_dense,
    perturb,
    rel_err,
    run_round,
    snapshot,
    tiny_setup,
    trained_sum,
)

from fedlora.methods.base import ClientSpec, ClientStart, Setup, Upload
from fedlora.methods.ffa import Ffa, FfaConfig, frozen_a
from fedlora.methods.registry import build
from fedlora.ops.seeded_init import portable_uniform
from fedlora.ops.sparse import Sparse


def _train_both(start: ClientStart, gen: torch.Generator):
    """A misbehaving trainer that also moves the frozen A."""
    return perturb(ClientStart(start.adapter, frozenset({"A", "B"})), gen)


def test_a_never_changes_and_only_b_crosses_the_wire():
    # Prepare
    setup = tiny_setup((4, 4, 4), out_features=12)
    method = build("ffa", setup=setup)
    a0 = frozen_a(setup, 4)

    # Execute: two rounds, the second with a trainer that (wrongly) moves A too
    r1 = run_round(method, method.init_server(), setup)
    r2 = run_round(method, r1.state, setup, views=r1.views, train=_train_both)

    # Assert
    for result in (r1, r2):
        for c in setup.clients:
            start = result.starts[c.cid]
            assert start.trainable == frozenset({"B"})
            assert set(result.payloads[c.cid]) == {"l0.B", "l1.B"}
            for layer, a in a0.items():
                assert torch.equal(start.adapter[layer].A, a)
        for up in result.uploads:
            assert set(up.payload) == {"l0.B", "l1.B"}
            assert conforms(up.payload, method.upload_schema(setup.client(up.cid)))
    for layer, a in a0.items():
        assert torch.equal(method.global_delta(r2.state)[layer][1], a)


def test_average_of_b_is_exact_with_the_shared_a():
    # Prepare
    setup = tiny_setup((4, 4, 4))
    method = Ffa(FfaConfig(), setup)

    # Execute
    r1 = run_round(method, method.init_server(), setup)

    # Assert
    total = sum(u.n_samples for u in r1.uploads)
    expected = trained_sum(r1, setup)
    for layer in expected:
        b_bar = sum(u.n_samples / total * r1.trained[u.cid][layer].B for u in r1.uploads)
        torch.testing.assert_close(r1.state.tensors[f"{layer}.B"], b_bar)
        assert rel_err(global_dense(method, r1.state, setup)[layer], expected[layer]) < 1e-5


def test_frozen_a_is_portable_per_layer_and_pefts_distribution():
    setup = tiny_setup((4, 4), d=16, layers=2)
    a = frozen_a(setup, 4)
    assert torch.equal(a["l0"], portable_uniform(setup.seed, (4, 16), -0.25, 0.25))
    assert torch.equal(a["l1"], portable_uniform(setup.seed, (4, 16), -0.25, 0.25, start=64))
    assert float(a["l0"].abs().max()) < 1 / math.sqrt(16)
    other = frozen_a(tiny_setup((4, 4), seed=1), 4)
    assert not torch.equal(a["l0"], other["l0"])


def test_client_order_does_not_change_the_result_and_inputs_are_not_mutated():
    setup = tiny_setup((4, 4, 4))
    method = Ffa(FfaConfig(), setup)
    state0 = method.init_server()
    gen = torch.Generator().manual_seed(0)
    uploads = [
        Upload(c.cid, 3 + c.cid, {f"l{i}.B": torch.randn(16, 4, generator=gen) for i in range(2)})
        for c in setup.clients
    ]
    before = snapshot((state0, uploads))

    forward = method.aggregate(state0, uploads)
    backward = method.aggregate(state0, list(reversed(uploads)))

    assert_same(forward.tensors, backward.tensors)
    assert_same(before, (state0, uploads))


@pytest.mark.parametrize(
    "clients",
    [
        (ClientSpec(0, 4, 8.0), ClientSpec(1, 8, 16.0), ClientSpec(2, 2, 4.0)),
        (ClientSpec(0, 4, 8.0), ClientSpec(1, 4, 4.0)),
    ],
)
def test_mixed_ranks_zero_pad_b_and_stay_exact(clients):
    # Prepare: clients of different ranks and scalings
    setup = Setup(tiny_setup().layers, clients)
    method = Ffa(FfaConfig(), setup)
    full = frozen_a(setup, setup.max_rank)
    # Execute: two rounds, so the second starts from the padded average
    r1 = run_round(method, method.init_server(), setup)
    r2 = run_round(method, r1.state, setup, views=r1.views)
    # Assert: each client's frozen A is the first rows of the shared one ...
    for c in setup.clients:
        for layer, a in full.items():
            assert torch.equal(r2.starts[c.cid].adapter[layer].A, a[: c.rank])
    # ... and the global update is exactly Σ p_k s_k B_k A_k (dense float64 reference)
    for result in (r1, r2):
        expected = trained_sum(result, setup)
        got = global_dense(method, result.state, setup)
        for layer in expected:
            assert rel_err(got[layer], expected[layer]) < 1e-6
    # ... and a client starts round 2 from its own slots of it: s_k B_k A_k = s_g B̄[:, :r_k] A
    s_g = setup.global_alpha / setup.max_rank
    for c in setup.clients:
        start = r2.starts[c.cid].adapter["l0"]
        b_bar = r1.state.tensors["l0.B"][:, : c.rank]
        torch.testing.assert_close(c.scaling * start.B, s_g * b_bar)


def test_round_one_broadcast_is_an_empty_sparse_b():
    setup = tiny_setup((4, 2))
    method = Ffa(FfaConfig(), setup)
    payload = method.broadcast(method.init_server(), setup.client(1))
    for name, entry in payload.items():
        assert isinstance(entry, Sparse) and entry.nnz == 0 and entry.shape == (16, 2), name
