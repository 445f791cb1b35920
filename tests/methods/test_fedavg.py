"""FedAvg / FedIT: separate averages of A and B, zero-padded across ranks."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_same, make_uploads, run_round, snapshot, tiny_setup, upload_weights

from fedlora.methods.common import fresh_lora
from fedlora.methods.fedavg import FedAvg, FedAvgConfig
from fedlora.methods.registry import build


def _padded_mean(uploads, setup, layer, part):
    """Dense reference: zero-pad every client's factor to the max rank, then average."""
    weights = upload_weights(uploads, setup.weighting)
    r_max = setup.max_rank
    acc = None
    for u in uploads:
        x = u.payload[f"{layer}.{part}"].double()
        r = x.shape[0] if part == "A" else x.shape[1]
        padded = torch.zeros(
            (r_max, x.shape[1]) if part == "A" else (x.shape[0], r_max), dtype=torch.float64
        )
        if part == "A":
            padded[:r] = x
        else:
            padded[:, :r] = x
        acc = weights[u.cid] * padded if acc is None else acc + weights[u.cid] * padded
    return acc


@pytest.mark.parametrize("weighting", ["samples", "uniform"])
@pytest.mark.parametrize("ranks", [(4, 4, 4), (2, 4, 6)])
def test_average_with_zero_padding_matches_dense_reference(ranks, weighting):
    # Prepare
    setup = tiny_setup(ranks, out_features=12, weighting=weighting)
    uploads = make_uploads(setup, torch.Generator().manual_seed(0))
    method = FedAvg(FedAvgConfig(), setup)
    before = snapshot(uploads)

    # Execute
    state = method.aggregate(method.init_server(), uploads)

    # Assert
    for layer in ("l0", "l1"):
        for part in ("A", "B"):
            ref = _padded_mean(uploads, setup, layer, part)
            torch.testing.assert_close(
                state.tensors[f"{layer}.{part}"].double(), ref, rtol=1e-6, atol=1e-6
            )
        b, a = method.global_delta(state)[layer]
        b_ref = _padded_mean(uploads, setup, layer, "B")
        ref = 2.0 * b_ref @ _padded_mean(uploads, setup, layer, "A")
        torch.testing.assert_close(b.double() @ a.double(), ref, rtol=1e-5, atol=1e-5)
    assert_same(before, uploads)


def test_client_order_changes_nothing_beyond_float_rounding():
    setup = tiny_setup((2, 4, 6))
    uploads = make_uploads(setup, torch.Generator().manual_seed(1))
    method = FedAvg(FedAvgConfig(), setup)
    state0 = method.init_server()

    forward = method.aggregate(state0, uploads)
    backward = method.aggregate(state0, list(reversed(uploads)))

    for name, t in forward.tensors.items():
        torch.testing.assert_close(t, backward.tensors[name], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("ranks", [(4, 4, 4), (2, 4, 6)])
def test_two_round_trip_clients_start_from_their_slice_of_the_average(ranks):
    # Prepare
    setup = tiny_setup(ranks)
    method = build("fedavg", setup=setup)

    # Execute
    r1 = run_round(method, method.init_server(), setup)
    r2 = run_round(method, r1.state, setup, views=r1.views)

    # Assert
    init = fresh_lora(setup, setup.max_rank, setup.seed)
    for c in setup.clients:
        assert torch.equal(r1.starts[c.cid].adapter["l0"].A, init["l0"].A[: c.rank])
        start = r2.starts[c.cid].adapter["l0"]
        assert torch.equal(start.A, r1.state.tensors["l0.A"][: c.rank])
        assert torch.equal(start.B, r1.state.tensors["l0.B"][:, : c.rank])
    assert r2.state.round == 2 and r2.merges[0] == {}
