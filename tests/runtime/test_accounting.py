"""ε under replace-one adjacency for every sampling, against values computed independently:
the exact Gaussian formula, Opacus's PRV accountant, dp-accounting's own accountant API at a
finer discretisation, and the exact (ε, δ) curve of an actual worst pair of neighbouring
federations integrated numerically."""

from __future__ import annotations

import math

import numpy as np
import pytest
from dp_accounting import dp_event, privacy_accountant
from dp_accounting.pld import pld_privacy_accountant
from opacus.accountants import PRVAccountant
from scipy.optimize import brentq
from scipy.stats import norm

from fedlora.runtime import accounting
from fedlora.runtime.accounting import Release

Relation = privacy_accountant.NeighboringRelation


def releases(sampling: str, rate: float, sigma: float, rounds: int) -> list[Release]:
    return accounting.planned(sampling, rate, sigma, rounds)


def exact_gaussian_epsilon(mu: float, delta: float) -> float:
    """ε at ``delta`` of the Gaussian mechanism whose shift is ``mu`` noise deviations
    (Balle and Wang's analytic formula; T compositions of shift s are one of shift s·√T)."""

    def gap(eps: float) -> float:
        return norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * norm.cdf(-eps / mu - mu / 2) - delta

    return float(brentq(gap, 0.0, 500.0))


def dp_accounting_epsilon(
    event: dp_event.DpEvent, relation: Relation, rounds: int, delta: float
) -> float:
    acc = pld_privacy_accountant.PLDAccountant(relation, value_discretization_interval=1e-4)
    acc.compose(event, rounds)
    return float(acc.get_epsilon(delta))


def pair_delta(
    p: list[tuple[float, float]], q: list[tuple[float, float]], rounds: int, eps: float
) -> float:
    """The exact δ(ε) of ``rounds`` releases of one-dimensional Gaussian mixtures ``p`` and
    ``q`` (lists of (weight, mean) at unit deviation), both directions, by integration on a
    grid of the ``rounds``-dimensional output space."""
    grid = np.linspace(-12.0, 12.0, 4801 if rounds == 1 else 241)
    step = grid[1] - grid[0]

    def density(mix: list[tuple[float, float]]) -> np.ndarray:
        return sum(w * norm.pdf(grid - m) for w, m in mix)

    dp, dq = density(p), density(q)
    worst = 0.0
    for a, b in ((dp, dq), (dq, dp)):
        if rounds == 1:
            total = np.maximum(a - math.exp(eps) * b, 0).sum() * step
        else:
            assert rounds == 3
            total = 0.0
            aa, bb = np.outer(a, a), np.outer(b, b)
            for i in range(grid.size):  # one slice of the first coordinate at a time
                total += np.maximum(a[i] * aa - math.exp(eps) * b[i] * bb, 0).sum()
            total *= step**3
        worst = max(worst, float(total))
    return worst


@pytest.mark.parametrize(
    ("sigma", "rounds", "delta"), [(1.0, 3, 0.1), (1.0, 10, 1e-5), (2.0, 50, 1e-5)]
)
def test_full_participation_is_the_gaussian_of_twice_the_clip(
    sigma: float, rounds: int, delta: float
) -> None:
    got = accounting.epsilon(releases("fixed", 1.0, sigma, rounds), delta)
    exact = exact_gaussian_epsilon(2 * math.sqrt(rounds) / sigma, delta)
    assert exact <= got <= exact * 1.01 + 1e-3, (got, exact)


@pytest.mark.parametrize(
    ("clients", "per_round", "sigma", "rounds", "delta"),
    [(4, 3, 1.0, 3, 0.1), (10, 9, 1.0, 3, 0.1), (10, 5, 1.0, 3, 0.1), (100, 10, 1.5, 40, 1e-5)],
)
def test_fixed_size_sampling_agrees_with_two_independent_accountants(
    clients: int, per_round: int, sigma: float, rounds: int, delta: float
) -> None:
    rate = per_round / clients
    got = accounting.epsilon(releases("fixed", rate, sigma, rounds), delta)
    # dp-accounting's accountant API on the same dominating pair (sensitivity 2C = noise σ/2)
    event = dp_event.PoissonSampledDpEvent(rate, dp_event.GaussianDpEvent(sigma / 2))
    pld = dp_accounting_epsilon(event, Relation.ADD_OR_REMOVE_ONE, rounds, delta)
    # Opacus's PRV accountant, another implementation of the same pair
    prv = PRVAccountant()
    prv.history = [(sigma / 2, rate, rounds)]
    assert got == pytest.approx(pld, rel=0.01)
    assert got == pytest.approx(prv.get_epsilon(delta=delta), rel=0.02)


@pytest.mark.parametrize(
    ("rate", "sigma", "rounds", "delta"), [(0.3, 1.0, 3, 0.1), (0.1, 1.0, 50, 1e-5)]
)
def test_poisson_sampling_agrees_with_dp_accounting_replace_one(
    rate: float, sigma: float, rounds: int, delta: float
) -> None:
    got = accounting.epsilon(releases("poisson", rate, sigma, rounds), delta)
    event = dp_event.PoissonSampledDpEvent(rate, dp_event.GaussianDpEvent(sigma))
    assert got == pytest.approx(
        dp_accounting_epsilon(event, Relation.REPLACE_ONE, rounds, delta), rel=0.01
    )


@pytest.mark.parametrize(("clients", "per_round"), [(4, 3), (10, 5), (4, 4)])
def test_an_actual_worst_pair_of_federations_needs_the_reported_epsilon(
    clients: int, per_round: int
) -> None:
    # Prepare: one coordinate; client 0's change is -C in one federation and +C in its
    # neighbour, every other client's is +C. A round sums the m sampled changes (client 0 is
    # sampled with probability m/N, replacing a +C when it is) and adds N(0, σ²C²); in units
    # of σC, shifted by the neighbour's sum, the outputs are these mixtures.
    sigma, rounds, delta, rate = 1.0, 3, 0.1, per_round / clients
    moved = [(1 - rate, 0.0), (rate, -2.0 / sigma)]
    still = [(1.0, 0.0)]

    # Execute
    reported = accounting.epsilon(releases("fixed", rate, sigma, rounds), delta)

    # Assert: at the reported ε the pair's δ is within δ (an upper bound), and 3% below it
    # the pair already exceeds δ (no looser than that)
    assert pair_delta(moved, still, rounds, reported) <= delta * 1.001
    assert pair_delta(moved, still, rounds, 0.97 * reported) > delta


def test_a_poisson_worst_pair_needs_the_reported_epsilon() -> None:
    sigma, delta, rate = 1.0, 0.1, 0.3
    low = [(1 - rate, 0.0), (rate, -1.0 / sigma)]
    high = [(1 - rate, 0.0), (rate, 1.0 / sigma)]
    reported = accounting.epsilon(releases("poisson", rate, sigma, 3), delta)
    assert pair_delta(low, high, 3, reported) <= delta * 1.001
    assert pair_delta(low, high, 3, 0.97 * reported) > delta


@pytest.mark.parametrize(("sampling", "rate"), [("fixed", 1.0), ("fixed", 0.5), ("poisson", 0.2)])
def test_the_rdp_figure_bounds_the_tight_one_from_above(sampling: str, rate: float) -> None:
    spent = releases(sampling, rate, 1.2, 20)
    assert accounting.epsilon(spent, 1e-5) <= accounting.epsilon_rdp(spent, 1e-5)


def test_calibration_finds_the_smallest_noise_within_the_target() -> None:
    sigma = accounting.calibrate(2.0, "fixed", 0.5, 8, 1e-3)
    assert accounting.epsilon(releases("fixed", 0.5, sigma, 8), 1e-3) <= 2.0
    assert accounting.epsilon(releases("fixed", 0.5, sigma * 0.99, 8), 1e-3) > 2.0


def test_rounds_allowed_is_the_last_round_within_the_target() -> None:
    allowed = accounting.rounds_allowed("fixed", 1.0, 2.0, 0.1, 3.0)
    assert allowed > 0
    assert accounting.epsilon(releases("fixed", 1.0, 2.0, allowed), 0.1) <= 3.0
    assert accounting.epsilon(releases("fixed", 1.0, 2.0, allowed + 1), 0.1) > 3.0


def test_releases_of_a_run_compose_in_any_order_and_none_cost_nothing() -> None:
    mixed = releases("fixed", 0.5, 1.0, 3) + releases("fixed", 1.0, 2.0, 2)
    assert accounting.epsilon(mixed, 1e-3) == pytest.approx(
        accounting.epsilon(mixed[::-1], 1e-3), rel=1e-9
    )
    assert accounting.epsilon([], 1e-3) == 0.0
    assert accounting.epsilon(releases("fixed", 1.0, 0.0, 1), 1e-3) == math.inf


def test_a_release_record_round_trips_and_a_bad_one_is_refused() -> None:
    r = Release(3, "poisson", 0.25, 1.5)
    assert Release.from_json(r.to_json()) == r
    with pytest.raises(ValueError):
        Release.from_json({"round": 1, "sampling": "fixed"})
    with pytest.raises(ValueError):
        Release(1, "sometimes", 0.5, 1.0)
