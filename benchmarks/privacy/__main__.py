"""Print docs/privacy.md's ε table: for each federation (σ, rounds, sampling, δ) the ε fedlora
reports, tight (PLD) and by Rényi DP, beside the values of dp-accounting's own accountant API
at a ten times finer discretisation and of Opacus's PRV accountant where it models the pair,
and the figure fedlora reported before replace-one accounting (fixed-size sampling at q = 1
and sensitivity C). Computation only; it takes about a minute on 2 cores."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from dp_accounting import dp_event, privacy_accountant
from dp_accounting.pld import pld_privacy_accountant
from opacus.accountants import PRVAccountant
from opacus.accountants.analysis import rdp

from fedlora.runtime import accounting

Relation = privacy_accountant.NeighboringRelation


@dataclass(frozen=True)
class Row:
    sigma: float
    rounds: int
    sampling: str
    clients: int
    per_round: int  # fixed: m of N; poisson: expected count q·N
    delta: float

    @property
    def rate(self) -> float:
        return self.per_round / self.clients


ROWS = (
    Row(1.0, 3, "fixed", 4, 4, 0.1),
    Row(1.0, 3, "fixed", 4, 3, 0.1),
    Row(1.0, 3, "fixed", 10, 9, 0.1),
    Row(1.0, 3, "fixed", 10, 5, 0.1),
    Row(1.0, 3, "poisson", 10, 5, 0.1),
    Row(2.5, 10, "fixed", 4, 4, 0.1),
    Row(1.0, 100, "fixed", 100, 10, 1e-5),
    Row(1.0, 100, "poisson", 100, 10, 1e-5),
)


def independent(row: Row) -> tuple[float, float | None]:
    """dp-accounting's PLDAccountant (1e-4 buckets) and Opacus's PRV accountant (fixed only)."""
    if row.sampling == "fixed":
        event = dp_event.PoissonSampledDpEvent(row.rate, dp_event.GaussianDpEvent(row.sigma / 2))
        relation = Relation.ADD_OR_REMOVE_ONE
        prv = PRVAccountant()
        prv.history = [(row.sigma / 2, row.rate, row.rounds)]
        prv_eps: float | None = float(prv.get_epsilon(delta=row.delta))
    else:
        event = dp_event.PoissonSampledDpEvent(row.rate, dp_event.GaussianDpEvent(row.sigma))
        relation, prv_eps = Relation.REPLACE_ONE, None
    acc = pld_privacy_accountant.PLDAccountant(relation, value_discretization_interval=1e-4)
    acc.compose(event, row.rounds)
    return float(acc.get_epsilon(row.delta)), prv_eps


def before(row: Row) -> float:
    """What fedlora reported before: RDP of the sampled Gaussian at sensitivity C, with
    fixed-size sampling at q = 1."""
    q = 1.0 if row.sampling == "fixed" else row.rate
    spent = rdp.compute_rdp(
        q=q, noise_multiplier=row.sigma, steps=row.rounds, orders=accounting.ORDERS
    )
    return float(rdp.get_privacy_spent(orders=accounting.ORDERS, rdp=spent, delta=row.delta)[0])


def main() -> None:
    argparse.ArgumentParser(description=__doc__).parse_args()
    print(
        "| σ | rounds | sampling | δ | ε before | ε RDP | **ε (PLD)** | dp-accounting | Opacus PRV |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in ROWS:
        spent = accounting.planned(row.sampling, row.rate, row.sigma, row.rounds)
        tight, rdp_eps = (
            accounting.epsilon(spent, row.delta),
            accounting.epsilon_rdp(spent, row.delta),
        )
        pld, prv = independent(row)
        how = (
            f"fixed {row.per_round} of {row.clients}"
            if row.sampling == "fixed"
            else f"Poisson q = {row.rate:g} (N = {row.clients})"
        )
        print(
            f"| {row.sigma:g} | {row.rounds} | {how} | {row.delta:g} | {before(row):.2f} | "
            f"{rdp_eps:.2f} | **{tight:.2f}** | {pld:.2f} | "
            f"{'–' if prv is None else f'{prv:.2f}'} |"
        )


if __name__ == "__main__":
    main()
