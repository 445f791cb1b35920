"""The two papers' claims, decided from a quality benchmark's rows.

Each claim compares rows of :func:`fedlora.bench.quality_report.aggregate` on the in-domain
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

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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


def _mb(row: Row, key: str = "cum_mb") -> float:
    return float(row[key]["mean"])


def decide(rows: Sequence[Row]) -> list[Claim]:
    """Every claim whose rows ran; a claim with a row missing says which."""
    by = {r["label"]: r for r in rows}
    out: list[Claim] = []

    def need(claim: str, *labels: str) -> list[Row] | None:
        missing = [lab for lab in labels if lab not in by]
        if missing:
            out.append(Claim(claim, UNDECIDED, "not run: " + ", ".join(missing)))
            return None
        return [by[lab] for lab in labels]

    c = "FedSRD keeps FedAvg's in-domain quality at about 10% of its bytes"
    if got := need(c, "fedsrd", "fedavg"):
        srd, avg = got
        d = diff(srd, avg, rows)
        share = _mb(srd) / _mb(avg)
        verdict = _both(no_worse(d), HOLDS if share <= 0.2 else FAILS)
        out.append(
            Claim(c, verdict, f"{_scores(srd)}; {_scores(avg)}; {d.text()}; bytes {share:.1%}")
        )

    c = "FedSRD beats Fed-DARE"
    if got := need(c, "fedsrd", "fed_dare"):
        d = diff(got[0], got[1], rows)
        out.append(Claim(c, better(d), f"{_scores(got[0])}; {_scores(got[1])}; {d.text()}"))

    c = "FedSRD-e is close to FedSRD"
    if got := need(c, "fedsrd-e", "fedsrd"):
        d = diff(got[0], got[1], rows)
        out.append(Claim(c, close(d), f"{_scores(got[0])}; {_scores(got[1])}; {d.text()}"))

    c = "importance beats random and magnitude sparsification"
    rnd, mag = "fedsrd sparsifier=random", "fedsrd sparsifier=magnitude"
    if got := need(c, "fedsrd", rnd, mag):
        d1, d2 = diff(got[0], got[1], rows), diff(got[0], got[2], rows)
        out.append(
            Claim(
                c,
                _both(better(d1), better(d2)),
                f"{_scores(got[0])}; vs random {d1.text()}; vs magnitude {d2.text()}",
            )
        )

    c = "the importance plug-in helps FedAvg"
    if got := need(c, "fedavg + importance uplink", "fedavg"):
        d = diff(got[0], got[1], rows)
        share = _mb(got[0], "mb_up") / _mb(got[1], "mb_up")
        out.append(
            Claim(
                c,
                better(d),
                f"{_scores(got[0])}; {_scores(got[1])}; {d.text()}; upload {share:.1%}",
            )
        )

    c = "FLoRIST matches or beats FedIT with less download than FLoRA"
    if got := need(c, "florist", "fedavg", "flora"):
        flo, avg, flora = got
        d = diff(flo, avg, rows)
        down = _mb(flo, "mb_down") / _mb(flora, "mb_down")
        verdict = _both(no_worse(d), HOLDS if down < 1 else FAILS)
        out.append(
            Claim(
                c,
                verdict,
                f"{_scores(flo)}; {_scores(avg)}; {d.text()}; download {down:.1%} of FLoRA's",
            )
        )

    c = "higher tau trades bytes for quality (FLoRIST)"
    if got := need(c, "florist tau=0.80 pad=fresh", "florist", "florist tau=0.99 pad=fresh"):
        mbs = [_mb(r) for r in got]
        d = diff(got[2], got[0], rows)
        monotone = mbs[0] <= mbs[1] <= mbs[2]
        verdict = _both(HOLDS if monotone else FAILS, better(d))
        out.append(
            Claim(
                c,
                verdict,
                "cum MB " + " / ".join(f"{m:.3f}" for m in mbs) + f" at tau 0.80/0.90/0.99; "
                f"tau 0.99 vs 0.80 {d.text()}",
            )
        )

    c = "fresh padding beats zeros (FLoRIST)"
    if got := need(c, "florist", "florist tau=0.90 pad=zeros"):
        d = diff(got[0], got[1], rows)
        others = [
            f"tau {t}: fresh − zeros {diff(by[f], by[z], rows).value:+.4f}"
            for t in ("0.80", "0.99")
            if (f := f"florist tau={t} pad=fresh") in by
            and (z := f"florist tau={t} pad=zeros") in by
        ]
        out.append(Claim(c, better(d), "; ".join([f"tau 0.90: {d.text()}", *others])))

    c = "bfloat16 values on the wire cost FedSRD no quality"
    if got := need(c, "fedsrd wire=bfloat16", "fedsrd"):
        d = diff(got[0], got[1], rows)
        share = _mb(got[0]) / _mb(got[1])
        out.append(
            Claim(c, no_worse(d), f"{_scores(got[0])}; {d.text()}; bytes {share:.1%} of float32")
        )
    return out


def render(claims: Sequence[Claim]) -> str:
    lines = ["| claim | verdict | evidence |", "|---|---|---|"]
    lines += [f"| {c.claim} | **{c.verdict}** | {c.evidence} |" for c in claims]
    return "\n".join(lines) + "\n"
