"""The claims table decides with paired statistics on normalised scores: the interval is a
paired t interval (checked against scipy's own paired test), equivalence claims are TOST
against the claims file's margins, too few seeds or a missing row leave a claim undecided,
and no single domain's scale decides the headline score."""

from __future__ import annotations

import math
import statistics
from typing import Any

import numpy as np
import pytest
from scipy import stats as sps

from benchmarks.quality.claims import MACRO, Claim, decide, load_claims, render
from benchmarks.quality.report import COSTS_NOTHING, LEARNS, default_rule_section
from benchmarks.quality.scores import domain_losses, gap_closed
from benchmarks.quality.stats import FAILS, HOLDS, UNDECIDED, beats, close, no_worse, paired
from benchmarks.quality.tuning import choose, next_rates, relative_loss

SEEDS = range(5)


def test_the_paired_interval_is_scipys_paired_t_test() -> None:
    rng = np.random.default_rng(0)
    a = {s: float(v) for s, v in zip(SEEDS, rng.normal(0.5, 0.1, 5), strict=True)}
    b = {s: float(v) for s, v in zip(SEEDS, rng.normal(0.4, 0.1, 5), strict=True)}
    p = paired(a, b)
    ref = sps.ttest_rel(list(a.values()), list(b.values()))
    lo, hi = ref.confidence_interval(0.95)
    assert p.n == 5 and p.ci95 == pytest.approx((lo, hi), rel=1e-12)
    # the interval excludes 0 exactly when scipy's two-sided p-value is below 0.05
    assert (p.ci95[0] > 0 or p.ci95[1] < 0) == (ref.pvalue < 0.05)


def test_pairing_uses_only_the_seeds_both_rows_have() -> None:
    p = paired({0: 1.0, 1: 2.0, 2: 4.0}, {1: 1.0, 2: 1.5, 3: 9.0})
    assert p.n == 2 and p.mean == pytest.approx(statistics.fmean([1.0, 2.5]))


@pytest.mark.parametrize(
    ("diffs", "expected"),
    [
        ([0.10, 0.12, 0.09, 0.11, 0.10], HOLDS),
        ([-0.10, -0.12, -0.09, -0.11, -0.10], FAILS),
        ([0.10, -0.12, 0.09, -0.11, 0.02], UNDECIDED),
    ],
)
def test_beats_needs_the_interval_to_exclude_zero(diffs: list[float], expected: str) -> None:
    assert beats(paired(dict(enumerate(diffs)), dict.fromkeys(range(5), 0.0))) == expected


def test_equivalence_is_tost_against_the_margin_so_noise_cannot_make_it_hold() -> None:
    zero = dict.fromkeys(range(5), 0.0)
    tight = paired(dict(enumerate([0.01, -0.01, 0.0, 0.005, -0.005])), zero)
    noisy = paired(dict(enumerate([0.3, -0.3, 0.2, -0.25, 0.05])), zero)
    worse = paired(dict(enumerate([-0.30, -0.31, -0.29, -0.30, -0.32])), zero)
    assert close(tight, 0.05) == HOLDS and no_worse(tight, 0.05) == HOLDS
    # a mean near 0 with a wide interval is NOT equivalence (the 2-SE rule said "holds")
    assert close(noisy, 0.05) == UNDECIDED and no_worse(noisy, 0.05) == UNDECIDED
    assert no_worse(worse, 0.05) == FAILS and close(worse, 0.05) == FAILS
    # the one-sided TOST bound is the lower end of the 90% interval
    lo90 = tight.ci90[0] if tight.ci90 else math.nan
    assert lo90 == pytest.approx(
        tight.mean
        - sps.t.ppf(0.95, 4) * statistics.stdev([0.01, -0.01, 0.0, 0.005, -0.005]) / 5**0.5
    )


def test_gap_closed_is_per_domain_and_no_domain_dominates_the_macro_score() -> None:
    base = {"code": 2.0, "email": 12.0}
    central = {"code": 1.0, "email": 2.0}
    # a run that halves the gap on code and closes none of email's 10-nat gap
    g = gap_closed({"code": 1.5, "email": 12.0}, base, central)
    assert g == pytest.approx({"code": 0.5, "email": 0.0, MACRO: 0.25})
    # the raw mean loss would rank it below a run that closes 10% of email's gap alone
    other = gap_closed({"code": 2.0, "email": 11.0}, base, central)
    assert statistics.fmean([1.5, 12.0]) > statistics.fmean([2.0, 11.0])
    assert g[MACRO] > other[MACRO]


def test_own_model_runs_are_scored_by_the_client_that_trains_on_each_domain() -> None:
    ev = {
        "code": {"loss": 9.0},
        "email": {"loss": 9.0},
        "code@client0": {"loss": 1.0},
        "email@client0": {"loss": 5.0},
        "code@client2": {"loss": 6.0},
        "email@client2": {"loss": 2.0},
    }
    # built-in domain order: code, literature, email, dictionary -> email is client 2's
    assert domain_losses(ev, clients=4) == {"code": 1.0, "email": 2.0}
    assert domain_losses({"code": {"loss": 3.0}}, clients=4) == {"code": 3.0}


def test_tuning_picks_the_lowest_finite_macro_relative_loss() -> None:
    base = {"code": 2.0, "email": 10.0}
    assert relative_loss({"code": 1.0, "email": 10.0}, base) == pytest.approx(0.75)
    got = choose({"m": {1e-3: 0.8, 3e-3: 0.7, 1e-2: math.nan}, "n": {1e-3: math.inf}}, 5e-4)
    assert got["m"]["lr"] == 3e-3 and got["m"]["tuned"]
    assert got["n"] == {"lr": 5e-4, "scores": {"0.001": math.inf}, "tuned": False, "settled": True}


GRID = (1e-3, 3e-3, 1e-2)


@pytest.mark.parametrize(
    ("scores", "wanted"),
    [
        ({}, [1e-3, 3e-3, 1e-2]),  # the grid first
        ({1e-3: 0.9, 3e-3: 0.8, 1e-2: 0.7}, [0.0333]),  # best at the top: one step beyond
        ({1e-3: 0.6, 3e-3: 0.8, 1e-2: 0.9}, [0.000333]),  # best at the bottom: a step below
        ({3e-4: 0.5, 1e-3: 0.6, 3e-3: 0.8, 1e-2: 0.9}, [0.0001]),  # still at the edge
        ({1e-3: 0.7, 3e-3: 0.6, 1e-2: 0.65}, []),  # interior, neighbours close: tuned
        # FedSRD's cliff: 0.56 at 1e-3, 1.85 at 3e-3 (3.3x): the midpoint, after the edge
        ({3e-4: 0.7, 1e-3: 0.56, 3e-3: 1.85, 1e-2: math.inf}, [0.00173]),
        ({3e-4: 0.7, 1e-3: 0.56, 1.73e-3: 0.6, 3e-3: 1.85, 1e-2: math.inf}, []),  # once
        # a neighbour 2.25x worse and one that diverged: both midpoints
        ({1e-3: 0.9, 3e-3: 0.4, 1e-2: math.inf}, [0.00173, 0.00548]),
    ],
)
def test_the_tuning_rule_leaves_no_edge_and_no_cliff_untried(
    scores: dict[float, float], wanted: list[float]
) -> None:
    assert next_rates(scores, GRID) == pytest.approx(wanted)


def test_the_tuning_rule_stops_after_three_steps_beyond_the_grid() -> None:
    scores = {1e-3: 0.9, 3e-3: 0.8, 1e-2: 0.7, 0.0333: 0.6, 0.111: 0.5, 0.37: 0.4}
    assert next_rates(scores, GRID) == []
    assert not choose({"m": {1e-3: 0.9, 3e-3: 0.8, 1e-2: 0.7}}, 5e-4, GRID)["m"]["settled"]


def test_p_values_decide_as_the_intervals_do() -> None:
    from benchmarks.quality.stats import beats, close, decided, no_worse, p_values

    for diffs in ([0.1, 0.12, 0.09, 0.11, 0.1], [-0.2, 0.1, 0.05, -0.1, 0.0], [-0.1, -0.12, -0.09]):
        p = paired(dict(enumerate(diffs)), dict.fromkeys(range(len(diffs)), 0.0))
        assert decided(*p_values("better", p), 0.05) == beats(p)
        assert decided(*p_values("no_worse", p, 0.05), 0.05) == no_worse(p, 0.05)
        assert decided(*p_values("close", p, 0.05), 0.05) == close(p, 0.05)


def test_holm_adjusts_step_down_as_its_definition_says() -> None:
    from benchmarks.quality.stats import holm

    # sorted 0.01, 0.02, 0.04, 0.30 over m = 4: 0.04, max(0.04, 0.06), max(0.06, 0.08), 0.30
    assert holm([0.04, 0.01, 0.30, 0.02]) == pytest.approx([0.08, 0.04, 0.30, 0.06])


def test_the_headline_family_is_corrected_and_the_rest_is_not() -> None:
    # Prepare: fedsrd beats fed_dare by a margin that is significant alone (p about 0.02)
    # but not once corrected over the 8 comparisons of the headline family
    diffs = [0.10, 0.02, 0.09, 0.01, 0.08]
    rows = [row("fedsrd", [0.5 + d for d in diffs]), row("fed_dare", [0.5] * 5)]
    spec = load_claims()
    alone = {**spec, "claim": [{**c, "family": ""} for c in spec["claim"]]}

    # Execute
    corrected = {c.claim: c for c in decide(rows, spec)}["FedSRD beats Fed-DARE"]
    uncorrected = {c.claim: c for c in decide(rows, alone)}["FedSRD beats Fed-DARE"]

    # Assert
    assert uncorrected.verdict == HOLDS and corrected.verdict == UNDECIDED
    assert "Holm-adjusted p: holds" in corrected.evidence


def row(label: str, macro: list[float], mb: float = 1.0, **more: Any) -> dict[str, Any]:
    per = {MACRO: dict(enumerate(macro)), "code": dict(enumerate(macro))}
    return {
        "label": label,
        "per_seed": per,
        "cum_mb": {"mean": mb},
        "mb_up": {"mean": more.get("up", mb / 2)},
        "mb_down": {"mean": more.get("down", mb / 2)},
    }


def verdicts(rows: list[dict[str, Any]]) -> dict[str, str]:
    return {c.claim: c.verdict for c in decide(rows)}


def test_claims_hold_fail_or_stay_undecided_by_the_numbers() -> None:
    rows = [
        row("fedavg", [0.60, 0.62, 0.58, 0.61, 0.59], mb=10.0),
        row("fedsrd", [0.61, 0.62, 0.59, 0.61, 0.60], mb=1.0),
        row("fed_dare", [0.50, 0.52, 0.49, 0.50, 0.51]),
        row("fedsrd-e", [0.30, 0.31, 0.29, 0.32, 0.30]),
        row("fedsrd sparsifier=random", [0.40, 0.41, 0.39, 0.42, 0.40]),
        row("fedsrd sparsifier=magnitude", [0.62, 0.59, 0.60, 0.62, 0.58]),
        row("fedsrd wire=bfloat16", [0.61, 0.62, 0.59, 0.61, 0.601], mb=0.6),
        row("local", [0.2, 0.25, 0.22, 0.21, 0.24]),
    ]
    got = verdicts(rows)
    assert got["FedSRD keeps FedAvg's quality at about 10% of its bytes"] == HOLDS
    assert got["FedSRD beats Fed-DARE"] == HOLDS
    assert got["FedSRD-e is close to FedSRD"] == FAILS
    assert got["importance beats random and magnitude sparsification"] == UNDECIDED
    assert got["bfloat16 values on the wire cost FedSRD no quality"] == HOLDS
    assert got["the importance plug-in helps FedAvg"] == UNDECIDED  # its row did not run
    assert got["fedsrd beats local-only training"] == HOLDS
    assert got["fedprox beats local-only training"] == UNDECIDED


def test_fewer_seeds_than_the_claims_file_asks_leave_a_claim_undecided() -> None:
    assert load_claims()["min_seeds"] == 5
    rows = [
        row("fedsrd", [0.61, 0.62, 0.59, 0.61]),
        row("fed_dare", [0.10, 0.12, 0.09, 0.11]),
    ]
    (claim,) = [c for c in decide(rows) if c.claim == "FedSRD beats Fed-DARE"]
    assert claim.verdict == UNDECIDED and "(n < 5)" in claim.evidence
    assert "code undecided" in claim.per_domain


def test_a_row_without_a_centralised_reference_cannot_be_decided() -> None:
    rows = [row("fedsrd", [0.6] * 5), row("fed_dare", [0.1] * 5)]
    for r in rows:
        r["per_seed"] = {}
    (claim,) = [c for c in decide(rows) if c.claim == "FedSRD beats Fed-DARE"]
    assert claim.verdict == UNDECIDED and "no centralised reference" in claim.evidence


def test_the_table_shows_each_claims_verdict_and_per_domain_verdicts() -> None:
    rows = [row("fedsrd", [0.61, 0.62, 0.59, 0.61, 0.60]), row("fed_dare", [0.5] * 5)]
    table = render(decide(rows))
    line = next(x for x in table.splitlines() if x.startswith("| FedSRD beats Fed-DARE"))
    assert "**holds**" in line and "code holds" in line and "df=4" in line


@pytest.mark.parametrize(
    ("cost", "learns", "default"),
    [
        ("holds", "holds", "the stabilised rule"),
        ("undecided", "holds", "the paper's faithful rule stays"),
        ("holds", "does not hold", "the paper's faithful rule stays"),
    ],
)
def test_fedsrds_default_follows_the_two_stabilisation_claims(
    cost: str, learns: str, default: str
) -> None:
    claims = [Claim(COSTS_NOTHING, cost, "", ""), Claim(LEARNS, learns, "", "")]
    text = "\n".join(default_rule_section(claims))
    assert f"So {default}" in text
    assert f"At the budget: **{cost}**; at 2 local steps: **{learns}**" in text
    assert default_rule_section(claims[:1]) == []
