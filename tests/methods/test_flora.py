"""FLoRA against dense float64 references."""

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

from fedlora.methods.common import fresh_lora
from fedlora.methods.flora import Flora, FloraConfig
from fedlora.methods.registry import build

HOMO, HETERO = (4, 4, 4), (2, 4, 6)


@pytest.mark.parametrize("weighting", ["samples", "uniform"])
@pytest.mark.parametrize("ranks", [HOMO, HETERO])
def test_aggregate_is_the_exact_stack(ranks, weighting):
    # Prepare
    setup = tiny_setup(ranks, out_features=12, weighting=weighting)
    uploads = make_uploads(setup, torch.Generator().manual_seed(0), torch.float64)
    method = Flora(FloraConfig(), setup)
    expected = reference_aggregate(uploads, setup)

    # Execute
    state = method.aggregate(method.init_server(), uploads)

    # Assert
    got = global_dense(method, state, setup)
    for layer, ref in expected.items():
        assert rel_err(got[layer], ref) < 1e-12
        assert state.meta["ranks"][layer] == sum(ranks)


def test_client_order_does_not_change_the_result_and_inputs_are_not_mutated():
    setup = tiny_setup(HETERO)
    uploads = make_uploads(setup, torch.Generator().manual_seed(1))
    method = Flora(FloraConfig(), setup)
    state0 = method.init_server()
    before = snapshot((state0, uploads))

    forward = method.aggregate(state0, uploads)
    backward = method.aggregate(state0, [uploads[2], uploads[0], uploads[1]])

    assert_same(forward.tensors, backward.tensors)
    assert_same(before, (state0, uploads))


@pytest.mark.parametrize("ranks", [HOMO, HETERO])
def test_two_round_trip_merges_each_stack_and_restarts_fresh(ranks):
    # Prepare
    setup = tiny_setup(ranks)
    method = build("flora", setup=setup)
    state = method.init_server()

    # Execute
    r1 = run_round(method, state, setup)
    r2 = run_round(method, r1.state, setup, views=r1.views, base=r1.base)

    # Assert: round 1 merges nothing, round 2 merges round 1's exact aggregate
    assert r1.merges[0] == {}
    t1, t2 = trained_sum(r1, setup), trained_sum(r2, setup)
    for layer in t1:
        assert rel_err(dense(r2.merges[1][layer]), t1[layer]) < 1e-6
        total = global_dense(method, r2.state, setup, r2.base)[layer]
        assert rel_err(total, t1[layer] + t2[layer]) < 1e-6
    for c in setup.clients:
        fresh = fresh_lora(setup, c.rank, 0)
        start = r2.starts[c.cid].adapter["l0"]
        assert start.A.shape == fresh["l0"].A.shape and torch.count_nonzero(start.B) == 0
    # Different runtime seeds give different fresh A's.
    assert not torch.equal(r2.starts[0].adapter["l0"].A, r1.starts[0].adapter["l0"].A)


def test_fresh_lora_follows_the_runtime_seed():
    setup = tiny_setup(HETERO)
    method = Flora(FloraConfig(), setup)
    state = method.init_server()
    client = setup.client(1)
    start = method.client_start(None, method.broadcast(state, client), client, 99)
    assert torch.equal(start.adapter["l1"].A, fresh_lora(setup, client.rank, 99)["l1"].A)


def test_aggregation_never_allocates_an_m_by_n_matrix():
    setup = tiny_setup((2, 2, 2), d=512, layers=1)
    uploads = make_uploads(setup, torch.Generator().manual_seed(2))
    method = Flora(FloraConfig(), setup)
    state0 = method.init_server()

    with MaxNumel() as rec:
        state = method.aggregate(state0, uploads)
        payload = method.broadcast(state, setup.clients[0])
        method.base_merge(payload)
        method.global_delta(state)

    assert rec.max_numel < 512 * 512 // 8, rec.op


def test_malformed_uploads_are_refused():
    from fedlora.errors import PayloadError

    setup = tiny_setup(HETERO)
    uploads = make_uploads(setup, torch.Generator().manual_seed(3))
    method = Flora(FloraConfig(), setup)
    state0 = method.init_server()
    with pytest.raises(PayloadError, match="uploaded twice"):
        method.aggregate(state0, [uploads[0], uploads[1], uploads[0]])
    rank4 = make_uploads(tiny_setup((4, 4, 4)), torch.Generator())[1].payload
    wrong = type(uploads[0])(0, 5, rank4)  # client 0 has rank 2
    with pytest.raises(PayloadError, match="expected rank 2"):
        method.aggregate(state0, [wrong, uploads[1]])
