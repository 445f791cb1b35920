"""In which order the benchmark runs: claims first.

The plan's test runs are grouped into **stages**, one per claim of ``claims.toml`` in that
file's order (the headline claims come first there): a stage holds the rows its claim
compares that no earlier stage ran, the centralised reference its scores are normalised by,
and, for each of them, the tuning of its learning rate. A stage runs its tuning first (the
rule of :mod:`benchmarks.quality.tuning`), then its rows seed by seed, so that a sitting
that ends after a stage has decided that stage's claim. The rows no claim compares come
last. A selection (``--claims``, ``--rows``) keeps some stages, or some rows of them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from benchmarks.quality.claims import rows_of
from benchmarks.quality.plan import CENTRAL, RunSpec

LEFTOVER = "rows no claim compares"


@dataclass(frozen=True)
class Stage:
    """A claim's share of the plan: the rows to tune (by whose rate they train) and the
    test runs, seed by seed."""

    title: str
    number: int
    """The claim's position in ``claims.toml`` (1-based; 0 for the leftover rows)."""
    tune: tuple[str, ...]
    runs: tuple[RunSpec, ...]
    rows: tuple[str, ...] = field(default=())


def stages(specs: Sequence[RunSpec], claims: Sequence[Mapping[str, Any]]) -> list[Stage]:
    """``specs`` (the plan's test runs) as stages, claim by claim (module docstring)."""
    labels = list(dict.fromkeys(s.label for s in specs))
    scheduled: set[str] = set()
    tuned: set[str] = set()
    out = []

    def stage(title: str, number: int, wanted: Sequence[str]) -> None:
        rows = [lab for lab in labels if lab in wanted and lab not in scheduled]
        if not rows:
            return
        scheduled.update(rows)
        runs = tuple(s for s in _seed_major(specs) if s.label in rows)
        keys = [k for k in dict.fromkeys(s.tuned_as for s in runs) if k and k not in tuned]
        tuned.update(keys)
        out.append(Stage(title, number, tuple(keys), runs, tuple(rows)))

    for i, claim in enumerate(claims, start=1):
        needed = rows_of(claim)
        if claim.get("compare"):
            needed = [*needed, CENTRAL]
        stage(claim["text"], i, needed)
    stage(LEFTOVER, 0, labels)
    return out


def _seed_major(specs: Sequence[RunSpec]) -> list[RunSpec]:
    """Seed by seed, in plan order within a seed."""
    seeds = list(dict.fromkeys(s.seed for s in specs))
    return [s for seed in seeds for s in specs if s.seed == seed]


def select(
    all_stages: Sequence[Stage], claims: Sequence[str] = (), rows: Sequence[str] = ()
) -> list[Stage]:
    """The stages of the claims named (by number or by words of their text), and of those
    only the rows named, where either is given."""
    out = []
    for st in all_stages:
        if claims and not any(_names(st, c) for c in claims):
            continue
        if rows:
            runs = tuple(s for s in st.runs if s.label in rows)
            if not runs:
                continue
            keys = tuple(k for k in st.tune if any(s.tuned_as == k for s in runs))
            st = Stage(st.title, st.number, keys, runs, tuple(dict.fromkeys(s.label for s in runs)))
        out.append(st)
    return out


def _names(st: Stage, wanted: str) -> bool:
    if wanted.isdigit():
        return int(wanted) == st.number
    return wanted.lower() in st.title.lower()
