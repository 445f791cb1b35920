"""The two papers' claims (``claims.toml``), decided from a quality benchmark's rows.

Each claim compares rows of :func:`benchmarks.quality.report.aggregate` on the in-domain
held-out loss (lower is better; choice accuracy is shown beside it). A difference counts
only beyond the noise of the seeds: ``2 · √(sd_a²/n_a + sd_b²/n_b)``, two standard errors
of the difference. A row run on one seed borrows the sample sd of its method's main row
(the ablations and FLoRIST's settings vary one thing of a method that ran every seed);
without any seed spread a comparison is undecided. Verdicts:

* "better" claims hold when the difference is beyond the noise in the claimed direction,
  do not hold when it is beyond it the other way, and are undecided otherwise;
* "no worse" / "close" claims hold when the difference stays within the noise (worse by
  more does not hold): at this scale that means *not distinguishable*, and the numbers
  say how wide the noise was.
"""

from __future__ import annotations

import itertools
import math
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HOLDS, FAILS, UNDECIDED = "holds", "does not hold", "undecided"

Row = Mapping[str, Any]


@dataclass(frozen=True)
class Claim:
    claim: str
    verdict: str
    evidence: str


@dataclass(frozen=True)
class Diff:
    """Mean in-domain loss of ``a`` minus ``b`` and the noise that difference must clear."""

    value: float
    noise: float | None

    def text(self) -> str:
        noise = "no seed spread" if self.noise is None else f"noise ±{self.noise:.4f}"
        return f"Δ loss {self.value:+.4f} ({noise})"


def _sd(row: Row, rows: Sequence[Row]) -> tuple[float | None, int]:
    """(sample sd, seed count) of a row's in-domain loss, borrowing the main row's sd."""
    stat = row["id_loss"]
    if stat.get("sd") is not None:
        return float(stat["sd"]), int(stat["n"])
    main = next((r for r in rows if r["group"] == "main" and r["method"] == row["method"]), None)
    if main is not None and main["id_loss"].get("sd") is not None:
        return float(main["id_loss"]["sd"]), int(stat["n"] or 1)
    return None, int(stat["n"] or 1)


def diff(a: Row, b: Row, rows: Sequence[Row]) -> Diff:
    sd_a, n_a = _sd(a, rows)
    sd_b, n_b = _sd(b, rows)
    value = float(a["id_loss"]["mean"]) - float(b["id_loss"]["mean"])
    if sd_a is None or sd_b is None:
        return Diff(value, None)
    return Diff(value, 2 * math.sqrt(sd_a**2 / n_a + sd_b**2 / n_b))


def better(d: Diff) -> str:
    """Verdict on "a has the lower loss"."""
    if d.noise is None:
        return UNDECIDED
    if d.value < -d.noise:
        return HOLDS
    if d.value > d.noise:
        return FAILS
    return UNDECIDED


def no_worse(d: Diff) -> str:
    """Verdict on "a's loss is not above b's"."""
    if d.noise is None:
        return UNDECIDED
    return HOLDS if d.value <= d.noise else FAILS


def close(d: Diff) -> str:
    """Verdict on "a and b are indistinguishable"."""
    if d.noise is None:
        return UNDECIDED
    return HOLDS if abs(d.value) <= d.noise else FAILS


def _both(*verdicts: str) -> str:
    if FAILS in verdicts:
        return FAILS
    return HOLDS if all(v == HOLDS for v in verdicts) else UNDECIDED


def _scores(row: Row) -> str:
    loss, acc = row["id_loss"], row.get("id_acc") or {}
    sd = f" ± {loss['sd']:.4f}" if loss.get("sd") is not None else ""
    text = f"{row['label']}: loss {loss['mean']:.4f}{sd} (n={loss['n']})"
    if acc.get("mean") is not None:
        text += f", acc {acc['mean']:.3f}"
    return text


def _mb(row: Row, key: str) -> float:
    return float(row[key]["mean"])


TESTS: Mapping[str, Callable[[Diff], str]] = {
    "better": better,
    "no_worse": no_worse,
    "close": close,
}


def load_claims(path: Path | None = None) -> list[dict[str, Any]]:
    """The claims of ``path`` (default: ``claims.toml`` beside this module)."""
    with (path or Path(__file__).with_name("claims.toml")).open("rb") as f:
        return list(tomllib.load(f)["claim"])


def _labels(spec: Mapping[str, Any]) -> list[str]:
    labels = [x for c in spec.get("compare", []) for x in (c["a"], c["b"])]
    labels += [x for r in spec.get("ratio", []) for x in (r["a"], r["b"])]
    labels += list(spec.get("increasing", {}).get("rows", []))
    return list(dict.fromkeys(labels))


def decide_one(spec: Mapping[str, Any], by: Mapping[str, Row], rows: Sequence[Row]) -> Claim:
    """One claim of ``claims.toml`` (see its header) decided from the rows."""
    missing = [lab for lab in _labels(spec) if lab not in by]
    if missing:
        return Claim(spec["text"], UNDECIDED, "not run: " + ", ".join(missing))
    verdicts, evidence, shown = [], [], set()
    if inc := spec.get("increasing"):
        mbs = [_mb(by[r], inc["metric"]) for r in inc["rows"]]
        verdicts.append(HOLDS if all(x <= y for x, y in itertools.pairwise(mbs)) else FAILS)
        evidence.append(f"{inc['metric']} " + " / ".join(f"{m:.3f}" for m in mbs))
    for c in spec.get("compare", []):
        d = diff(by[c["a"]], by[c["b"]], rows)
        verdicts.append(TESTS[c["test"]](d))
        new = [lab for lab in (c["a"], c["b"]) if lab not in shown]
        evidence += [_scores(by[lab]) for lab in new]
        shown.update(new)
        evidence.append(f"{c['a']} vs {c['b']}: {d.text()}" if len(new) < 2 else d.text())
    for r in spec.get("ratio", []):
        share = _mb(by[r["a"]], r["metric"]) / _mb(by[r["b"]], r["metric"])
        if "max" in r:
            verdicts.append(HOLDS if share <= r["max"] else FAILS)
        if "below" in r:
            verdicts.append(HOLDS if share < r["below"] else FAILS)
        evidence.append(r["say"].format(share=f"{share:.1%}"))
    for n in spec.get("notes", []):
        if n["a"] in by and n["b"] in by:
            evidence.append(f"{n['a']} − {n['b']}: {diff(by[n['a']], by[n['b']], rows).value:+.4f}")
    return Claim(spec["text"], _both(*verdicts), "; ".join(evidence))


def decide(rows: Sequence[Row], claims: Sequence[Mapping[str, Any]] | None = None) -> list[Claim]:
    """Every claim of ``claims`` (default: ``claims.toml``) decided from ``rows``."""
    by = {r["label"]: r for r in rows}
    return [
        decide_one(spec, by, rows) for spec in (claims if claims is not None else load_claims())
    ]


def render(claims: Sequence[Claim]) -> str:
    lines = ["| claim | verdict | evidence |", "|---|---|---|"]
    lines += [f"| {c.claim} | **{c.verdict}** | {c.evidence} |" for c in claims]
    return "\n".join(lines) + "\n"
