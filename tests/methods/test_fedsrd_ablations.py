"""FedSRD's ablation options (Table 4 of the paper) and its upload report, against dense
float64 references (d=16, r=4, K=3)."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import global_dense, run_round, tiny_setup, to_float64

from fedlora.errors import ConfigError
from fedlora.methods import registry
from fedlora.methods.base import ServerState
from fedlora.ops.prng import seeded_keep_mask
from fedlora.ops.sparse import Sparse

LOSSLESS = {"fixed_rho": 0.0, "rescale": False, "p_down": 0.0}


def float64_state(state: ServerState) -> ServerState:
    return ServerState(state.round, {k: v.double() for k, v in state.tensors.items()}, state.meta)


def one_round(name: str, options: dict[str, object]):
    setup = tiny_setup()
    method = registry.build(name, options, setup=setup)
    state0 = float64_state(method.init_server())
    res = run_round(method, state0, setup, transport=to_float64)
    return setup, method, state0, res


def weights(res) -> dict[int, float]:
    total = sum(u.n_samples for u in res.uploads)
    return {u.cid: u.n_samples / total for u in res.uploads}


def test_without_reconstruction_the_target_is_the_product_of_averaged_factors() -> None:
    # Prepare / Execute: lossless FedSRD-e, no reconstruction, one B-round
    setup, method, state0, res = one_round("fedsrd-e", {**LOSSLESS, "reconstruct": False})
    s = setup.clients[0].scaling
    for layer in ("l0", "l1"):
        a0, b0 = state0.tensors[f"{layer}.A"], state0.tensors[f"{layer}.B"]
        p = weights(res)
        a_avg = sum(w * res.trained[c][layer].A.double() for c, w in p.items())
        b_avg = sum(w * res.trained[c][layer].B.double() for c, w in p.items())
        target = b_avg @ a_avg  # not Σ p_k B_k A_k
        proj = torch.linalg.pinv(a0) @ a0
        expected = b0 @ a0 + (target - b0 @ a0) @ proj
        got = global_dense(method, res.state, setup)[layer] / s
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_dense_decomposition_broadcasts_the_rank_r_truncation() -> None:
    # Prepare / Execute
    setup, method, state0, res = one_round("fedsrd", {**LOSSLESS, "decompose": "dense"})
    s = setup.clients[0].scaling
    for layer in ("l0", "l1"):
        p = weights(res)
        w = sum(
            wt * res.trained[c][layer].B.double() @ res.trained[c][layer].A.double()
            for c, wt in p.items()
        )
        u, sv, vh = torch.linalg.svd(w)
        expected = u[:, :4] @ torch.diag(sv[:4]) @ vh[:4]
        got = global_dense(method, res.state, setup)[layer] / s
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)
        # Both factors change, split evenly: column norms of B equal row norms of A
        a, b = res.state.tensors[f"{layer}.A"], res.state.tensors[f"{layer}.B"]
        torch.testing.assert_close(b.norm(dim=0), a.norm(dim=1))
    # The next broadcast is the whole dense adapter, and a client adopts it as its view
    payload = method.broadcast(res.state, setup.client(0))
    assert set(payload) == {"l0.A", "l0.B", "l1.A", "l1.B"}
    start = method.client_start(res.views[0], payload, setup.client(0), 0)
    assert torch.equal(start.view["l0.B"], res.state.tensors["l0.B"])
    assert int(start.view["round"]) == 1


def test_dense_decomposition_is_refused_for_fedsrd_e() -> None:
    with pytest.raises(ConfigError, match="method.fedsrd-e.decompose"):
        registry.build("fedsrd-e", {"decompose": "dense"}, setup=tiny_setup())


def test_magnitude_sparsifier_keeps_the_largest_deltas_at_the_importance_ratio() -> None:
    # Prepare / Execute: the same round under importance and magnitude selection
    _, _, _, imp = one_round("fedsrd", {"rescale": False})
    _, _, _, mag = one_round("fedsrd", {"rescale": False, "sparsifier": "magnitude"})
    for cid in (0, 1, 2):
        view, trained = mag.starts[cid].view, mag.trained[cid]
        for layer in ("l0", "l1"):
            delta = (trained[layer].B - view[f"{layer}.B"]).double().reshape(-1)
            sparse = mag.uploads[cid].payload[f"{layer}.dB"]
            kept = torch.zeros(delta.numel(), dtype=torch.bool)
            kept[sparse.indices] = True
            # Assert: the kept magnitudes dominate the dropped ones ...
            assert float(delta[kept].abs().min()) > float(delta[~kept].abs().max())
            # ... and as many are kept as the importance rule keeps (same ratio)
            same = imp.uploads[cid].payload[f"{layer}.dB"]
            assert abs(sparse.nnz - same.nnz) <= 1


def test_random_sparsifier_is_a_seeded_mask_at_the_importance_ratio() -> None:
    # Prepare / Execute
    _, _, _, res = one_round("fedsrd", {"sparsifier": "random", "rescale": False})
    for cid in (0, 1, 2):
        for name, sparse in res.uploads[cid].payload.items():
            # Assert: positions are exactly the portable mask of the sparse entry's own seed,
            # at a keep probability 1 - rho with rho in [0.85, 0.96]
            assert isinstance(sparse, Sparse) and sparse.mask_seed is not None
            assert 0.04 - 1e-12 <= sparse.keep_prob <= 0.15 + 1e-12
            mask = seeded_keep_mask(sparse.mask_seed, sparse.numel, sparse.keep_prob)
            assert torch.equal(sparse.indices, mask.nonzero().reshape(-1)), name
    # Different clients draw different masks
    seeds = {res.uploads[c].payload["l0.dA"].mask_seed for c in (0, 1, 2)}
    assert len(seeds) == 3


def test_upload_report_matches_a_dense_recomputation() -> None:
    # Prepare: round 2, so that B is nonzero and both update ratios are defined
    setup = tiny_setup()
    method = registry.build("fedsrd", setup=setup)
    r1 = run_round(method, method.init_server(), setup)
    r2 = run_round(method, r1.state, setup, views=r1.views)
    cid = 2
    start, trained = r2.starts[cid], r2.trained[cid]
    # Execute
    upload = next(u.payload for u in r2.uploads if u.cid == cid)
    report = method.upload_report(start, trained, upload, setup.client(cid))
    # Assert: ratios from Pearson kurtosis of the dense float64 importance scores
    rhos: dict[str, list[float]] = {"A": [], "B": []}
    num = {"A": 0.0, "B": 0.0}
    den = {"A": 0.0, "B": 0.0}
    for layer in ("l0", "l1"):
        a0, b0 = start.view[f"{layer}.A"].double(), start.view[f"{layer}.B"].double()
        a1, b1 = trained[layer].A.double(), trained[layer].B.double()
        scores = {
            "A": (a1 - a0).abs() * b1.norm(dim=0)[:, None],
            "B": (b1 - b0).abs() * a0.norm(dim=1)[None, :],
        }
        for part, sc in scores.items():
            x = sc.reshape(-1)
            kurt = float(((x - x.mean()) ** 4).mean() / ((x - x.mean()) ** 2).mean() ** 2)
            rhos[part].append(0.85 + min(0.11, 0.1 * math.log(max(kurt, 1.0))))
        num["A"] += float((a1 - a0).pow(2).sum())
        den["A"] += float(a0.pow(2).sum())
        num["B"] += float((b1 - b0).pow(2).sum())
        den["B"] += float(b0.pow(2).sum())
    for part in ("A", "B"):
        summary = report[f"rho_{part}"]
        assert summary["mean"] == pytest.approx(sum(rhos[part]) / 2, abs=1e-6)
        assert summary["min"] == pytest.approx(min(rhos[part]), abs=1e-6)
        assert summary["max"] == pytest.approx(max(rhos[part]), abs=1e-6)
        ratio = report[f"update_ratio_{part}"]
        assert ratio == pytest.approx(math.sqrt(num[part] / den[part]), rel=1e-9)
    # the kept rank of ΔB is that of the uploaded ΔB (singular values above 1e-7 of the top)
    kept = []
    for layer in ("l0", "l1"):
        entry = upload[f"{layer}.dB"]
        d_b = entry.to_dense() if isinstance(entry, Sparse) else entry
        s = torch.linalg.svdvals(d_b.double())
        kept.append(int((s > s[0] * 1e-7).sum()) / setup.client(cid).rank)
    assert report["kept_rank_B"]["min"] == pytest.approx(min(kept))
    assert report["kept_rank_B"]["max"] == pytest.approx(max(kept))


def test_update_ratio_of_a_zero_factor_is_null() -> None:
    setup = tiny_setup()
    method = registry.build("fedsrd", setup=setup)
    r1 = run_round(method, method.init_server(), setup)
    upload = next(u.payload for u in r1.uploads if u.cid == 0)
    report = method.upload_report(r1.starts[0], r1.trained[0], upload, setup.client(0))
    assert report["update_ratio_B"] is None  # B^0 = 0
    assert report["update_ratio_A"] > 0
