"""``python -m benchmarks.quality``: every method under one training budget, scored and costed.

Each run is a real federation (:func:`fedlora.runtime.simulation.run`) with 4 clients, one
domain each, on the same model, data, seed and budget; only the method (and, for the extra
settings, FLoRIST's threshold or the clients' ranks) differs. From each run's
``metrics.jsonl`` the benchmark reads the held-out scores after the last round, the bytes on
the wire per round per client and the server's aggregation time, then averages over seeds
(mean and sample standard deviation) and writes:

* ``results.md`` and ``results.json`` in ``--out`` (the table, the base model's round-0
  scores, the budget, the command, versions and machine);
* PNG plots (:mod:`benchmarks.common.plots`): score against round and against cumulative MB on
  the wire, one pair per group of runs.

Scores: "in-domain loss" is the mean held-out completion loss over the client domains,
"in-domain acc" the mean likelihood-scored multiple-choice accuracy over the domains that
have a choice task, and "OOD loss" the completion loss on the out-of-domain set no client
trains on (reported separately, as FedSRD does). Lower loss and higher accuracy are better.

Finished runs are reused (a run folder whose metrics reach the last round is read, not
re-run), so an interrupted benchmark continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.quality.one_run import base_scores, made_by, run_one, summary_of, worker
from benchmarks.quality.plan import (
    Budget,
    RunSpec,
    load_plan,
    plan,
    tuning_plan,
    write_quick_files,
)
from benchmarks.quality.provenance import (
    MixedCode,
    check_one_code,
    read_record,
    record_path,
)
from benchmarks.quality.report import (
    results_doc,
    write_report,
)
from benchmarks.quality.tuning import choose, relative_loss

log = logging.getLogger(__name__)

MB = 2**20
RESULTS = Path(__file__).with_name("results")

# --------------------------------------------------------------------------- running


@dataclass
class _Progress:
    """What one phase of a benchmark (tuning, or the test runs) has produced so far;
    ``changed`` is called after every run (the test phase rewrites its table there)."""

    specs: Sequence[RunSpec]
    budget: Budget
    root: Path
    results: Path
    deadline: float | None
    report_only: bool
    lr_of: Callable[[RunSpec], float | None]
    say: Callable[[str], None] = lambda text: None
    """Where a line per started and finished run goes (stderr from the command)."""
    changed: Callable[[_Progress], None] = lambda progress: None
    done: dict[int, dict[str, Any]] = field(default_factory=dict)
    missing: dict[int, dict[str, Any]] = field(default_factory=dict)

    def outcome(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        done = [self.done[k] for k in sorted(self.done)]
        return done, [self.missing[k] for k in sorted(self.missing)]

    def _skip(self, i: int, why: str) -> None:
        spec = self.specs[i]
        self.missing[i] = {"label": spec.label, "seed": spec.seed, "why": why}

    def finish(self, i: int, outcome: dict[str, Any] | BaseException) -> None:
        spec = self.specs[i]
        if isinstance(outcome, BaseException):
            log.warning("%s seed %d failed: %s", spec.label, spec.seed, outcome)
            self._skip(i, f"{type(outcome).__name__}: {outcome}")
            self.say(f"failed {spec.label} seed {spec.seed}: {outcome}")
        else:
            self.done[i] = outcome
            took = None if outcome.get("reused") else outcome.get("wall_s")
            self.say(
                f"finished {spec.label} seed {spec.seed} ({len(self.done)}/{len(self.specs)}"
                + (f", {took / 60:.1f} min)" if took is not None else ", reused)")
            )
        self.changed(self)

    def late(self, i: int) -> bool:
        """Whether run ``i`` is not to start: report-only (its kept record is read
        instead), its learning rate not tuned yet, or past the deadline."""
        spec = self.specs[i]
        if self.report_only:
            kept = read_record(record_path(self.results, spec.slug(), spec.seed))
            if kept is not None:
                self.done[i] = summary_of(kept, self.budget.clients)
            else:
                self._skip(i, "not run (report only)")
            return True
        if spec.lr is None and self.lr_of(spec) is None:
            self._skip(i, f"not started: the tuning of {spec.tuned_as} did not finish")
            return True
        if self.deadline is not None and time.time() > self.deadline:
            self._skip(i, "not started: time limit")
            return True
        return False

    def announce(self, i: int) -> None:
        spec = self.specs[i]
        self.say(f"[{i + 1}/{len(self.specs)}] {spec.label} seed {spec.seed}")


def _run_serial(progress: _Progress, files: Sequence[str]) -> None:
    for i, spec in enumerate(progress.specs):
        if progress.late(i):
            continue
        progress.announce(i)
        try:
            lr = progress.lr_of(spec)
            outcome = run_one(
                spec, progress.budget, progress.root, files, lr=lr, results=progress.results
            )
            progress.finish(i, outcome)
        except Exception as exc:  # one broken run must not lose the others' results
            progress.finish(i, exc)


def _run_parallel(progress: _Progress, files: Sequence[str], jobs: int) -> None:
    threads = max(1, (os.cpu_count() or 1) // jobs)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        pending: dict[Future[dict[str, Any]], int] = {}
        queue = list(range(len(progress.specs)))
        while queue or pending:
            while queue and len(pending) < jobs:
                i = queue.pop(0)
                if not progress.late(i):
                    progress.announce(i)
                    spec = progress.specs[i]
                    args = (spec, progress.budget, progress.root, files, threads)
                    more = (progress.lr_of(spec), progress.results)
                    pending[pool.submit(worker, *args, *more)] = i
            if not pending:
                break
            ready, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in ready:
                i = pending.pop(fut)
                error = fut.exception()
                progress.finish(i, error if error is not None else fut.result())


def _execute(progress: _Progress, files: Sequence[str], jobs: int) -> None:
    if jobs <= 1:
        _run_serial(progress, files)
    else:
        _run_parallel(progress, files, jobs)


def tuned_rates(
    tune: Sequence[Mapping[str, Any]], specs: Sequence[RunSpec], default: float
) -> dict[str, dict[str, Any]]:
    """The chosen rate per tuned row from the finished tuning runs; a row with a grid run
    neither finished nor failed is left out (its test runs wait for it)."""
    by_key: dict[str, dict[float, float]] = {}
    for r in tune:
        score = relative_loss(r["domain_loss"], r["base_domain_loss"])
        by_key.setdefault(r["method_key"], {})[float(r["lr"])] = score
    planned: dict[str, int] = {}
    for s in specs:
        planned[s.tuned_as] = planned.get(s.tuned_as, 0) + 1
    complete = {k: v for k, v in by_key.items() if len(v) == planned.get(k, 0)}
    return choose(complete, default)


@dataclass(frozen=True)
class Outcome:
    done: list[dict[str, Any]]
    missing: list[dict[str, Any]]
    tuned: dict[str, Any]
    versions: list[str]


def run_all(
    tune_specs: Sequence[RunSpec],
    specs: Sequence[RunSpec],
    budget: Budget,
    root: Path,
    results: Path,
    command: str,
    deadline: float | None = None,
    jobs: int = 1,
    report_only: bool = False,
    say: Callable[[str], None] = lambda text: None,
    allow_mixed: bool = False,
) -> Outcome:
    """Tune, then run every test spec in plan order, ``jobs`` at a time; a failed run is
    recorded, not fatal. Each finished run is kept as a provenance record in ``results``.

    No new run starts once ``deadline`` (``time.time()``) has passed, nor a row whose
    learning rate is not tuned yet; those are reported as not run. With ``report_only``
    nothing runs: the kept records are read. The table (not the plots) is rewritten after
    every test run, so a killed benchmark still leaves its results so far.
    """
    files = write_quick_files(root / "data", budget.clients) if budget.quick_files else []
    if not report_only:
        for seed in dict.fromkeys(s.seed for s in tune_specs):
            say(f"base model scores for seed {seed} (validation)")
            base_scores(budget, seed, root, files, "validation")
        for seed in dict.fromkeys(s.seed for s in specs):
            say(f"base model scores for seed {seed}")
            base_scores(budget, seed, root, files)
    common = (budget, root, results, deadline, report_only)
    tune = _Progress(tune_specs, *common, lambda spec: None, say)
    _execute(tune, files, jobs)
    tune_done = [{**r, "method_key": tune_specs[i].tuned_as} for i, r in sorted(tune.done.items())]
    tuned = tuned_rates(tune_done, tune_specs, budget.lr)
    results.mkdir(parents=True, exist_ok=True)
    (results / "tuned.json").write_text(json.dumps(tuned, indent=1, sort_keys=True) + "\n")

    def lr_of(spec: RunSpec) -> float | None:
        return tuned[spec.tuned_as]["lr"] if spec.tuned_as in tuned else None

    def changed(progress: _Progress) -> None:
        done, missing = progress.outcome()
        if done:
            versions = check_one_code([*tune.done.values(), *done], allow_mixed=True)
            doc = results_doc(
                specs,
                budget,
                done,
                missing,
                command,
                made_by(root),
                len(done) < len(specs),
                tuned,
                versions,
            )
            write_report(doc, results, plots=False)

    test = _Progress(specs, *common, lr_of, say, changed)
    _execute(test, files, jobs)
    done, missing = test.outcome()
    versions = check_one_code([*tune.done.values(), *done], allow_mixed)
    return Outcome(done, [*tune.outcome()[1], *missing], tuned, versions)


def render(results: Path, publish_to: Path | None) -> int:
    """Regenerate the report beside ``results`` from it alone; optionally publish it."""
    doc = json.loads(results.read_text(encoding="utf-8"))
    write_report(doc, results.parent)
    if publish_to is not None:
        publish(results.parent, publish_to)
    print(f"results: {results.parent / 'results.md'}", flush=True)
    return 0


def publish(root: Path, target: Path) -> Path:
    """Copy ``root``'s ``results.md`` to ``target/results.md`` and its plots to
    ``target/img/quality_<name>.png``, with the image links rewritten; returns the page."""
    images = target / "img"
    images.mkdir(parents=True, exist_ok=True)
    text = (root / "results.md").read_text(encoding="utf-8")
    for png in sorted(root.glob("*.png")):
        shutil.copyfile(png, images / f"quality_{png.name}")
        text = text.replace(f"]({png.name})", f"](img/quality_{png.name})")
    page = target / "results.md"
    page.write_text(text, encoding="utf-8")
    return page


DESCRIPTION = (
    "Tune each method's learning rate on a validation split, then run every row of the "
    "plan under one budget on 4 clients (one domain each), seed by seed, keep each run's "
    "record, and write the results (Markdown + JSON), the claims and plots."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``python -m benchmarks.quality`` (own parser or ``fedlora``'s)."""
    from fedlora.methods.registry import names

    p.add_argument(
        "--methods",
        nargs="+",
        default=None,
        choices=names(),
        metavar="METHOD",
        help="methods of the main group (default: plan.toml's; --quick: all registered)",
    )
    p.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=None,
        help="seeds (default: plan.toml's; --quick: 0); a row of fewer seeds runs the first",
    )
    p.add_argument(
        "--rounds", type=int, default=None, help="federation rounds (default: the budget's)"
    )
    p.add_argument("--out", default="runs/bench-quality", help="folder of the runs themselves")
    p.add_argument(
        "--results",
        default=None,
        help="folder of the kept run records and the report (default: "
        "benchmarks/quality/results/default; --quick: OUT/results)",
    )
    p.add_argument(
        "--allow-mixed-code",
        action="store_true",
        help="report runs made by different versions of src/fedlora together",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny in-code model on generated files, 2 rounds of 1 step (tests)",
    )
    p.add_argument(
        "--no-extras",
        action="store_true",
        help="only the main group and the centralised reference (no ablations, FLoRIST "
        "sweep, heterogeneous ranks, DP or stability rows)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs at once, each in its own process with cores/jobs torch threads",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: tabulate and plot the runs kept in --results",
    )
    p.add_argument(
        "--render",
        metavar="RESULTS_JSON",
        default=None,
        help="run nothing, read no run: regenerate results.md and the plots beside a "
        "results.json (with --publish, publish them)",
    )
    p.add_argument(
        "--publish",
        default=None,
        metavar="DIR",
        help="also write the results as DIR/results.md with its plots in DIR/img (e.g. docs)",
    )
    p.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="start no new run after this many minutes; report the rest as not run",
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=DESCRIPTION)
    add_arguments(p)
    return p


def main(argv: list[str]) -> int:
    """Entry point of ``python -m benchmarks.quality``; returns the exit status."""
    return run(build_parser().parse_args(argv), argv)


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """``python -m benchmarks.quality`` on parsed options; ``argv`` (its own arguments) is recorded
    as the command in the results."""
    from fedlora.methods.registry import names

    if args.render:
        return render(Path(args.render), Path(args.publish) if args.publish else None)
    the_plan = load_plan()
    budget = the_plan.budgets["quick" if args.quick else "default"]
    if args.rounds is not None:
        if args.rounds < 1:
            print("python -m benchmarks.quality: --rounds must be at least 1", file=sys.stderr)
            return 2
        budget = Budget(
            **{**asdict(budget), "rounds": args.rounds, "hetero_ranks": tuple(budget.hetero_ranks)}
        )
    methods = args.methods or (names() if args.quick else list(the_plan.methods))
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else list(the_plan.seeds))
    specs = plan(the_plan, methods, seeds, budget, extras=not args.no_extras)
    tune_specs = tuning_plan(the_plan, methods, budget)
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    default_results = root / "results" if args.quick else RESULTS / "default"
    results = Path(args.results) if args.results else default_results
    deadline = time.time() + 60 * args.max_minutes if args.max_minutes else None
    began = time.time()
    command = "python -m benchmarks.quality " + " ".join(shlex.quote(a) for a in argv)
    if not args.report_only:  # the command that makes the runs, for later reports
        (root / "command.txt").write_text(command + "\n", encoding="utf-8")
    try:
        out = run_all(
            tune_specs,
            specs,
            budget,
            root,
            results,
            command,
            deadline,
            jobs=args.jobs,
            report_only=args.report_only,
            say=lambda text: print(f"· {text}", file=sys.stderr, flush=True),
            allow_mixed=args.allow_mixed_code,
        )
    except MixedCode as exc:
        print(f"python -m benchmarks.quality: {exc}", file=sys.stderr)
        return 2
    if out.done:
        doc = results_doc(
            specs,
            budget,
            out.done,
            out.missing,
            command,
            made_by(root),
            bool(out.missing),
            out.tuned,
            out.versions,
        )
        write_report(doc, results)
    if args.publish:
        publish(results, Path(args.publish))
    log.info("benchmark took %.1f min", (time.time() - began) / 60)
    print(
        f"results: {results / 'results.md'} ({len(out.done)} of {len(specs)} runs finished, "
        f"{len(tune_specs)} tuning runs)",
        flush=True,
    )
    return 0 if out.done and not out.missing else 1
