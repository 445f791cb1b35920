"""FedSVD: B averaged exactly against the shared A, then B̄·A re-factorised by an SVD into an
orthonormal A and B = U S (float64 references; d=16, r=4, K=3)."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_same, run_round, snapshot, tiny_setup

from fedlora.errors import ConfigError
from fedlora.methods import registry
from fedlora.methods.base import Setup
from fedlora.methods.fedsvd import refactorised


def run_rounds(method, setup: Setup, rounds: int):
    state = method.init_server()
    gen = torch.Generator().manual_seed(5)
    out = []
    for _ in range(rounds):
        res = run_round(method, state, setup, gen=gen)
        out.append((state, res))
        state = res.state
    return out


def test_refactorisation_keeps_the_product_and_orthonormalises_a() -> None:
    # Prepare: random float64 factors, one rank-deficient pair
    gen = torch.Generator().manual_seed(0)
    b = torch.randn(20, 4, generator=gen, dtype=torch.float64)
    a = torch.randn(4, 12, generator=gen, dtype=torch.float64)
    deficient = b.clone()
    deficient[:, 3] = deficient[:, 0]
    for left in (b, deficient):
        # Execute
        new = refactorised(left, a)
        # Assert: same product; A's rows orthonormal; B's columns orthogonal, norms descending
        torch.testing.assert_close(new.B @ new.A, left @ a, rtol=1e-10, atol=1e-10)
        kept = torch.linalg.matrix_rank(left @ a).item()
        torch.testing.assert_close(
            new.A[:kept] @ new.A[:kept].T, torch.eye(kept, dtype=torch.float64), atol=1e-10, rtol=0
        )
        gram = new.B.T @ new.B
        torch.testing.assert_close(gram, torch.diag(torch.diagonal(gram)), atol=1e-9, rtol=0)
        norms = torch.diagonal(gram)
        assert bool((norms[:-1] >= norms[1:] - 1e-9).all())


@pytest.mark.parametrize("weighting", ["samples", "uniform"])
def test_global_update_is_the_exact_mean_of_the_clients_products(weighting: str) -> None:
    setup = tiny_setup(weighting=weighting)
    method = registry.build("fedsvd", setup=setup)
    s = setup.clients[0].scaling
    for before, res in run_rounds(method, setup, 3):
        total = sum(u.n_samples for u in res.uploads)
        w = {
            u.cid: (u.n_samples / total if weighting == "samples" else 1 / len(res.uploads))
            for u in res.uploads
        }
        for layer, (left, right) in method.global_delta(res.state).items():
            a_start = before.tensors[f"{layer}.A"].double()
            ref = sum(p * s * res.trained[c][layer].B.double() @ a_start for c, p in w.items())
            torch.testing.assert_close(left.double() @ right.double(), ref, rtol=1e-5, atol=1e-6)
            new_a = res.state.tensors[f"{layer}.A"].double()
            torch.testing.assert_close(
                new_a @ new_a.T, torch.eye(4, dtype=torch.float64), atol=1e-5, rtol=0
            )


def test_clients_train_b_only_and_send_only_b() -> None:
    setup = tiny_setup()
    method = registry.build("fedsvd", setup=setup)
    for before, res in run_rounds(method, setup, 2):
        for cid, start in res.starts.items():
            assert start.trainable == frozenset({"B"})
            for layer, pair in res.trained[cid].items():
                assert torch.equal(pair.A, start.adapter[layer].A)
        for u in res.uploads:
            assert sorted(u.payload) == ["l0.B", "l1.B"]
        if before.round > 0:
            payload = method.broadcast(before, setup.clients[0])
            assert sorted(payload) == ["l0.A", "l0.B", "l1.A", "l1.B"]


def test_result_does_not_depend_on_upload_order_or_mutate_inputs() -> None:
    setup = tiny_setup()
    method = registry.build("fedsvd", setup=setup)
    state = method.init_server()
    forward = run_round(method, state, setup, gen=torch.Generator().manual_seed(3))
    backward = run_round(
        method, state, setup, gen=torch.Generator().manual_seed(3), upload_order=[1, 2, 0]
    )
    assert_same(forward.state, backward.state)
    before = (snapshot(state), snapshot(forward.uploads))
    method.aggregate(state, forward.uploads)
    assert_same(before, (state, forward.uploads))


def test_heterogeneous_ranks_are_refused() -> None:
    with pytest.raises(ConfigError, match="same LoRA rank"):
        registry.build("fedsvd", setup=tiny_setup(ranks=(4, 8, 4)))
