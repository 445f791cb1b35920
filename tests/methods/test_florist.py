"""FLoRIST against dense float64 references."""

from __future__ import annotations

import pytest
import torch
from helpers import (
    MaxNumel,
    assert_same,
    dense,
    global_dense,
    make_uploads,
    reference_aggregate,
    rel_err,
    run_round,
    snapshot,
    tiny_setup,
    trained_sum,
)

from fedlora.errors import ConfigError
from fedlora.methods.base import LoraPair
from fedlora.methods.common import fresh_lora
from fedlora.methods.florist import Florist, FloristConfig
from fedlora.methods.registry import build, make_config

HOMO, HETERO = (4, 4, 4), (2, 4, 6)


def _energy_rank_dense(s: torch.Tensor, tau: float) -> int:
    energy = (s**2).tolist()
    total, acc = sum(energy), 0.0
    for k, e in enumerate(energy, start=1):
        acc += e
        if acc / total >= tau:
            return k
    return len(energy)


@pytest.mark.parametrize("ranks", [HOMO, HETERO])
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_tau_one_reproduces_the_exact_aggregate(ranks, dtype, tol):
    # Prepare
    setup = tiny_setup(ranks)
    uploads = make_uploads(setup, torch.Generator().manual_seed(0), dtype)
    method = Florist(FloristConfig(tau=1.0), setup)
    expected = reference_aggregate(uploads, setup)

    # Execute
    state = method.aggregate(method.init_server(), uploads)

    # Assert
    got = global_dense(method, state, setup)
    for layer in expected:
        assert rel_err(got[layer], expected[layer]) < tol
        # Generic random stacks have full rank Σ r_k (capped by d = 16).
        assert state.meta["ranks"][layer] == min(sum(ranks), 16)
        assert state.tensors[f"{layer}.A"].dtype == dtype


def test_energy_threshold_gives_dense_truncation_and_per_layer_ranks():
    # Prepare: layer l1's clients share one B direction, so its aggregate has rank 1
    setup = tiny_setup(HETERO)
    gen = torch.Generator().manual_seed(1)
    uploads = make_uploads(setup, gen, torch.float64)
    col = torch.randn(16, 1, generator=gen, dtype=torch.float64)
    for up in uploads:
        r = up.payload["l1.B"].shape[1]
        up.payload["l1.B"] = col @ torch.randn(1, r, generator=gen, dtype=torch.float64)
    tau = 0.9
    method = Florist(FloristConfig(tau=tau), setup)
    reference = reference_aggregate(uploads, setup)

    # Execute
    state = method.aggregate(method.init_server(), uploads)

    # Assert: rank per the energy rule on the dense spectrum, product = dense truncation
    got = global_dense(method, state, setup)
    for layer, ref in reference.items():
        u, s, vh = torch.linalg.svd(ref)
        k = _energy_rank_dense(s, tau)
        assert state.meta["ranks"][layer] == k
        assert rel_err(got[layer], (u[:, :k] * s[:k]) @ vh[:k]) < 1e-10
        a = state.tensors[f"{layer}.A"]
        torch.testing.assert_close(a @ a.T, torch.eye(k, dtype=torch.float64))
    assert state.meta["ranks"]["l1"] == 1 < state.meta["ranks"]["l0"]


def test_client_order_does_not_change_the_result_and_inputs_are_not_mutated():
    # Prepare
    setup = tiny_setup(HETERO)
    uploads = make_uploads(setup, torch.Generator().manual_seed(2))
    method = Florist(FloristConfig(tau=0.85), setup)
    state0 = method.init_server()
    before = snapshot((state0, uploads))

    # Execute
    forward = method.aggregate(state0, uploads)
    backward = method.aggregate(state0, list(reversed(uploads)))

    # Assert
    assert_same(forward.tensors, backward.tensors)
    assert forward.meta == backward.meta and forward.round == 1
    assert_same(before, (state0, uploads))


def test_warm_broadcast_truncates_or_pads_to_each_client_rank():
    # Prepare: clients 1 and 2 contribute rank 1 each, so the aggregate has rank 2+1+1 = 4
    setup = tiny_setup(HETERO, layers=1)
    uploads = make_uploads(setup, torch.Generator().manual_seed(3), torch.float64)
    for up in uploads[1:]:
        b = up.payload["l0.B"].clone()
        b[:, 1:] = 0.0
        up.payload["l0.B"] = b
    method = Florist(FloristConfig(tau=1.0), setup)
    state = method.aggregate(method.init_server(), uploads)
    k = state.meta["ranks"]["l0"]
    u, s, vh = torch.linalg.svd(reference_aggregate(uploads, setup)["l0"])

    for client in setup.clients:
        # Execute
        payload = method.broadcast(state, client)
        start = method.client_start(None, payload, client, seed=5)

        # Assert: the client's adapter is the dense top-min(k*, r) truncation, rank r
        pair = start.adapter["l0"]
        kept = min(k, client.rank)
        assert payload["l0.A"].shape[0] == kept  # nothing padded on the wire
        assert pair.A.shape == (client.rank, 16) and pair.B.shape == (16, client.rank)
        trunc = (u[:, :kept] * s[:kept]) @ vh[:kept]
        assert rel_err(client.scaling * dense((pair.B, pair.A)), trunc) < 1e-10
    assert k == 4  # between the ranks 2 and 6: covers truncation and padding


@pytest.mark.parametrize("mode", ["warm", "merge"])
@pytest.mark.parametrize("ranks", [HOMO, HETERO])
def test_two_round_trip_tracks_the_exact_aggregate_at_tau_one(mode, ranks):
    # Prepare
    setup = tiny_setup(ranks)
    method = build("florist", {"tau": 1.0, "mode": mode}, setup=setup)
    state = method.init_server()

    # Execute / Assert, round by round
    r1 = run_round(method, state, setup)
    assert r1.merges[0] == {}  # nothing merged before round 1 in either mode
    assert (
        rel_err(global_dense(method, r1.state, setup, r1.base)["l0"], trained_sum(r1, setup)["l0"])
        < 1e-5
    )
    r2 = run_round(method, r1.state, setup, views=r1.views, base=r1.base)
    target = trained_sum(r2, setup)
    if mode == "merge":
        # Round 2 merged round 1's aggregate into the base and trained fresh adapters.
        target = {n: t + trained_sum(r1, setup)[n] for n, t in target.items()}
        assert r2.merges[0] and all(
            torch.count_nonzero(r2.starts[c.cid].adapter["l0"].B) == 0 for c in setup.clients
        )
    for layer, ref in target.items():
        assert rel_err(global_dense(method, r2.state, setup, r2.base)[layer], ref) < 1e-5
    assert r2.state.round == 2 and set(r2.state.meta["ranks"]) == {"l0", "l1"}


def test_merge_mode_starts_a_fresh_lora_from_the_runtime_seed():
    # Prepare
    setup = tiny_setup(HETERO)
    method = Florist(FloristConfig(mode="merge"), setup)
    state = method.init_server()
    client = setup.client(2)
    payload = method.broadcast(state, client)

    # Execute
    start = method.client_start(None, payload, client, seed=77)

    # Assert
    expected = fresh_lora(setup, client.rank, 77)
    for layer, pair in expected.items():
        assert torch.equal(start.adapter[layer].A, pair.A)
        assert torch.equal(start.adapter[layer].B, pair.B)


def test_warm_round_one_starts_from_shared_lora_init():
    setup = tiny_setup(HETERO)
    method = Florist(FloristConfig(), setup)
    state = method.init_server()
    starts = [
        method.client_start(None, method.broadcast(state, c), c, c.cid) for c in setup.clients
    ]
    init = fresh_lora(setup, setup.max_rank, setup.seed)["l0"]
    for c, start in zip(setup.clients, starts, strict=True):
        assert torch.equal(start.adapter["l0"].A, init.A[: c.rank])
        assert torch.count_nonzero(start.adapter["l0"].B) == 0


def test_aggregation_never_allocates_an_m_by_n_matrix():
    # Prepare
    setup = tiny_setup((2, 2, 2), d=512, layers=1)
    uploads = make_uploads(setup, torch.Generator().manual_seed(4))
    method = Florist(FloristConfig(tau=1.0), setup)
    state0 = method.init_server()

    # Execute
    with MaxNumel() as rec:
        state = method.aggregate(state0, uploads)
        method.global_delta(state)
    with MaxNumel() as control:  # the guard does see a dense product
        _ = uploads[0].payload["l0.B"] @ uploads[0].payload["l0.A"]

    # Assert
    assert rec.max_numel < 512 * 512 // 8, rec.op
    assert control.max_numel == 512 * 512


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"tau": 1.5}, "tau: must be in \\(0, 1\\]; got 1.5"),
        ({"tau": 0.0}, "tau"),
        ({"mode": "cold"}, "mode: must be one of"),
        ({"tau": "high"}, "tau: must be a number"),
    ],
)
def test_config_rejects_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        FloristConfig(**options)
    with pytest.raises(ConfigError, match="method.florist"):
        make_config("florist", options)


def test_hetero_ranks_are_accepted():
    method = Florist(FloristConfig(), tiny_setup(HETERO))
    assert method.setup.max_rank == max(HETERO)


def test_broadcast_is_rescaled_when_client_scaling_differs():
    # Prepare: client 0 has alpha ratio 1 instead of 2
    base = tiny_setup((4, 4), layers=1)
    c0 = base.clients[0]
    setup = type(base)(base.layers, (type(c0)(0, 4, 4.0), base.clients[1]))
    uploads = make_uploads(setup, torch.Generator().manual_seed(5), torch.float64)
    method = Florist(FloristConfig(tau=1.0), setup)
    state = method.aggregate(method.init_server(), uploads)
    g = global_dense(method, state, setup)["l0"]
    u, s, vh = torch.linalg.svd(g)

    for client in setup.clients:
        # Execute
        start = method.client_start(None, method.broadcast(state, client), client, 0)

        # Assert: each client's s_k B A is the same top-4 truncation of the global update
        pair: LoraPair = start.adapter["l0"]
        top4 = (u[:, :4] * s[:4]) @ vh[:4]
        assert rel_err(client.scaling * dense((pair.B, pair.A)), top4) < 1e-10
