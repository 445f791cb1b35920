"""The papers' claims (``claims.toml``), decided from a quality benchmark's rows.

Each comparison pairs two rows by seed on the fraction of the base-to-centralised gap closed
(:mod:`benchmarks.quality.scores`; higher is better) and decides it with the paired tests of
:mod:`benchmarks.quality.stats`: "better" needs the 95% interval of the difference to exclude
0, "no worse" and "close" are equivalence tests (TOST) against the margin the claims file
fixes. The claim's verdict is decided on the macro-average over the domains; the same test
on each domain is reported beside it. Fewer than ``min_seeds`` paired seeds, or no
centralised reference to normalise by, leave a comparison undecided.
"""

from __future__ import annotations

import itertools
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
    beats,
    both,
    close,
    no_worse,
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
    return {"min_seeds": int(raw.get("min_seeds", 2)), "claim": claims}


def verdict(test: Mapping[str, Any], p: Paired, min_seeds: int) -> str:
    if p.n < min_seeds:
        return UNDECIDED
    if test["test"] == "better":
        return beats(p)
    if test["test"] == "no_worse":
        return no_worse(p, float(test["margin"]))
    if test["test"] == "close":
        return close(p, float(test["margin"]))
    raise ValueError(f"unknown test {test['test']!r}")


def _labels(spec: Mapping[str, Any]) -> list[str]:
    labels = [x for c in spec.get("compare", []) for x in (c["a"], c["b"])]
    labels += [x for r in spec.get("ratio", []) for x in (r["a"], r["b"])]
    labels += list(spec.get("increasing", {}).get("rows", []))
    return list(dict.fromkeys(labels))


def _mb(row: Row, key: str) -> float:
    return float(row[key]["mean"])


def _compare(
    c: Mapping[str, Any], by: Mapping[str, Row], min_seeds: int
) -> tuple[str, str, list[str]]:
    """(verdict on the macro score, its evidence, per-domain verdicts) of one comparison."""
    a, b = by[c["a"]]["per_seed"], by[c["b"]]["per_seed"]
    if MACRO not in a or MACRO not in b:
        return UNDECIDED, f"{c['a']} vs {c['b']}: no centralised reference to normalise", []
    p = paired(a[MACRO], b[MACRO])
    v = verdict(c, p, min_seeds)
    margin = f", margin {c['margin']}" if "margin" in c else ""
    short = f" (n < {min_seeds})" if p.n < min_seeds else ""
    text = f"{c['a']} vs {c['b']}: gap closed {p.text()}{margin}{short}"
    domains = [d for d in a if d != MACRO and d in b]
    per = [f"{d} {verdict(c, paired(a[d], b[d]), min_seeds)}" for d in domains]
    return v, text, per


def decide_one(spec: Mapping[str, Any], by: Mapping[str, Row], min_seeds: int) -> Claim:
    """One claim of ``claims.toml`` (see its header) decided from the rows."""
    missing = [lab for lab in _labels(spec) if lab not in by]
    if missing:
        return Claim(spec["text"], UNDECIDED, "not run: " + ", ".join(missing))
    verdicts, evidence, per_domain = [], [], []
    if inc := spec.get("increasing"):
        mbs = [_mb(by[r], inc["metric"]) for r in inc["rows"]]
        verdicts.append(HOLDS if all(x <= y for x, y in itertools.pairwise(mbs)) else FAILS)
        evidence.append(f"{inc['metric']} " + " / ".join(f"{m:.3f}" for m in mbs))
    for c in spec.get("compare", []):
        v, text, per = _compare(c, by, min_seeds)
        verdicts.append(v)
        evidence.append(text)
        per_domain.append(f"{c['a']} vs {c['b']}: " + ", ".join(per) if per else "")
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
    return Claim(spec["text"], both(*verdicts), "; ".join(evidence), "; ".join(per_domain))


def decide(rows: Sequence[Row], claims: Mapping[str, Any] | None = None) -> list[Claim]:
    """Every claim of ``claims`` (default: ``claims.toml``) decided from ``rows``."""
    spec = claims if claims is not None else load_claims()
    by = {r["label"]: r for r in rows}
    return [decide_one(c, by, spec["min_seeds"]) for c in spec["claim"]]


def render(claims: Sequence[Claim]) -> str:
    lines = ["| claim | verdict | evidence | per domain |", "|---|---|---|---|"]
    lines += [
        f"| {c.claim} | **{c.verdict}** | {c.evidence} | {c.per_domain or '–'} |" for c in claims
    ]
    return "\n".join(lines) + "\n"


__all__ = ["FAILS", "HOLDS", "UNDECIDED", "Claim", "decide", "load_claims", "render"]
