"""The papers' claims (``claims.toml``), decided from a quality benchmark's rows.

Each comparison pairs two rows by seed on the fraction of the base-to-centralised gap closed
(:mod:`benchmarks.quality.scores`; higher is better) and decides it with the paired tests of
:mod:`benchmarks.quality.stats`: "better" needs the 95% interval of the difference to exclude
0, "no worse" and "close" are equivalence tests (TOST) against the margin the claims file
fixes. The claim's verdict is decided on the macro-average over the domains; the same test
on each domain is reported beside it, as exploratory (uncorrected). The comparisons of the
headline family (``family = "headline"``) are corrected together by Holm's method; the
others are decided at ``alpha`` alone. Fewer than ``min_seeds`` paired seeds, no centralised
reference to normalise by, or rows made by different code or environments leave a
comparison undecided.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.quality.stats import (
    FAILS,
    HOLDS,
    UNDECIDED,
    Paired,
    both,
    decided,
    holm,
    p_values,
    paired,
)

Row = Mapping[str, Any]
MACRO = "macro"


@dataclass(frozen=True)
class Claim:
    claim: str
    verdict: str
    evidence: str
    per_domain: str = ""


def load_claims(path: Path | None = None) -> dict[str, Any]:
    """``claims.toml`` (default: beside this module), with ``[beats_local]`` expanded."""
    with (path or Path(__file__).with_name("claims.toml")).open("rb") as f:
        raw = tomllib.load(f)
    claims = list(raw.get("claim", []))
    for m in raw.get("beats_local", {}).get("methods", []):
        claims.append(
            {
                "text": f"{m} beats local-only training",
                "compare": [{"a": m, "b": "local", "test": "better"}],
            }
        )
    return {
        "min_seeds": int(raw.get("min_seeds", 2)),
        "alpha": float(raw.get("alpha", 0.05)),
        "gap_floor": float(raw.get("gap_floor", 0.0)),
        "score_floor": float(raw.get("score_floor", -math.inf)),
        "claim": claims,
    }


HEADLINE = "headline"


def rows_of(spec: Mapping[str, Any]) -> list[str]:
    """Every row a claim needs, in the order it names them."""
    return _labels(spec)


def _labels(spec: Mapping[str, Any]) -> list[str]:
    labels = [x for c in spec.get("compare", []) for x in (c["a"], c["b"])]
    labels += [x for r in spec.get("ratio", []) for x in (r["a"], r["b"])]
    labels += list(spec.get("increasing", {}).get("rows", []))
    return list(dict.fromkeys(labels))


def _mb(row: Row, key: str) -> float:
    return float(row[key]["mean"])


@dataclass(frozen=True)
class Test:
    """One comparison's paired differences and its p-values (before any correction)."""

    spec: Mapping[str, Any]
    paired: Paired | None
    p_holds: float = 1.0
    p_fails: float = 1.0
    why: str = ""
    """Why it cannot be decided (no reference, too few seeds), else empty."""


def _test(c: Mapping[str, Any], by: Mapping[str, Row], min_seeds: int) -> Test:
    a, b = by[c["a"]]["per_seed"], by[c["b"]]["per_seed"]
    if MACRO not in a or MACRO not in b:
        return Test(c, None, why="no centralised reference to normalise")
    made = set(by[c["a"]].get("made_by", [])) | set(by[c["b"]].get("made_by", []))
    if len(made) > 1:
        return Test(c, None, why="its rows were made by different code or environments")
    p = paired(a[MACRO], b[MACRO])
    if p.n < min_seeds:
        return Test(c, p, why=f"n < {min_seeds}")
    holds, fails = p_values(c["test"], p, float(c.get("margin", 0.0)))
    return Test(c, p, holds, fails)


def _text(t: Test, verdict: str, corrected: bool) -> str:
    c = t.spec
    if t.paired is None:
        return f"{c['a']} vs {c['b']}: {t.why}"
    margin = f", margin {c['margin']}" if "margin" in c else ""
    note = f" ({t.why})" if t.why else ""
    if not t.why:
        kind = "Holm-adjusted p" if corrected else "p"
        note = (
            f", {kind}: holds {min(t.p_holds, 1):.3g}, does not hold {min(t.p_fails, 1):.3g}"
            f" ({verdict})"
        )
    return f"{c['a']} vs {c['b']}: gap closed {t.paired.text()}{margin}{note}"


def _per_domain(c: Mapping[str, Any], by: Mapping[str, Row], alpha: float, min_seeds: int) -> str:
    a, b = by[c["a"]]["per_seed"], by[c["b"]]["per_seed"]
    parts = []
    for d in (d for d in a if d != MACRO and d in b):
        p = paired(a[d], b[d])
        ps = p_values(c["test"], p, float(c.get("margin", 0.0)))
        parts.append(f"{d} {UNDECIDED if p.n < min_seeds else decided(*ps, alpha)}")
    return f"{c['a']} vs {c['b']}: " + ", ".join(parts) if parts else ""


Adjusted = tuple[str, float, float]
"""A comparison's verdict and its (possibly Holm-adjusted) p-values: holds, does not hold."""


def _verdicts(tests: Sequence[Test], corrected: bool, alpha: float) -> list[Adjusted]:
    """Each test's verdict and p-values (Holm-adjusted over ``tests`` where ``corrected``)."""
    holds = [t.p_holds for t in tests]
    fails = [t.p_fails for t in tests]
    if corrected:
        holds, fails = holm(holds), holm(fails)
    return [
        (UNDECIDED if t.why else decided(h, f, alpha), h, f)
        for t, h, f in zip(tests, holds, fails, strict=True)
    ]


def decide_one(
    spec: Mapping[str, Any],
    by: Mapping[str, Row],
    min_seeds: int,
    alpha: float = 0.05,
    family: Mapping[int, Adjusted] | None = None,
) -> Claim:
    """One claim of ``claims.toml`` (see its header) decided from the rows; ``family``
    holds the Holm-corrected verdict and p-values of its comparisons, by position, when it
    belongs to the headline family."""
    missing = [lab for lab in _labels(spec) if lab not in by]
    if missing:
        return Claim(spec["text"], UNDECIDED, "not run: " + ", ".join(missing))
    verdicts, evidence, per_domain = [], [], []
    if inc := spec.get("increasing"):
        mbs = [_mb(by[r], inc["metric"]) for r in inc["rows"]]
        verdicts.append(HOLDS if all(x <= y for x, y in itertools.pairwise(mbs)) else FAILS)
        evidence.append(f"{inc['metric']} " + " / ".join(f"{m:.3f}" for m in mbs))
    tests = [_test(c, by, min_seeds) for c in spec.get("compare", [])]
    own = _verdicts(tests, False, alpha)
    for i, t in enumerate(tests):
        v, p_holds, p_fails = family[i] if family is not None else own[i]
        verdicts.append(v)
        shown = dataclasses.replace(t, p_holds=p_holds, p_fails=p_fails)
        evidence.append(_text(shown, v, family is not None))
        per_domain.append(_per_domain(t.spec, by, alpha, min_seeds))
    for r in spec.get("ratio", []):
        share = _mb(by[r["a"]], r["metric"]) / _mb(by[r["b"]], r["metric"])
        if "max" in r:
            verdicts.append(HOLDS if share <= r["max"] else FAILS)
        if "below" in r:
            verdicts.append(HOLDS if share < r["below"] else FAILS)
        evidence.append(r["say"].format(share=f"{share:.1%}"))
    for n in spec.get("notes", []):
        if n["a"] in by and n["b"] in by and MACRO in by[n["a"]]["per_seed"]:
            p = paired(by[n["a"]]["per_seed"][MACRO], by[n["b"]]["per_seed"].get(MACRO, {}))
            evidence.append(f"{n['a']} − {n['b']}: {p.text()}")
    domains = "; ".join(x for x in per_domain if x)
    return Claim(spec["text"], both(*verdicts), "; ".join(evidence), domains)


def _family(
    claims: Sequence[Mapping[str, Any]], by: Mapping[str, Row], spec: Mapping[str, Any]
) -> dict[int, dict[int, Adjusted]]:
    """The headline family's comparisons decided together (Holm), by claim index and
    comparison index; a member whose rows have not run counts in the family with p = 1."""
    members = [
        (i, j, c)
        for i, claim in enumerate(claims)
        if claim.get("family") == HEADLINE
        for j, c in enumerate(claim.get("compare", []))
    ]
    tests = [
        _test(c, by, spec["min_seeds"])
        if c["a"] in by and c["b"] in by
        else Test(c, None, why="not run")
        for _, _, c in members
    ]
    adjusted = _verdicts(tests, True, float(spec.get("alpha", 0.05)))
    out: dict[int, dict[int, Adjusted]] = {}
    for (i, j, _), got in zip(members, adjusted, strict=True):
        out.setdefault(i, {})[j] = got
    return out


def decide(rows: Sequence[Row], claims: Mapping[str, Any] | None = None) -> list[Claim]:
    """Every claim of ``claims`` (default: ``claims.toml``) decided from ``rows``."""
    spec = claims if claims is not None else load_claims()
    by = {r["label"]: r for r in rows}
    family = _family(spec["claim"], by, spec)
    alpha = float(spec.get("alpha", 0.05))
    return [
        decide_one(c, by, spec["min_seeds"], alpha, family.get(i))
        for i, c in enumerate(spec["claim"])
    ]


def render(claims: Sequence[Claim]) -> str:
    lines = ["| claim | verdict | evidence | per domain (exploratory) |", "|---|---|---|---|"]
    lines += [
        f"| {c.claim} | **{c.verdict}** | {c.evidence} | {c.per_domain or '–'} |" for c in claims
    ]
    return "\n".join(lines) + "\n"


__all__ = ["FAILS", "HOLDS", "UNDECIDED", "Claim", "decide", "load_claims", "render"]
