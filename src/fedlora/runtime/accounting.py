"""ε of client-level differential privacy: the neighbouring relation, the mechanism each round
releases, and the accountants that compose them.

**Adjacency: replace-one.** Two federations are neighbours when one client's whole data is
replaced by anything else (the set of registered clients, N, is public and fixed: it is how
many nodes the server serves). Every client's change is clipped to L2 norm ``C``, so the two
changes of the replaced client differ by up to ``2C``.

**One release per aggregated round**: the sum of the sampled clients' clipped changes plus
Gaussian noise of standard deviation ``σC`` on every coordinate, divided by a count that does
not depend on the data. By the sampling the run uses, its privacy is that of a pair of
one-dimensional distributions (a *dominating pair*: no two neighbouring federations are told
apart better), with ``P0 = N(0, σ²)``:

- ``fixed`` sampling of ``m`` of ``N`` clients (``m = N``: full participation) is sampling
  without replacement at rate ``q = m/N``. The replaced client is in the sample with
  probability ``q``; when it is not, another client takes its place, whose change may equal the
  replacement's (Zhu, Dong and Wang, AISTATS 2022, on sampling without replacement under
  replace-one). The pair is ``(1-q)·P0 + q·N(2C)`` against ``P0``, in both directions, with
  noise ``σC``: the add/remove Poisson-subsampled Gaussian of sensitivity ``2C``. An actual
  pair of federations reaches it (the replaced client at ``-C``, every other at ``+C``), so
  it is tight as well as an upper bound. At ``q = 1`` it is the Gaussian mechanism of
  sensitivity ``2C``.
- ``poisson`` sampling (each client independently with probability ``q``): the replaced
  client is in the sample with probability ``q`` and nobody takes its place when it is not,
  so the pair is ``(1-q)·P0 + q·N(-C)`` against ``(1-q)·P0 + q·N(+C)``.

**Accountants.** ``epsilon`` composes the releases' privacy loss distributions (PLD) with
Google's ``dp-accounting``, pessimistically discretised (an upper bound that is tight to the
discretisation). ``epsilon_rdp`` is the Rényi-DP figure of Opacus's sampled-Gaussian analysis
for the fixed pair at noise ``σ/2`` (for Poisson sampling that pair dominates too, so it is a
looser bound there), kept beside the tight one for comparison with the literature.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

ADJACENCY = "replace-one"
SAMPLINGS = ("fixed", "poisson")
DISCRETISATION = 1e-3
"""Width of the PLD's privacy-loss buckets; rounding is pessimistic, so ε stays an upper
bound at any width (measured: 1e-3 and 1e-4 agree to four digits here, 10x faster)."""

ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [128, 256, 512]
"""Rényi orders the RDP figure minimises over (Opacus's default grid)."""


@dataclass(frozen=True)
class Release:
    """One noisy aggregate that may reach clients: how the round's clients were sampled, at
    which rate (``m/N`` for ``fixed``), and the noise multiplier ``σ``."""

    round: int
    sampling: str
    sample_rate: float
    noise_multiplier: float

    def __post_init__(self) -> None:
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {self.sampling!r}")
        if not 0 < self.sample_rate <= 1 or not self.noise_multiplier >= 0:
            raise ValueError(f"a release needs a rate in (0, 1] and σ >= 0: {self}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> Release:
        if not isinstance(data, dict) or set(data) != {f for f in cls.__dataclass_fields__}:
            raise ValueError(f"not a release record: {data!r}")
        return cls(
            int(data["round"]),
            str(data["sampling"]),
            float(data["sample_rate"]),
            float(data["noise_multiplier"]),
        )


def _groups(releases: Iterable[Release]) -> Counter[tuple[str, float, float]]:
    return Counter((r.sampling, r.sample_rate, r.noise_multiplier) for r in releases)


def epsilon(releases: Sequence[Release], delta: float) -> float:
    """ε at ``delta`` of all ``releases`` composed (PLD accountant; see the module docstring)."""
    from dp_accounting import privacy_accountant
    from dp_accounting.pld import privacy_loss_distribution as pld

    relation = privacy_accountant.NeighboringRelation
    total = None
    for (sampling, q, sigma), count in _groups(releases).items():
        if sigma == 0:
            return math.inf
        one = pld.from_gaussian_mechanism(
            standard_deviation=sigma,
            sensitivity=2.0 if sampling == "fixed" else 1.0,
            sampling_prob=q,
            value_discretization_interval=DISCRETISATION,
            neighboring_relation=(
                relation.ADD_OR_REMOVE_ONE if sampling == "fixed" else relation.REPLACE_ONE
            ),
        ).self_compose(count)
        total = one if total is None else total.compose(one)
    if total is None:
        return 0.0
    return float(total.get_epsilon_for_delta(delta))


def epsilon_rdp(releases: Sequence[Release], delta: float) -> float:
    """ε at ``delta`` by Rényi DP (Opacus's sampled-Gaussian RDP of the fixed pair)."""
    from opacus.accountants.analysis import rdp

    spent = None
    for (_, q, sigma), count in _groups(releases).items():
        if sigma == 0:
            return math.inf
        one = rdp.compute_rdp(q=q, noise_multiplier=sigma / 2, steps=count, orders=ORDERS)
        spent = one if spent is None else spent + one
    if spent is None:
        return 0.0
    eps, _ = rdp.get_privacy_spent(orders=ORDERS, rdp=spent, delta=delta)
    return float(eps)


def planned(sampling: str, rate: float, sigma: float, rounds: int) -> list[Release]:
    """The releases of ``rounds`` rounds alike."""
    return [Release(t, sampling, rate, sigma) for t in range(1, rounds + 1)]


def calibrate(target: float, sampling: str, rate: float, rounds: int, delta: float) -> float:
    """The smallest noise multiplier (to 0.1%) whose ε after ``rounds`` is at most ``target``."""
    if target <= 0 or rounds < 1:
        raise ValueError("calibrate needs a positive target and at least one round")

    def spent(sigma: float) -> float:
        return epsilon(planned(sampling, rate, sigma, rounds), delta)

    low, high = 0.0, 1.0
    while spent(high) > target:
        low, high = high, 2 * high
        if high > 1e6:
            raise ValueError(f"no noise multiplier reaches ε = {target:g} at δ = {delta:g}")
    while high - low > 1e-3 * high:
        mid = (low + high) / 2
        low, high = (low, mid) if spent(mid) <= target else (mid, high)
    return high


def rounds_allowed(sampling: str, rate: float, sigma: float, delta: float, target: float) -> int:
    """How many rounds stay within ``target`` (0 if not even one; at most 100,000)."""
    low, high = 0, 1
    while high <= 100_000 and epsilon(planned(sampling, rate, sigma, high), delta) <= target:
        low, high = high, 2 * high
    high = min(high, 100_001)
    while high - low > 1:
        mid = (low + high) // 2
        within = epsilon(planned(sampling, rate, sigma, mid), delta) <= target
        low, high = (mid, high) if within else (low, mid)
    return low
