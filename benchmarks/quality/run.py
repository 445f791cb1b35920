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

The runs go claims first (:mod:`benchmarks.quality.order`): each claim's rows are tuned
and run for every seed before the next claim's. A run whose record is kept in the results
folder is a finished run, reused as it is (:mod:`benchmarks.quality.execute`), so an
interrupted benchmark, a fresh clone or another machine continues where the committed
records end; ``--plan`` lists what is done and what remains.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.quality.claims import load_claims
from benchmarks.quality.execute import Runner, Tuning, key, listing, run_stages
from benchmarks.quality.fit import MAX_CUT, markdown, truncation, worst
from benchmarks.quality.one_run import base_scores
from benchmarks.quality.one_run import made_by as made_by_command
from benchmarks.quality.order import Stage, select, stages
from benchmarks.quality.plan import (
    Budget,
    Plan,
    RunSpec,
    dp_pilot,
    load_plan,
    plan,
    write_quick_files,
)
from benchmarks.quality.report import Outcome, made_by, results_doc, write_report

log = logging.getLogger(__name__)

MB = 2**20
RESULTS = Path(__file__).with_name("results")

# --------------------------------------------------------------------------- running


@dataclass(frozen=True)
class Sitting:
    """How one command runs the plan: the time after which no new run starts
    (``time.time()``; None: no limit), runs at once, whether it only reports, and where its
    progress lines go."""

    deadline: float | None = None
    jobs: int = 1
    report_only: bool = False
    say: Callable[[str], None] = lambda text: None


def all_stages(the_plan: Plan, specs: Sequence[RunSpec], methods: Sequence[str]) -> list[Stage]:
    """The plan's stages, claims first, and the DP rows' pilot last while it is pending."""
    out = stages(specs, load_claims()["claim"])
    pilot = dp_pilot(the_plan, methods)
    if pilot:
        out.append(
            Stage(
                "DP rows' pilot (their test runs wait for its decision)",
                0,
                (),
                tuple(pilot),
                tuple(s.label for s in pilot),
            )
        )
    return out


def tested(chosen: Sequence[Stage]) -> list[RunSpec]:
    """The test runs of the ``chosen`` stages that are rows of the table: what a report of
    them counts as planned (the DP pilot's records are kept for its decision, not tabled)."""
    return [s for st in chosen for s in st.runs if s.group != "dp-pilot"]


def run_all(
    the_plan: Plan,
    chosen: Sequence[Stage],
    budget: Budget,
    root: Path,
    results: Path,
    command: str,
    sitting: Sitting = Sitting(),
) -> Outcome:
    """Run the ``chosen`` stages of the plan, ``jobs`` runs at a time: each stage's tuning,
    then its runs seed by seed, every run reused from its kept record when there is one; a
    failed run is recorded, not fatal. No new run starts once ``sitting.deadline`` has
    passed; with ``sitting.report_only`` nothing runs. The table (not the plots) is rewritten
    after every stage, so a killed benchmark still leaves its results so far."""
    say = sitting.say
    files = write_quick_files(root / "data", budget.clients) if budget.quick_files else []
    if not sitting.report_only:
        seeds = dict.fromkeys(s.seed for st in chosen for s in st.runs)
        if any(st.runs for st in chosen):
            say(f"base model scores for seed {the_plan.tuning_seed} (validation)")
            base_scores(budget, the_plan.tuning_seed, root, files, "validation", results)
        for seed in seeds:
            if seed != the_plan.tuning_seed:
                say(f"base model scores for seed {seed}")
                base_scores(budget, seed, root, files, results=results)
    runner = Runner(
        budget, root, results, files, sitting.deadline, sitting.jobs, sitting.report_only, say
    )
    tuning = Tuning(the_plan, budget)
    results.mkdir(parents=True, exist_ok=True)
    planned = tested(chosen)
    keys = {key(s) for s in planned}

    def outcome() -> Outcome:
        done = [v for k, v in runner.done.items() if k in keys]
        missing = [v for k, v in runner.missing.items()]
        versions = sorted({made_by(r) for r in runner.done.values()})
        return Outcome(done, missing, tuning.chosen(), versions)

    def changed() -> None:
        got = outcome()
        (results / "tuned.json").write_text(json.dumps(got.tuned, indent=1, sort_keys=True) + "\n")
        if got.done:
            doc = results_doc(planned, budget, got, command, made_by_command(root), True)
            write_report(doc, results, plots=False)

    run_stages(runner, tuning, chosen, changed)
    return outcome()


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
    _selection_arguments(p)
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


def _selection_arguments(p: argparse.ArgumentParser) -> None:
    """What to run of the plan, or what to say about it without running."""
    p.add_argument(
        "--plan",
        action="store_true",
        help="run nothing: list the stages (claims first) with what is done, what remains "
        "and the estimated minutes",
    )
    p.add_argument(
        "--claims",
        nargs="+",
        default=(),
        metavar="CLAIM",
        help="only the stages of these claims (their number in claims.toml, or words of their "
        "text)",
    )
    p.add_argument("--rows", nargs="+", default=(), metavar="ROW", help="only these rows (labels)")
    p.add_argument(
        "--fit",
        action="store_true",
        help="run nothing: print how many of each domain's examples the budget's seq_len cuts",
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
        budget = dataclasses.replace(budget, rounds=args.rounds)
    if args.fit:
        table = truncation(budget)
        print(markdown(table, budget.seq_len))
        print(f"worst: {100 * worst(table):.1f}% (at most {100 * MAX_CUT:.0f}% fits)")
        return 0 if worst(table) <= MAX_CUT else 1
    methods = args.methods or (names() if args.quick else list(the_plan.methods))
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else list(the_plan.seeds))
    specs = plan(the_plan, methods, seeds, budget, extras=not args.no_extras)
    chosen = select(all_stages(the_plan, specs, methods), args.claims, args.rows)
    root = Path(args.out)
    default_results = root / "results" if args.quick else RESULTS / "default"
    results = Path(args.results) if args.results else default_results
    files = write_quick_files(root / "data", budget.clients) if budget.quick_files else []
    if args.plan:
        print(listing(chosen, the_plan, budget, root, results, files))
        return 0
    root.mkdir(parents=True, exist_ok=True)
    deadline = time.time() + 60 * args.max_minutes if args.max_minutes else None
    began = time.time()
    command = "python -m benchmarks.quality " + " ".join(shlex.quote(a) for a in argv)
    if not args.report_only:  # the command that makes the runs, for later reports
        (root / "command.txt").write_text(command + "\n", encoding="utf-8")
    out = run_all(
        the_plan,
        chosen,
        budget,
        root,
        results,
        command,
        Sitting(
            deadline,
            args.jobs,
            args.report_only,
            lambda text: print(f"· {text}", file=sys.stderr, flush=True),
        ),
    )
    planned = tested(chosen)
    if out.done:
        fit = None if budget.quick_files else truncation(budget)
        partial = bool(out.missing) or len(out.done) < len(planned)
        doc = results_doc(planned, budget, out, command, made_by_command(root), partial, fit)
        write_report(doc, results)
    if args.publish:
        publish(results, Path(args.publish))
    log.info("benchmark took %.1f min", (time.time() - began) / 60)
    print(
        f"results: {results / 'results.md'} ({len(out.done)} of {len(planned)} test runs finished)",
        flush=True,
    )
    return 0 if out.done and not out.missing else 1
