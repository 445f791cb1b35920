"""FedSA-LoRA: A averaged and shared, B kept by each client (float64 references; d=16, r=4,
K=3)."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_same, run_round, snapshot, tiny_setup

from fedlora.errors import ConfigError
from fedlora.methods import registry
from fedlora.methods.base import Setup


def run_rounds(method, setup: Setup, rounds: int):
    state = method.init_server()
    gen = torch.Generator().manual_seed(21)
    own: dict = {}
    out = []
    for _ in range(rounds):
        res = run_round(method, state, setup, gen=gen, own=own)
        out.append((state, own, res))
        state, own = res.state, res.own
    return out


def test_server_averages_a_only_and_uploads_carry_a_only() -> None:
    setup = tiny_setup()
    method = registry.build("fedsa", setup=setup)
    for _, _, res in run_rounds(method, setup, 2):
        total = sum(u.n_samples for u in res.uploads)
        for u in res.uploads:
            assert sorted(u.payload) == ["l0.A", "l1.A"]
        for s in setup.layers:
            ref = sum(
                u.n_samples / total * res.trained[u.cid][s.name].A.double() for u in res.uploads
            )
            torch.testing.assert_close(
                res.state.tensors[f"{s.name}.A"].double(), ref, rtol=1e-6, atol=1e-7
            )


def test_each_client_trains_from_the_shared_a_and_its_own_b() -> None:
    setup = tiny_setup()
    method = registry.build("fedsa", setup=setup)
    rounds = run_rounds(method, setup, 3)
    for before, _, res in rounds:
        for cid, start in res.starts.items():
            # the shared start: Ā and B = 0, what the server mirrors
            for s in setup.layers:
                if before.round:
                    assert torch.equal(start.adapter[s.name].A, before.tensors[f"{s.name}.A"])
                assert not bool(start.adapter[s.name].B.any())
            kept = res.own[cid]
            for s in setup.layers:
                assert torch.equal(kept[f"{s.name}.B"], res.trained[cid][s.name].B)
    # a client's B continues from its own last B (perturb moves it by noise, never resets)
    _, own2, r2 = rounds[1]
    for cid in r2.trained:
        for s in setup.layers:
            moved = r2.trained[cid][s.name].B - own2[cid][f"{s.name}.B"]
            assert float(moved.abs().max()) < 1.0  # a small step from its own B, not from 0
            assert float(own2[cid][f"{s.name}.B"].abs().max()) > 0


def test_own_model_is_the_clients_b_on_the_shared_a() -> None:
    setup = tiny_setup()
    method = registry.build("fedsa", setup=setup)
    ((_, _, res),) = run_rounds(method, setup, 1)
    update = method.global_delta(res.state)
    for left, _ in update.values():
        assert not bool(left.any())  # the shared model is the base
    for cid, own in res.own.items():
        client = setup.client(cid)
        mine = method.own_update(update, own, client)
        for s in setup.layers:
            ref = (
                client.scaling
                * own[f"{s.name}.B"].double()
                @ res.state.tensors[f"{s.name}.A"].double()
            )
            left, right = mine[s.name]
            torch.testing.assert_close(left.double() @ right.double(), ref, rtol=1e-6, atol=1e-7)
    assert method.own_update(update, None, setup.client(0)) == update


def test_result_does_not_depend_on_upload_order_or_mutate_inputs() -> None:
    setup = tiny_setup()
    method = registry.build("fedsa", setup=setup)
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
        registry.build("fedsa", setup=tiny_setup(ranks=(4, 8, 4)))
