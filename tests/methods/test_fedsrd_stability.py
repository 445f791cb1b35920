"""FedSRD's stabilisers (per-rank support, the ridge solve) and its blow-up detection; the
regression runs on the tiny model are in tests/runtime/test_fedsrd_stability_runs.py."""

from __future__ import annotations

import pytest
import torch
from helpers import run_round, tiny_setup

from fedlora.errors import ConfigError
from fedlora.methods import registry
from fedlora.methods.fedsrd_report import COND_WARN, norms_of, stability_report
from fedlora.ops.solve import condition
from fedlora.ops.sparsify import per_slot_mask, rank_slot_dim, select


def test_per_rank_support_keeps_every_column_when_one_dominates() -> None:
    # Prepare: ΔB's scores of one column dwarf the rest (Adam's |ΔB| ≈ constant times ‖A[v]‖)
    gen = torch.Generator().manual_seed(0)
    scores = torch.rand(64, 8, generator=gen)
    scores[:, 3] *= 1000.0
    delta = torch.randn(64, 8, generator=gen)
    # Execute
    global_kept = select(delta, scores, 0.9, "importance", False, 0).to_dense() != 0
    per_rank = select(delta, scores, 0.9, "importance", False, 0, rank_slot_dim("B"))
    kept = per_rank.to_dense() != 0
    # Assert: the global rule keeps one column only; per-rank keeps about 10% of each
    assert set(global_kept.any(dim=0).nonzero().reshape(-1).tolist()) == {3}
    assert bool(kept.any(dim=0).all())
    assert kept.sum(dim=0).tolist() == per_slot_mask(scores, 0.9, 1).sum(dim=0).tolist()
    assert all(5 <= c <= 7 for c in kept.sum(dim=0).tolist())
    # rows of ΔA are its rank slots
    assert bool(per_slot_mask(scores.T, 0.9, rank_slot_dim("A")).any(dim=1).all())


@pytest.mark.parametrize(
    ("option", "value"), [("ridge", -0.1), ("ridge", 1.0), ("ridge", "1e-3"), ("support", "rows")]
)
def test_bad_stability_options_are_refused(option: str, value: object) -> None:
    with pytest.raises(ConfigError, match=option):
        registry.make_config("fedsrd", {option: value})


def test_the_report_warns_on_ill_conditioning_and_growth() -> None:
    calm = stability_report("A", [3.0, 5.0, 9.0], {"A": 1.0, "B": 1.0}, {"A": 2.0, "B": 1.5})
    assert calm["solved_against"] == "B" and calm["cond_max"] == 9.0
    assert calm["cond_median"] == 5.0 and "warning" not in calm
    ill = stability_report("B", [2 * COND_WARN], {"A": 1.0, "B": 1.0}, {"A": 1.0, "B": 1.0})
    assert "ill-conditioned" in ill["warning"] and "ridge" in ill["warning"]
    grown = stability_report("A", [2.0], {"A": 1.0, "B": 1.0}, {"A": 1.0, "B": 50.0})
    assert "‖B‖ grew 50×" in grown["warning"]


@pytest.mark.parametrize("name", ["fedsrd", "fedsrd-e"])
def test_every_round_reports_its_solve(name: str) -> None:
    setup = tiny_setup()
    method = registry.build(name, {"ridge": 1e-3, "support": "per-rank"}, setup=setup)
    res = run_round(method, method.init_server(), setup)
    report = res.state.meta["report"]
    assert report["solved_against"] == "A" and report["cond_max"] >= 1.0
    assert report["norm_a"] > 0 and report["norm_b"] > 0
    for u in res.uploads:
        start, trained = res.starts[u.cid], res.trained[u.cid]
        rank = method.upload_report(start, trained, u.payload, setup.client(u.cid))
        assert 0 < rank["kept_rank_B"]["min"] <= 1.0


@pytest.mark.parametrize("name", ["fedsrd", "fedsrd-e"])
def test_the_reported_norms_and_conditions_are_those_of_the_state(name: str) -> None:
    # Prepare: two rounds (the second reads the norms before it from the first's report)
    setup = tiny_setup()
    method = registry.build(name, setup=setup)
    r1 = run_round(method, method.init_server(), setup)
    r2 = run_round(method, r1.state, setup, views=r1.views)
    for prev, state in ((r1.state, r2.state), (method.init_server(), r1.state)):
        report = state.meta["report"]
        # Assert: the norms are the new state's own, computed from its tensors
        fresh = norms_of(state.tensors, setup)
        assert (report["norm_a"], report["norm_b"]) == (fresh["A"], fresh["B"])
        # and the condition numbers those of the factor each layer solved against
        against = report["solved_against"]
        conditions = sorted(condition(prev.tensors[f"{s.name}.{against}"]) for s in setup.layers)
        assert report["cond_max"] == pytest.approx(conditions[-1], rel=1e-9)
