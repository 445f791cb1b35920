"""Many registered clients on one machine: what registering more clients costs a round.

Each run is a short real federation (:func:`fedlora.runtime.simulation.run`) in a fresh
interpreter that reports its own peak resident set (``VmHWM``, :mod:`benchmarks.common.rss`);
its round times come from the run's own ``metrics.jsonl``. A registered client holds data
(the same pool is split ``iid`` among however many there are), a LoRA view and a place in
every round's broadcast, so the figures that must not grow with the number registered are
the peak RSS and the round time; the server's aggregation may grow with the number sampled.

Rounds: the first is a warm-up and the last also evaluates, so the round figures are
medians over the rounds between (``SCALE_ROUNDS`` − 2 of them).
"""

from __future__ import annotations

import json
import statistics
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common.data import beside
from benchmarks.common.rss import child_report
from fedlora.errors import ConfigError, FedloraError

SCALE_ROUNDS = 10
SCALE_OVERRIDES: tuple[str, ...] = (
    "data.partition=iid",
    f"federation.rounds={SCALE_ROUNDS}",
    "federation.min_clients=1",
    "train.local_steps=1",
    "data.max_eval_per_domain=2",
    "eval.every=1000000",
    "log.progress=off",
)
"""The short federations of the scale runs (the user's ``--set`` overrides come after)."""


@dataclass(frozen=True)
class ScaleRun:
    """One short federation: ``registered`` clients, ``sampled`` of them per round."""

    method: str
    registered: int
    sampled: int
    peak_rss_bytes: int
    round_s: float
    """Median wall time of a round (the driver's ``round_seconds``)."""
    train_s: float
    """Median over those rounds of the sampled clients' summed local training time."""
    server_s: float
    """Median of the server's aggregation step (``server_seconds``)."""
    wall_s: float
    """The whole child process: start, model, data, every round, adapter."""
    tokens: float = 0.0
    """Median tokens the sampled clients trained on in a round."""
    round_s_per_ktok: float = 0.0
    """Median over those rounds of the round's wall time per 1,000 trained tokens: the round
    time with the sampled clients' batch lengths (which differ from run to run, since other
    clients are sampled) taken out."""

    @property
    def non_train_s(self) -> float:
        return self.round_s - self.train_s


def scale_plan(registered: Sequence[int], sampled: Sequence[int]) -> list[tuple[int, int]]:
    """(registered, sampled) pairs: every registered count at the first sampled count, then
    the other sampled counts at the largest registered count."""
    if not registered or not sampled:
        raise ConfigError("--clients and --sampled must each name at least one count")
    if any(n < 1 for n in registered) or any(s < 1 for s in sampled):
        raise ConfigError(f"client counts must be positive, got {registered} / {sampled}")
    if max(sampled) > max(registered):
        raise ConfigError(
            f"--sampled {max(sampled)} exceeds the largest --clients {max(registered)}"
        )
    first = sampled[0]
    plan = [(n, min(first, n)) for n in sorted(set(registered))]
    plan += [(max(registered), s) for s in sorted(set(sampled)) if s != first]
    return plan


def round_figures(records: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Medians over the rounds between the first and the last: ``round_s``, ``train_s``
    (summed over the clients), ``server_s``, ``tokens`` and ``round_s_per_ktok``."""
    rounds = [r for r in records if "round_seconds" in r]
    middle = rounds[1:-1] or rounds
    if not middle:
        raise FedloraError("the scale run wrote no round records")

    def tokens(r: dict[str, Any]) -> float:
        return float(sum(r.get("tokens", {}).values()))

    return {
        "round_s": statistics.median(r["round_seconds"] for r in middle),
        "train_s": statistics.median(sum(r["train_seconds"].values()) for r in middle),
        "server_s": statistics.median(r["server_seconds"] for r in middle),
        "tokens": statistics.median(tokens(r) for r in middle),
        "round_s_per_ktok": statistics.median(
            1000 * r["round_seconds"] / max(tokens(r), 1.0) for r in middle
        ),
    }


def run_args(
    model: str,
    method: str,
    registered: int,
    sampled: int,
    overrides: Sequence[str],
    out: Path,
) -> list[str]:
    """The ``run`` child's arguments: the scale settings, the user's overrides, then the
    counts and the run folder (which always win)."""
    # federation.clients_per_round = 1 would read as the fraction 1.0 (everyone)
    per_round = str(sampled) if sampled > 1 else repr(1 / registered)
    return [
        "run",
        f"model.name={json.dumps(model)}",
        f"method.name={json.dumps(method)}",
        *SCALE_OVERRIDES,
        *overrides,
        f"data.clients={registered}",
        f"federation.clients_per_round={per_round}",
        f"out_dir={json.dumps(str(out))}",
    ]


def measure_scale(
    model: str,
    method: str,
    plan: Sequence[tuple[int, int]],
    overrides: Sequence[str] = (),
    threads: int = 1,
    timeout_s: float = 3600.0,
    progress: Callable[[str], None] = lambda text: None,
) -> list[ScaleRun]:
    """Run ``plan``'s federations of ``method`` one after the other, each in its own process."""
    runs = []
    for registered, sampled in plan:
        progress(f"scale: {method} on {model}, {registered} registered, {sampled} sampled")
        with tempfile.TemporaryDirectory(prefix="fedlora-scale-") as tmp:
            out = Path(tmp) / "run"
            args = run_args(model, method, registered, sampled, overrides, out)
            info, wall = child_report(args, timeout_s, threads)
            lines = (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
        figures = round_figures([json.loads(x) for x in lines])
        runs.append(
            ScaleRun(
                method=method,
                registered=registered,
                sampled=sampled,
                peak_rss_bytes=int(info["vmhwm_bytes"]),
                wall_s=wall,
                **figures,
            )
        )
    return runs


def scale_checks(runs: Sequence[ScaleRun]) -> list[dict[str, Any]]:
    """The targets per method (``targets.toml``), from the measured runs only."""
    limits = beside(__file__, "targets.toml")["scale"]
    rss_growth, round_ratio = limits["rss_growth_max"], limits["round_time_ratio_max"]
    per_sampled = limits["per_sampled_ratio_max"]
    checks: list[dict[str, Any]] = []
    for method in dict.fromkeys(r.method for r in runs):
        mine = [r for r in runs if r.method == method]
        first_sampled = mine[0].sampled
        by_registered = sorted(
            (r for r in mine if r.sampled == first_sampled), key=lambda r: r.registered
        )
        lo, hi = by_registered[0], by_registered[-1]
        if hi.registered > lo.registered:
            growth = hi.peak_rss_bytes / lo.peak_rss_bytes - 1
            checks.append(
                {
                    "check": f"{method}: peak RSS growth from {lo.registered} to "
                    f"{hi.registered} registered <= {rss_growth:.0%}",
                    "value": growth,
                    "passed": growth <= rss_growth,
                }
            )
            ratio = hi.round_s_per_ktok / lo.round_s_per_ktok
            checks.append(
                {
                    "check": f"{method}: round time per 1k trained tokens at {hi.registered} "
                    f"/ at {lo.registered} registered <= {round_ratio:g}",
                    "value": ratio,
                    "passed": ratio <= round_ratio,
                }
            )
        by_sampled = sorted(
            (r for r in mine if r.registered == hi.registered), key=lambda r: r.sampled
        )
        few, many = by_sampled[0], by_sampled[-1]
        if many.sampled > few.sampled:
            # at most linear: the time per sampled client may not rise much with more sampled
            ratio = (many.server_s / many.sampled) / (few.server_s / few.sampled)
            checks.append(
                {
                    "check": f"{method}: server s per sampled client at {many.sampled} / at "
                    f"{few.sampled} sampled <= {per_sampled:g} (at most linear)",
                    "value": ratio,
                    "passed": ratio <= per_sampled,
                }
            )
    return checks
