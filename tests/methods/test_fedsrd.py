"""FedSRD / FedSRD-e: invariants against dense float64 references (d=16, r=4, K=3)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import (
    MaxNumel,
    assert_same,
    conforms,
    global_dense,
    perturb,
    run_round,
    snapshot,
    tiny_setup,
    to_float64,
)

from fedlora.errors import ConfigError, PayloadError
from fedlora.methods import registry
from fedlora.methods.base import ServerState, Setup
from fedlora.methods.common import fresh_lora
from fedlora.methods.fedsrd import downlink_seed
from fedlora.methods.fedsrd_server import client_stack
from fedlora.ops.seeded_init import SeededInit
from fedlora.ops.sparse import Sparse

LOSSLESS = {"fixed_rho": 0.0, "rescale": False, "p_down": 0.0}


def as_float64(state: ServerState) -> ServerState:
    return ServerState(state.round, {k: v.double() for k, v in state.tensors.items()}, state.meta)


def run_rounds(method, setup: Setup, rounds: int, state: ServerState | None = None, **kw):
    """Drive ``rounds`` rounds, threading the client views; returns every RoundResult."""
    state = state if state is not None else method.init_server()
    gen = torch.Generator().manual_seed(99)
    views, results = None, []
    for _ in range(rounds):
        res = run_round(method, state, setup, gen=gen, views=views, **kw)
        results.append(res)
        state, views = res.state, res.views
    return results


def weights_of(res, setup: Setup) -> dict[int, float]:
    if setup.weighting == "uniform":
        return {u.cid: 1 / len(res.uploads) for u in res.uploads}
    total = sum(u.n_samples for u in res.uploads)
    return {u.cid: u.n_samples / total for u in res.uploads}


def dense_aggregate(res, setup: Setup, layer: str) -> torch.Tensor:
    """``W = Σ p_k B_k A_k`` of the trained adapters, float64, unscaled."""
    return sum(
        p * (res.trained[cid][layer].B.double() @ res.trained[cid][layer].A.double())
        for cid, p in weights_of(res, setup).items()
    )


def row_projection(a: torch.Tensor) -> torch.Tensor:
    """Orthogonal projector onto the row space of full-row-rank ``a``: Aᵀ(AAᵀ)⁻¹A."""
    return a.T @ torch.linalg.solve(a @ a.T, a)


def col_projection(b: torch.Tensor) -> torch.Tensor:
    """Orthogonal projector onto the column space of full-column-rank ``b``."""
    return b @ torch.linalg.solve(b.T @ b, b.T)


def bits(x: torch.Tensor) -> torch.Tensor:
    return x.view(torch.int64 if x.dtype == torch.float64 else torch.int32)


# -- configuration and setup ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("p_down", 1.0),
        ("base", -0.1),
        ("fixed_rho", 1.5),
        ("sparsifier", "topk"),
        ("decompose", "svd"),
        ("reconstruct", "no"),
        ("coeff", -1.0),
        ("upper", float("nan")),
        ("rescale", "yes"),
        ("p_down", True),
    ],
)
def test_bad_options_are_refused_naming_the_option(option: str, value: object) -> None:
    with pytest.raises(ConfigError, match=option):
        registry.make_config("fedsrd", {option: value})


def test_the_papers_largest_base_works_with_the_default_upper() -> None:
    # Prepare: base 0.95 + upper 0.11 > 1, the top of the paper's sweep; a tiny 2x3 layer
    setup = tiny_setup(d=3, out_features=2, ranks=(2, 2, 2))
    method = registry.build("fedsrd", {"base": 0.95, "coeff": 10.0}, setup=setup)
    # Execute
    res = run_rounds(method, setup, 1)[0]
    # Assert: every matrix still uploads at least one element
    for u in res.uploads:
        for name, sparse in u.payload.items():
            assert sparse.nnz >= 1, name


@pytest.mark.parametrize("name", ["fedsrd", "fedsrd-e"])
def test_heterogeneous_ranks_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="same LoRA rank"):
        registry.build(name, setup=tiny_setup(ranks=(4, 2, 4)))
    registry.build(name, setup=tiny_setup())  # homogeneous is fine


def test_first_broadcast_is_the_initial_adapter() -> None:
    # Prepare
    setup = tiny_setup()
    method = registry.build("fedsrd", setup=setup)
    # Execute
    state = method.init_server()
    payload = method.broadcast(state, setup.clients[0])
    # Assert: A^0 is PEFT's init from the server seed, sent as that seed; B^0 = 0 costs no
    # entries; the wire carries neither's values
    fresh = fresh_lora(setup, 4, setup.seed)
    for s in setup.layers:
        a = payload[f"{s.name}.A"]
        assert isinstance(a, SeededInit) and torch.equal(a.to_dense(), fresh[s.name].A)
        b = payload[f"{s.name}.B"]
        assert isinstance(b, Sparse) and b.nnz == 0 and b.shape == (16, 4)
    json.dumps(state.meta)


# -- client side ------------------------------------------------------------------------------


def test_upload_keeps_the_most_important_elements_and_rescales() -> None:
    # Prepare
    setup = tiny_setup()
    method = registry.build("fedsrd", setup=setup)
    res = run_rounds(method, setup, 1)[0]
    cid = 1
    view, trained = res.starts[cid].view, res.trained[cid]
    schema = method.upload_schema(setup.client(cid))
    payload = res.uploads[cid].payload
    assert conforms(payload, schema)
    for s in setup.layers:
        a_old, b_old = view[f"{s.name}.A"].double(), view[f"{s.name}.B"].double()
        a_new, b_new = trained[s.name].A.double(), trained[s.name].B.double()
        refs = {
            # Frobenius norm of each element's rank-1 contribution, written out in float64
            "dB": ((b_new - b_old).abs() * (a_old**2).sum(1).sqrt()[None, :], b_new - b_old),
            "dA": ((a_new - a_old).abs() * (b_new**2).sum(0).sqrt()[:, None], a_new - a_old),
        }
        for part, (score, delta) in refs.items():
            sparse = payload[f"{s.name}.{part}"]
            n = score.numel()
            kept = torch.zeros(n, dtype=torch.bool)
            kept[sparse.indices] = True
            # Assert: a threshold set of the reference scores ...
            flat = score.reshape(-1)
            assert float(flat[kept].min()) >= float(flat[~kept].max()) * (1 - 1e-5)
            # ... strictly above an interpolated quantile at some rho in [0.85, 0.96], so of
            # size at most N - 1 - floor(rho (N-1)) (fewer when kept deltas are exact zeros)
            assert 1 <= sparse.nnz <= n - 1 - math.floor(0.85 * (n - 1))
            assert n - 1 - math.floor(0.96 * (n - 1)) <= int(kept.sum())
            # ... rescaled so the total magnitude is that of the full delta
            assert float(sparse.values.double().abs().sum()) == pytest.approx(
                float(delta.abs().sum()), rel=1e-5
            )
            ratio = sparse.values.double() / delta.reshape(-1)[sparse.indices]
            torch.testing.assert_close(ratio, ratio[:1].expand_as(ratio), rtol=1e-5, atol=0)


def test_fixed_rho_sets_the_kept_count() -> None:
    setup = tiny_setup()
    method = registry.build("fedsrd", {"fixed_rho": 0.5}, setup=setup)
    res = run_rounds(method, setup, 1)[0]
    for u in res.uploads:
        for name, sparse in u.payload.items():
            n = sparse.numel
            # strictly above the quantile at h = 0.5 (N - 1): N - 1 - floor(h) survive
            assert sparse.nnz == n - 1 - math.floor(0.5 * (n - 1)), name


# -- server side ------------------------------------------------------------------------------


@pytest.mark.parametrize("weighting", ["samples", "uniform"])
def test_lossless_fedsrd_e_is_the_least_squares_projection(weighting: str) -> None:
    # Prepare: rho = 0, no rescale, no downlink drop, float64 throughout
    setup = tiny_setup(weighting=weighting)
    method = registry.build("fedsrd-e", LOSSLESS, setup=setup)
    state0 = as_float64(method.init_server())
    # Execute: round 1 (B-round) and round 2 (A-round)
    r1, r2 = run_rounds(method, setup, 2, state=state0, transport=to_float64)
    # Assert
    s = setup.clients[0].scaling
    for layer in ("l0", "l1"):
        a0, b0 = state0.tensors[f"{layer}.A"], state0.tensors[f"{layer}.B"]
        base0 = b0 @ a0
        expected1 = base0 + (dense_aggregate(r1, setup, layer) - base0) @ row_projection(a0)
        got1 = global_dense(method, r1.state, setup)[layer] / s
        torch.testing.assert_close(got1, expected1, rtol=1e-10, atol=1e-10)

        a1, b1 = r1.state.tensors[f"{layer}.A"], r1.state.tensors[f"{layer}.B"]
        base1 = b1 @ a1
        expected2 = base1 + col_projection(b1) @ (dense_aggregate(r2, setup, layer) - base1)
        got2 = global_dense(method, r2.state, setup)[layer] / s
        torch.testing.assert_close(got2, expected2, rtol=1e-10, atol=1e-10)


def test_lossless_fedsrd_targets_the_rank_r_truncation() -> None:
    # Prepare
    setup = tiny_setup()
    method = registry.build("fedsrd", LOSSLESS, setup=setup)
    state0 = as_float64(method.init_server())
    # Execute
    (r1,) = run_rounds(method, setup, 1, state=state0, transport=to_float64)
    # Assert: W_r from a dense SVD of W (rank up to K·r = 12 > r = 4, so truncation bites)
    for layer in ("l0", "l1"):
        a0, b0 = state0.tensors[f"{layer}.A"], state0.tensors[f"{layer}.B"]
        u, sv, vh = torch.linalg.svd(dense_aggregate(r1, setup, layer))
        assert float(sv[4]) > 1e-3 * float(sv[0])
        w_r = u[:, :4] @ torch.diag(sv[:4]) @ vh[:4]
        expected = b0 @ a0 + (w_r - b0 @ a0) @ row_projection(a0)
        got = global_dense(method, r1.state, setup)[layer] / setup.clients[0].scaling
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", ["fedsrd", "fedsrd-e"])
def test_alternation_starts_with_a_b_round(name: str) -> None:
    setup = tiny_setup()
    method = registry.build(name, setup=setup)
    state0 = method.init_server()
    r1, r2, r3 = run_rounds(method, setup, 3, state=state0, transport=to_float64)
    states = [state0, r1.state, r2.state, r3.state]
    for t in (1, 2, 3):
        frozen, moved = ("A", "B") if t % 2 == 1 else ("B", "A")
        for layer in ("l0", "l1"):
            assert torch.equal(
                states[t].tensors[f"{layer}.{frozen}"], states[t - 1].tensors[f"{layer}.{frozen}"]
            ), (t, layer)
            assert not torch.equal(
                states[t].tensors[f"{layer}.{moved}"], states[t - 1].tensors[f"{layer}.{moved}"]
            ), (t, layer)


def test_downlink_is_one_seeded_dare_delta_per_layer() -> None:
    # Prepare
    setup = tiny_setup()
    method = registry.build("fedsrd", setup=setup)
    state0 = method.init_server()
    (r1,) = run_rounds(method, setup, 1, state=state0, transport=to_float64)
    # Execute
    payload = method.broadcast(r1.state, setup.clients[2])
    # Assert
    assert sorted(payload) == ["l0.dB", "l1.dB"]
    for layer in ("l0", "l1"):
        sparse = payload[f"{layer}.dB"]
        assert sparse.mask_seed == downlink_seed(setup.seed, 1, layer)
        assert sparse.keep_prob == pytest.approx(0.2)
        applied = r1.state.tensors[f"{layer}.B"] - state0.tensors[f"{layer}.B"]
        torch.testing.assert_close(sparse.to_dense(), applied, rtol=0, atol=1e-7)
        assert sparse.nnz < sparse.numel


@pytest.mark.parametrize("name", ["fedsrd", "fedsrd-e"])
def test_server_and_clients_stay_bit_identical(name: str) -> None:
    # Prepare / Execute: 4 rounds with the default (lossy) settings
    setup = tiny_setup()
    method = registry.build(name, setup=setup)
    results = run_rounds(method, setup, 4)
    final = results[-1].state
    views = {
        cid: method.client_start(
            results[-1].views[cid],
            method.broadcast(final, setup.client(cid)),
            setup.client(cid),
            0,
        ).view
        for cid in results[-1].views
    }
    # Assert: every client's view of round t equals the server's state t, bit for bit
    prev_states = [method.init_server()] + [r.state for r in results[:-1]]
    checks = [(r.views, st) for r, st in zip(results, prev_states, strict=True)] + [(views, final)]
    for client_views, state in checks:
        for cid, view in client_views.items():
            for s in setup.layers:
                for part in ("A", "B"):
                    k = f"{s.name}.{part}"
                    assert torch.equal(bits(view[k]), bits(state.tensors[k])), (state.round, cid, k)


def test_a_client_that_missed_a_broadcast_is_refused() -> None:
    setup = tiny_setup()
    method = registry.build("fedsrd", setup=setup)
    r1, r2 = run_rounds(method, setup, 2)
    client = setup.clients[0]
    with pytest.raises(PayloadError, match="missed"):
        method.client_start(None, method.broadcast(r1.state, client), client, 0)
    stale = r1.views[0]  # synced to round 0, but round 2's delta arrives
    with pytest.raises(PayloadError):
        method.client_start(stale, method.broadcast(r2.state, client), client, 0)


@pytest.mark.parametrize("name", ["fedsrd", "fedsrd-e"])
def test_result_does_not_depend_on_upload_order(name: str) -> None:
    setup = tiny_setup()
    method = registry.build(name, setup=setup)
    state = method.init_server()
    forward = run_round(method, state, setup, gen=torch.Generator().manual_seed(5))
    backward = run_round(
        method, state, setup, gen=torch.Generator().manual_seed(5), upload_order=[2, 1, 0]
    )
    assert_same(forward.state, backward.state)


def test_weighting_option_is_respected() -> None:
    runs = {}
    for weighting in ("samples", "uniform"):
        setup = tiny_setup(weighting=weighting)
        method = registry.build("fedsrd-e", LOSSLESS, setup=setup)
        runs[weighting] = run_rounds(method, setup, 1)[0].state
    assert not torch.equal(runs["samples"].tensors["l0.B"], runs["uniform"].tensors["l0.B"])


@pytest.mark.parametrize("name", ["fedsrd", "fedsrd-e"])
def test_aggregate_does_not_mutate_its_inputs(name: str) -> None:
    setup = tiny_setup()
    method = registry.build(name, setup=setup)
    state = method.init_server()
    res = run_round(method, state, setup)
    before = (snapshot(state), snapshot(res.uploads))
    method.aggregate(state, res.uploads)
    assert_same(before, (state, res.uploads))


def test_global_delta_is_scaled_b_and_a() -> None:
    setup = tiny_setup()
    method = registry.build("fedsrd", setup=setup)
    state = run_rounds(method, setup, 1)[0].state
    delta = method.global_delta(state)
    for layer in ("l0", "l1"):
        left, right = delta[layer]
        assert torch.equal(left, setup.clients[0].scaling * state.tensors[f"{layer}.B"])
        assert torch.equal(right, state.tensors[f"{layer}.A"])


@pytest.mark.parametrize("name", ["fedsrd", "fedsrd-e"])
def test_server_never_allocates_an_m_by_n_matrix(name: str) -> None:
    # Prepare: one 512×512 layer, rank 2, three clients; the client side runs outside the mode
    m = n = 512
    rank, clients = 2, 3
    setup = tiny_setup(ranks=(rank,) * clients, d=n, layers=1, out_features=m)
    method = registry.build(name, setup=setup)
    state0 = method.init_server()
    r1 = run_round(method, state0, setup)  # round 1 so round 2 (an A-round) is measured too
    r2 = run_round(method, r1.state, setup, views=r1.views)
    for state, uploads in ((state0, r1.uploads), (r1.state, r2.uploads)):
        # Execute
        with MaxNumel() as mode:
            method.aggregate(state, uploads)
        # Assert: O((m + n)·q) with q = (K + 1)·r columns in the thin factors
        assert mode.max_numel <= (m + n) * (clients + 1) * rank, mode.op
        assert mode.max_numel < m * n // 8


def test_perturb_helper_trains_both_factors() -> None:
    # FedSRD trains A and B; the helper's fake training must move both for the tests above
    setup = tiny_setup()
    method = registry.build("fedsrd", setup=setup)
    state = method.init_server()
    start = method.client_start(
        None, method.broadcast(state, setup.clients[0]), setup.clients[0], 0
    )
    assert start.trainable == frozenset({"A", "B"})
    trained = perturb(start, torch.Generator().manual_seed(0))
    assert not torch.equal(trained["l0"].A, start.adapter["l0"].A)


def test_client_stack_is_the_weighted_stack_of_reconstructed_factors() -> None:
    # Prepare: two clients, one sending sparse deltas and one dense
    gen = torch.Generator().manual_seed(5)
    a, b = torch.randn(3, 7, generator=gen), torch.randn(6, 3, generator=gen)
    d_a, d_b = torch.randn(3, 7, generator=gen), torch.randn(6, 3, generator=gen)
    mask_a, mask_b = d_a > 0.3, d_b > 0.3
    deltas = [
        (0.4, Sparse.from_mask(d_a, mask_a), Sparse.from_mask(d_b, mask_b)),
        (0.6, d_a, d_b),
    ]
    # Execute
    left, right, weights = client_stack(a, b, deltas)
    # Assert: W = left·diag(w)·right = Σ p_k (B + ΔB_k)(A + ΔA_k), float64 reference
    want = 0.4 * (b + d_b * mask_b).double() @ (a + d_a * mask_a).double()
    want = want + 0.6 * (b + d_b).double() @ (a + d_a).double()
    got = (left.double() * weights) @ right.double()
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert weights.tolist() == [0.4] * 3 + [0.6] * 3


@pytest.mark.parametrize("budget", [None, 0, 2**20])
def test_batched_targets_equal_one_truncation_per_layer(budget: int | None) -> None:
    # Prepare: five layers of two shapes, three clients, sparse and dense deltas; None: the
    # device's default (one layer at a time on the CPU), 2**20 bytes: whole shapes batched
    from fedlora.methods import fedsrd_server as fedsrd
    from fedlora.ops.factored import truncated_factors

    gen = torch.Generator().manual_seed(6)
    layers = {}
    for k, (m, n) in enumerate([(12, 9), (12, 9), (7, 15), (12, 9), (7, 15)]):
        a, b = torch.randn(3, n, generator=gen), torch.randn(m, 3, generator=gen)
        deltas = []
        for p in (0.5, 0.3, 0.2):
            d_a, d_b = torch.randn(3, n, generator=gen), torch.randn(m, 3, generator=gen)
            if k % 2:
                d_a, d_b = Sparse.from_mask(d_a, d_a > 0.5), Sparse.from_mask(d_b, d_b > 0.5)
            deltas.append((p, d_a, d_b))
        layers[f"l{k}"] = fedsrd.LayerInputs(a, b, deltas)
    # Execute
    got = dict(fedsrd.batched_targets(layers, 3, budget))
    # Assert: every layer's truncation matches the per-layer call on its own stack
    assert got.keys() == layers.keys()
    for name, layer in layers.items():
        left, right, weights = client_stack(*layer)
        want = truncated_factors(left, right, 3, weights)
        torch.testing.assert_close(
            got[name][0].double() @ got[name][1].double(),
            want[0].double() @ want[1].double(),
            rtol=1e-4,
            atol=1e-4,
        )
