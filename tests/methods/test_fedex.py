"""FedEx-LoRA against dense float64 references."""

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
    upload_weights,
)

from fedlora.errors import ConfigError
from fedlora.methods.base import ClientSpec, Setup
from fedlora.methods.fedex import FedEx, FedExConfig
from fedlora.methods.registry import build, make_config


@pytest.mark.parametrize("compress", [True, False])
def test_mean_plus_residual_is_the_exact_average(compress):
    # Prepare: a non-square layer (m=12, n=16) so a transposed residual could not pass
    setup = tiny_setup((4, 4, 4), out_features=12)
    uploads = make_uploads(setup, torch.Generator().manual_seed(0), torch.float64)
    method = FedEx(FedExConfig(compress=compress), setup)
    weights = upload_weights(uploads)
    expected = reference_aggregate(uploads, setup)
    s = setup.clients[0].scaling

    # Execute
    state = method.aggregate(method.init_server(), uploads)

    # Assert
    for layer, ref in expected.items():
        a_bar = sum(weights[u.cid] * u.payload[f"{layer}.A"] for u in uploads)
        b_bar = sum(weights[u.cid] * u.payload[f"{layer}.B"] for u in uploads)
        torch.testing.assert_close(state.tensors[f"{layer}.A"], a_bar, rtol=0, atol=1e-12)
        torch.testing.assert_close(state.tensors[f"{layer}.B"], b_bar, rtol=0, atol=1e-12)
        res = dense((state.tensors[f"{layer}.res_L"], state.tensors[f"{layer}.res_R"]))
        assert res.shape == (12, 16)
        assert rel_err(s * b_bar @ a_bar + res, ref) < 1e-10
        assert rel_err(global_dense(method, state, setup)[layer], ref) < 1e-10
        # Rank bound: (K-1)·r after compression, K·r for the raw covariance stack.
        assert state.meta["residual_ranks"][layer] == (8 if compress else 12)


def test_client_order_does_not_change_the_result_and_inputs_are_not_mutated():
    setup = tiny_setup((4, 4, 4))
    uploads = make_uploads(setup, torch.Generator().manual_seed(1))
    method = FedEx(FedExConfig(), setup)
    state0 = method.init_server()
    before = snapshot((state0, uploads))

    forward = method.aggregate(state0, uploads)
    backward = method.aggregate(state0, list(reversed(uploads)))

    assert_same(forward.tensors, backward.tensors)
    assert_same(before, (state0, uploads))


def test_two_round_trip_accumulates_residuals_in_the_base():
    # Prepare
    setup = tiny_setup((4, 4, 4))
    method = build("fedex", setup=setup)

    # Execute
    r1 = run_round(method, method.init_server(), setup)
    r2 = run_round(method, r1.state, setup, views=r1.views, base=r1.base)

    # Assert: round 2 merges round 1's residual and starts from (Ā, B̄)
    assert r1.merges[0] == {}
    s = setup.clients[0].scaling
    t1, t2 = trained_sum(r1, setup), trained_sum(r2, setup)
    for layer in t1:
        a_bar, b_bar = r1.state.tensors[f"{layer}.A"], r1.state.tensors[f"{layer}.B"]
        assert rel_err(dense(r2.merges[0][layer]) + s * dense((b_bar, a_bar)), t1[layer]) < 1e-5
        for c in setup.clients:
            assert torch.equal(r2.starts[c.cid].adapter[layer].A, a_bar)
            assert torch.equal(r2.starts[c.cid].adapter[layer].B, b_bar)
        # Global model after round 2: merged residual of round 1 + exact round-2 average.
        got = global_dense(method, r2.state, setup, r2.base)[layer]
        assert rel_err(got, dense(r2.merges[0][layer]) + t2[layer]) < 1e-5


@pytest.mark.parametrize(
    "clients",
    [
        (ClientSpec(0, 4, 8.0), ClientSpec(1, 8, 16.0)),  # ranks differ
        (ClientSpec(0, 4, 8.0), ClientSpec(1, 4, 4.0)),  # same rank, alphas differ
    ],
)
def test_heterogeneous_clients_are_refused(clients):
    setup = Setup(tiny_setup().layers, clients)
    with pytest.raises(ConfigError, match="same LoRA rank and alpha"):
        FedEx(FedExConfig(), setup)


def test_config_rejects_non_boolean_compress():
    with pytest.raises(ConfigError, match="method.fedex: compress"):
        make_config("fedex", {"compress": "yes"})


def test_aggregation_never_allocates_an_m_by_n_matrix():
    setup = tiny_setup((2, 2, 2), d=512, layers=1)
    uploads = make_uploads(setup, torch.Generator().manual_seed(2))
    method = FedEx(FedExConfig(), setup)
    state0 = method.init_server()

    with MaxNumel() as rec:
        state = method.aggregate(state0, uploads)
        method.base_merge(method.broadcast(state, setup.clients[0]))
        method.global_delta(state)

    assert rec.max_numel < 512 * 512 // 8, rec.op
