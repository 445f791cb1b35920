"""Paired statistics for the claims: a t confidence interval of the per-seed differences and
the two one-sided tests (TOST) of equivalence against a margin.

A comparison pairs two rows by seed (a seed fixes the data order and the initial adapter of
every method, so the seed-to-seed noise they share cancels in the difference). With ``d_s``
the difference of a score between row ``a`` and row ``b`` on seed ``s`` (oriented so that
positive means ``a`` is better), ``n`` seeds, mean ``d̄`` and sample sd ``s_d``:

* the two-sided ``1 − α`` interval is ``d̄ ± t_{1−α/2, n−1} · s_d/√n``; "a beats b" holds
  when it lies above 0, does not hold when it lies below 0, and is undecided otherwise;
* "a is no worse than b by more than m" (one-sided TOST) holds when the lower end of the
  ``1 − 2α`` interval is above ``−m`` and does not hold when its upper end is below ``−m``;
* "a and b are within m of each other" (TOST) holds when the ``1 − 2α`` interval lies
  inside ``(−m, m)`` and does not hold when it lies wholly outside it.

The margins are written in ``claims.toml`` before the runs, so more noise makes an
equivalence harder to show, never easier. Fewer than ``min_n`` paired seeds: undecided.

The same decisions as p-values (:func:`p_values`): a test "holds" at level α when its
``p_holds < α`` and "does not hold" when its ``p_fails < α``, exactly the intervals above at
α = 0.05. A family of tests is corrected by Holm's step-down method (:func:`holm`), each
direction on its own.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

HOLDS, FAILS, UNDECIDED = "holds", "does not hold", "undecided"


@dataclass(frozen=True)
class Paired:
    """The per-seed differences ``a − b`` (positive: ``a`` better) and their t intervals."""

    n: int
    mean: float
    ci95: tuple[float, float] | None
    """Two-sided 95% interval (None below two pairs or with no spread)."""
    ci90: tuple[float, float] | None
    """Two-sided 90% interval: the two one-sided 5% tests of TOST."""
    sd: float = math.nan
    """Sample standard deviation of the differences."""

    def text(self, unit: str = "") -> str:
        if self.ci95 is None:
            return f"Δ {self.mean:+.3f}{unit} (n={self.n}, no interval)"
        lo, hi = self.ci95
        return f"Δ {self.mean:+.3f}{unit} [{lo:+.3f}, {hi:+.3f}] (n={self.n}, df={self.n - 1})"


def t_interval(diffs: Sequence[float], level: float) -> tuple[float, float] | None:
    """The two-sided ``level`` t interval of the mean of ``diffs`` (df = n − 1)."""
    from scipy import stats

    n = len(diffs)
    if n < 2:
        return None
    mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    if sd == 0.0:
        return (mean, mean)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return (mean - half, mean + half)


def paired(a: dict[int, float], b: dict[int, float]) -> Paired:
    """Per-seed differences ``a[s] − b[s]`` over the seeds both have."""
    seeds = sorted(set(a) & set(b))
    diffs = [a[s] - b[s] for s in seeds]
    mean = statistics.fmean(diffs) if diffs else math.nan
    sd = statistics.stdev(diffs) if len(diffs) > 1 else math.nan
    return Paired(len(diffs), mean, t_interval(diffs, 0.95), t_interval(diffs, 0.90), sd)


def beats(p: Paired) -> str:
    """Verdict on "a is better than b": the 95% interval excludes 0."""
    if p.ci95 is None:
        return UNDECIDED
    lo, hi = p.ci95
    return HOLDS if lo > 0 else FAILS if hi < 0 else UNDECIDED


def no_worse(p: Paired, margin: float) -> str:
    """Verdict on "a is not worse than b by more than ``margin``" (one-sided TOST at 5%)."""
    if p.ci90 is None:
        return UNDECIDED
    lo, hi = p.ci90
    return HOLDS if lo > -margin else FAILS if hi < -margin else UNDECIDED


def close(p: Paired, margin: float) -> str:
    """Verdict on "a and b differ by less than ``margin``" (TOST at 5%)."""
    if p.ci90 is None:
        return UNDECIDED
    lo, hi = p.ci90
    if -margin < lo and hi < margin:
        return HOLDS
    return FAILS if hi < -margin or lo > margin else UNDECIDED


def both(*verdicts: str) -> str:
    """All of ``verdicts``: fails if any fails, holds if all hold."""
    if FAILS in verdicts:
        return FAILS
    return HOLDS if verdicts and all(v == HOLDS for v in verdicts) else UNDECIDED


def _above(p: Paired, at: float) -> float:
    """One-sided p-value of "the mean difference is above ``at``" (t, df = n − 1)."""
    from scipy import stats

    if p.n < 2 or math.isnan(p.sd):
        return 1.0
    if p.sd == 0.0:
        return 0.0 if p.mean > at else 1.0
    t = (p.mean - at) / (p.sd / math.sqrt(p.n))
    return float(stats.t.sf(t, p.n - 1))


def _below(p: Paired, at: float) -> float:
    """One-sided p-value of "the mean difference is below ``at``"."""
    from scipy import stats

    if p.n < 2 or math.isnan(p.sd):
        return 1.0
    if p.sd == 0.0:
        return 0.0 if p.mean < at else 1.0
    t = (p.mean - at) / (p.sd / math.sqrt(p.n))
    return float(stats.t.cdf(t, p.n - 1))


def p_values(test: str, p: Paired, margin: float = 0.0) -> tuple[float, float]:
    """``(p_holds, p_fails)`` of a "better", "no_worse" or "close" test (module docstring)."""
    if test == "better":  # two-sided at the sign observed: the 95% interval's decision
        return min(1.0, 2 * _above(p, 0.0)), min(1.0, 2 * _below(p, 0.0))
    if test == "no_worse":
        return _above(p, -margin), _below(p, -margin)
    if test == "close":
        return max(_above(p, -margin), _below(p, margin)), min(
            _below(p, -margin), _above(p, margin)
        )
    raise ValueError(f"unknown test {test!r}")


def holm(ps: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values of a family (same order as ``ps``): reject the
    ``i``-th smallest when every adjusted value up to it is below α."""
    order = sorted(range(len(ps)), key=lambda i: ps[i])
    adjusted = [1.0] * len(ps)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(ps) - rank) * ps[i]))
        adjusted[i] = running
    return adjusted


def decided(p_holds: float, p_fails: float, alpha: float) -> str:
    """The verdict of a test from its (possibly adjusted) p-values."""
    return HOLDS if p_holds < alpha else FAILS if p_fails < alpha else UNDECIDED
