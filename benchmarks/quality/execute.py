"""Running the plan stage by stage: each stage's tuning until the rule is satisfied, then its
test runs seed by seed; every run reused from its kept record when there is one.

A run whose kept record is the run the plan asks for (:func:`~.provenance.same_run`) is
never run again, so a fresh clone, another machine or a later sitting continues where the
committed records end. :func:`listing` says, without running anything, what is done, what
remains, in which order, and about how long it will take.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.quality.one_run import kept_run, run_one, summary_of, worker
from benchmarks.quality.order import Stage
from benchmarks.quality.plan import Budget, Plan, RunSpec, tuning_spec
from benchmarks.quality.provenance import read_record
from benchmarks.quality.tuning import choose, next_rates, relative_loss

log = logging.getLogger(__name__)

FAILED: dict[str, Any] = {"domain_loss": {}, "base_domain_loss": {}}
"""A tuning run that failed: it scores NaN."""

DEFAULT_MINUTES = 5.0
"""A run's estimated minutes before any run of the budget was kept."""


@dataclass
class Runner:
    """Runs specs (one at a time or ``jobs`` at once), reusing kept records, until a
    ``deadline``; collects what finished and why the others did not."""

    budget: Budget
    root: Path
    results: Path
    files: Sequence[str]
    deadline: float | None = None
    jobs: int = 1
    report_only: bool = False
    say: Callable[[str], None] = lambda text: None
    done: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    """Finished runs' summaries, by :func:`key`."""
    missing: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    """Runs that did not finish: label, seed and why."""
    started: int = 0

    def stopped(self) -> bool:
        return self.deadline is not None and time.time() > self.deadline

    def _kept(self, spec: RunSpec, lr: float | None) -> dict[str, Any] | None:
        record = kept_run(spec, self.budget, self.root, self.results, self.files, lr)
        return None if record is None else summary_of(record, self.budget.clients)

    def run(self, specs: Sequence[RunSpec], lr_of: Callable[[RunSpec], float | None]) -> None:
        """Run every spec not done yet (a kept record counts as done)."""
        todo = []
        for spec in specs:
            if key(spec) in self.done:
                continue
            lr = lr_of(spec)
            if spec.lr is None and lr is None:
                self._skip(spec, f"not started: the tuning of {spec.tuned_as} did not finish")
                continue
            kept = self._kept(spec, lr)
            if kept is not None:
                self.done[key(spec)] = kept
                self.missing.pop(key(spec), None)
            elif self.report_only:
                self._skip(spec, "not run (report only)")
            elif self.stopped():
                self._skip(spec, "not started: time limit")
            else:
                todo.append((spec, lr))
        if self.jobs <= 1:
            for spec, lr in todo:
                if self.stopped():
                    self._skip(spec, "not started: time limit")
                    continue
                self._announce(spec)
                try:
                    out = run_one(
                        spec, self.budget, self.root, self.files, lr=lr, results=self.results
                    )
                except Exception as exc:  # one broken run must not lose the others
                    self._finish(spec, exc)
                else:
                    self._finish(spec, out)
        else:
            self._parallel(todo)

    def _parallel(self, todo: Sequence[tuple[RunSpec, float | None]]) -> None:
        threads = max(1, (os.cpu_count() or 1) // self.jobs)
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=self.jobs, mp_context=ctx) as pool:
            pending: dict[Future[dict[str, Any]], RunSpec] = {}
            queue = list(todo)
            while queue or pending:
                while queue and len(pending) < self.jobs and not self.stopped():
                    spec, lr = queue.pop(0)
                    self._announce(spec)
                    args = (spec, self.budget, self.root, self.files, threads, lr, self.results)
                    pending[pool.submit(worker, *args)] = spec
                if not pending:
                    for spec, _ in queue:
                        self._skip(spec, "not started: time limit")
                    break
                ready, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in ready:
                    spec = pending.pop(fut)
                    error = fut.exception()
                    self._finish(spec, error if error is not None else fut.result())

    def _skip(self, spec: RunSpec, why: str) -> None:
        self.missing[key(spec)] = {"label": spec.label, "seed": spec.seed, "why": why}

    def _announce(self, spec: RunSpec) -> None:
        self.started += 1
        self.say(f"[{self.started}] {spec.label} seed {spec.seed}")

    def _finish(self, spec: RunSpec, outcome: dict[str, Any] | BaseException) -> None:
        if isinstance(outcome, BaseException):
            log.warning("%s seed %d failed: %s", spec.label, spec.seed, outcome)
            self._skip(spec, f"{type(outcome).__name__}: {outcome}")
            self.say(f"failed {spec.label} seed {spec.seed}: {outcome}")
            return
        self.done[key(spec)] = outcome
        self.missing.pop(key(spec), None)
        took = outcome.get("wall_s")
        self.say(
            f"finished {spec.label} seed {spec.seed}"
            + (f" ({took / 60:.1f} min)" if took and not outcome.get("reused") else " (kept)")
        )


@dataclass
class Tuning:
    """Every tuning run's score so far, by tuned row and rate."""

    plan: Plan
    budget: Budget
    scores: dict[str, dict[float, float]] = field(default_factory=dict)

    def add(self, row: str, lr: float, summary: Mapping[str, Any]) -> None:
        score = relative_loss(summary["domain_loss"], summary["base_domain_loss"])
        self.scores.setdefault(row, {})[lr] = score

    def wanted(self, row: str) -> list[float]:
        return next_rates(self.scores.get(row, {}), self.budget.lr_grid)

    def chosen(self) -> dict[str, dict[str, Any]]:
        """Per settled row, its rate and scores (``settled`` false: still being tuned)."""
        return choose(self.scores, self.budget.lr, self.budget.lr_grid)

    def lr_of(self, spec: RunSpec) -> float | None:
        got = self.chosen().get(spec.tuned_as)
        return got["lr"] if got is not None and got["settled"] and got["tuned"] else None


def settle(runner: Runner, tuning: Tuning, rows: Sequence[str]) -> None:
    """Tune every one of ``rows`` until the rule asks for nothing more (or runs stop)."""
    while True:
        batch = [
            tuning_spec(tuning.plan, row, lr, runner.budget)
            for row in rows
            for lr in tuning.wanted(row)
        ]
        if not batch:
            return
        runner.run(batch, lambda spec: None)
        progressed = False
        for spec in batch:
            rate = float(spec.lr or 0.0)
            if key(spec) in runner.done:
                tuning.add(spec.tuned_as, rate, runner.done[key(spec)])
                progressed = True
            elif not runner.missing.get(key(spec), {}).get("why", "not ").startswith("not "):
                tuning.add(spec.tuned_as, rate, FAILED)  # a failed run: never chosen
                progressed = True
        if not progressed:
            return


def run_stages(
    runner: Runner,
    tuning: Tuning,
    chosen: Sequence[Stage],
    changed: Callable[[], None] = lambda: None,
) -> None:
    """Each stage's tuning (of every row its runs train with), then its runs."""
    for st in chosen:
        runner.say(f"stage {st.number or '–'}: {st.title}")
        settle(runner, tuning, list(dict.fromkeys(s.tuned_as for s in st.runs if s.tuned_as)))
        runner.run(st.runs, tuning.lr_of)
        changed()


def key(spec: RunSpec) -> tuple[str, int]:
    """A run's identity within a plan: its row's slug (a tuning row's holds its rate) and seed."""
    return spec.slug(), spec.seed


def minutes_per_run(results: Path) -> float:
    """The mean wall minutes of the runs kept in ``results`` (a guess when there are none)."""
    walls = []
    for path in (results / "runs").glob("*/seed*.json"):
        rec = read_record(path)
        wall = (rec or {}).get("made", {}).get("wall_s")
        if isinstance(wall, int | float) and math.isfinite(wall):
            walls.append(float(wall) / 60)
    return statistics.fmean(walls) if walls else DEFAULT_MINUTES


def listing(
    chosen: Sequence[Stage], plan: Plan, budget: Budget, root: Path, results: Path,
    files: Sequence[str],
) -> str:  # fmt: skip
    """What is done and what remains, stage by stage, with the estimated minutes."""
    per_run = minutes_per_run(results)
    tuning = Tuning(plan, budget)
    lines = [f"estimated {per_run:.1f} min a run (the mean of the kept runs)"]
    total = 0.0
    tuned_seen: set[str] = set()
    for st in chosen:
        done = remaining = 0
        rows = [k for k in dict.fromkeys(s.tuned_as for s in st.runs if s.tuned_as)]
        for row in rows:
            if row in tuned_seen:
                continue
            tuned_seen.add(row)
            wanted = tuning.wanted(row)
            while wanted:  # follow the rule as far as the kept records go
                progressed = False
                for lr in wanted:
                    spec = tuning_spec(plan, row, lr, budget)
                    record = kept_run(spec, budget, root, results, files, lr)
                    if record is not None:
                        tuning.add(row, lr, summary_of(record, budget.clients))
                        done += 1
                        progressed = True
                    else:
                        remaining += 1
                if not progressed:
                    break
                wanted = tuning.wanted(row)
        for spec in st.runs:
            rate = tuning.lr_of(spec)
            kept = (
                rate is not None and kept_run(spec, budget, root, results, files, rate) is not None
            )
            done, remaining = done + kept, remaining + (not kept)
        minutes = remaining * per_run
        total += minutes
        lines.append(
            f"{st.number or '–':>2}. {st.title}: {done} done, {remaining} to run "
            f"(~{minutes:.0f} min; {total:.0f} min so far) — rows: {', '.join(st.rows)}"
        )
    lines.append(
        "tuning counts the grid of each row not yet tuned; the rule may add steps beyond it"
    )
    return "\n".join(lines)
