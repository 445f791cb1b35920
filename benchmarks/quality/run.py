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
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.quality.plan import (
    Budget,
    RunSpec,
    load_plan,
    plan,
    write_quick_files,
)
from benchmarks.quality.report import (
    read_metrics,
    results_doc,
    summarise_run,
    write_report,
)

log = logging.getLogger(__name__)

MB = 2**20

# --------------------------------------------------------------------------- running


def _complete(run_dir: Path, rounds: int) -> bool:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return False
    try:
        recs = read_metrics(path)
    except (json.JSONDecodeError, KeyError):
        return False
    return bool(recs) and int(recs[-1]["round"]) >= rounds and "eval" in recs[-1]


def _run_dir(root: Path, spec: RunSpec) -> Path:
    return root / "runs" / spec.slug() / f"seed{spec.seed}"


def _base_path(root: Path, seed: int) -> Path:
    return root / "base" / f"seed{seed}.json"


def base_scores(budget: Budget, seed: int, root: Path, files: Sequence[str]) -> dict[str, Any]:
    """The base model's scores on every evaluation set of ``seed``, computed once and kept
    in ``base/seed<seed>.json`` with what they depend on (model, data, sequence length);
    a stored file that no longer matches the budget is recomputed."""
    from fedlora import config
    from fedlora.runtime.assemble import assemble
    from fedlora.runtime.driver import evaluation
    from fedlora.runtime.run_folder import RunState
    from fedlora.runtime.simulation import InProcess

    path = _base_path(root, seed)
    spec = RunSpec("base", "base", "fedavg", seed)
    cfg = config.load(None, spec.overrides(budget, root / "base" / "unused", files))
    plain = config.to_dict(cfg)
    key = {"model": plain["model"], "data": plain["data"], "seq_len": cfg.train.seq_len}
    if path.is_file():
        stored = json.loads(path.read_text(encoding="utf-8"))
        if stored.get("key") == key:
            return dict(stored)
    log.info("scoring the base model for seed %d", seed)
    fed = assemble(cfg, lambda kind, info: None)
    rs = RunState(0, fed.method.init_server(fed.setup), {})
    evaluated = evaluation(fed, InProcess(fed), rs, {})
    doc = {"key": key, "eval": evaluated.scores, "eval_seconds": evaluated.seconds}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return doc


def made_by(root: Path) -> str | None:
    """The command that made the runs in ``root`` (a report-only command records none)."""
    path = root / "command.txt"
    return path.read_text(encoding="utf-8").strip() if path.is_file() else None


def _base_eval(root: Path, seed: int) -> dict[str, Any] | None:
    path = _base_path(root, seed)
    return json.loads(path.read_text(encoding="utf-8"))["eval"] if path.is_file() else None


def run_one(
    spec: RunSpec, budget: Budget, root: Path, files: Sequence[str], verify: bool = True
) -> dict[str, Any]:
    """Run (or reuse, or resume) one federation and summarise it (its base scores from
    :func:`base_scores`, computed before any run of the seed). With ``verify`` a folder
    holding a run of another budget or setting is refused (``--report-only`` reads what is
    there, e.g. a copied benchmark whose data paths moved)."""
    from fedlora import config
    from fedlora.runtime.run_folder import check_run_dir
    from fedlora.runtime.simulation import run

    run_dir = _run_dir(root, spec)
    began = time.perf_counter()
    load_before = os.getloadavg()[0]
    cfg = config.load(None, spec.overrides(budget, run_dir, files))
    resume = (run_dir / "config.json").is_file()
    if resume and verify:  # a folder of another budget or setting is refused, never reused
        check_run_dir(cfg, resume=True)
    reused = _complete(run_dir, budget.rounds)
    if not reused:
        log.info("running %s seed %d -> %s", spec.label, spec.seed, run_dir)
        run(cfg, resume=resume)
    summary = summarise_run(read_metrics(run_dir / "metrics.jsonl"), _base_eval(root, spec.seed))
    # When and under what load the run was made, kept beside it for later reports
    made = run_dir / "bench_run.json"
    if reused:
        kept = json.loads(made.read_text(encoding="utf-8")) if made.is_file() else {}
    else:
        kept = {
            "wall_s": time.perf_counter() - began,
            "load_1min": [load_before, os.getloadavg()[0]],
            "finished_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        }
        made.write_text(json.dumps(kept) + "\n", encoding="utf-8")
    return {
        "label": spec.label,
        "group": spec.group,
        "method": spec.method,
        "seed": spec.seed,
        "options": dict(spec.options),
        "ranks": list(spec.ranks),
        "run_dir": str(run_dir),
        "reused": reused,
        "finished": True,
        "wall_s": kept.get("wall_s"),
        "load_1min": kept.get("load_1min"),
        "finished_at": kept.get("finished_at"),
        **summary,
    }


def _unfinished(spec: RunSpec, root: Path, rounds: int) -> dict[str, Any] | None:
    """An unfinished run's summary up to its last evaluated round, under its own label
    ("<label> [t/R rounds]") so it is never averaged with finished runs; None if it has
    no evaluated trained round."""
    path = _run_dir(root, spec) / "metrics.jsonl"
    if not path.is_file():
        return None
    recs = read_metrics(path)
    evaluated = [r for r in recs if int(r["round"]) > 0 and "eval" in r]
    if not evaluated:
        return None
    last = int(evaluated[-1]["round"])
    cut = [r for r in recs if int(r["round"]) <= last]
    summary = summarise_run(cut, _base_eval(root, spec.seed))
    return {
        "label": f"{spec.label} [{last}/{rounds} rounds]",
        "group": spec.group,
        "method": spec.method,
        "seed": spec.seed,
        "options": dict(spec.options),
        "ranks": list(spec.ranks),
        "run_dir": str(path.parent),
        "reused": True,
        "finished": False,
        "wall_s": None,
        **summary,
    }


def _worker(
    spec: RunSpec, budget: Budget, root: Path, files: Sequence[str], threads: int
) -> dict[str, Any]:
    """A run in a child process with ``threads`` torch threads (``--jobs`` > 1)."""
    import torch

    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    return run_one(spec, budget, root, files)


@dataclass
class _Progress:
    """What a benchmark run has produced so far; the table is rewritten after every run."""

    specs: Sequence[RunSpec]
    budget: Budget
    root: Path
    command: str
    deadline: float | None
    report_only: bool
    say: Callable[[str], None] = lambda text: None
    """Where a line per started and finished run goes (stderr from the command)."""
    done: dict[int, dict[str, Any]] = field(default_factory=dict)
    missing: dict[int, dict[str, Any]] = field(default_factory=dict)

    def results(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
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
        done, missing = self.results()
        partial = len(self.done) < len(self.specs)
        if done:
            doc = results_doc(
                self.specs, self.budget, done, missing, self.command, made_by(self.root), partial
            )
            write_report(doc, self.root, plots=False)

    def late(self, i: int) -> bool:
        """Whether run ``i`` is not to start: report-only and unfinished, or past the deadline."""
        rounds = self.budget.rounds
        if self.report_only and not _complete(_run_dir(self.root, self.specs[i]), rounds):
            cut = _unfinished(self.specs[i], self.root, rounds)
            if cut is not None:
                self.done[i] = cut
            shown = f"; shown as {cut['label']!r}" if cut else ""
            self._skip(i, "not finished (report only)" + shown)
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
            outcome = run_one(
                spec, progress.budget, progress.root, files, verify=not progress.report_only
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
                    pending[pool.submit(_worker, *args)] = i
            if not pending:
                break
            ready, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in ready:
                i = pending.pop(fut)
                error = fut.exception()
                progress.finish(i, error if error is not None else fut.result())


def run_all(
    specs: Sequence[RunSpec],
    budget: Budget,
    root: Path,
    command: str,
    deadline: float | None = None,
    jobs: int = 1,
    report_only: bool = False,
    say: Callable[[str], None] = lambda text: None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run every spec in plan order, ``jobs`` at a time; a failed run is recorded, not fatal.

    No new run starts once ``deadline`` (``time.time()``) has passed; those are reported as
    not run; with ``report_only`` only finished runs are read and nothing is run. The table
    (not the plots) is rewritten after every run, so a killed benchmark still leaves its
    results so far.
    """
    files = write_quick_files(root / "data", len(budget.hetero_ranks)) if budget.quick_files else []
    if not report_only:
        for seed in dict.fromkeys(s.seed for s in specs):
            say(f"base model scores for seed {seed}")
            base_scores(budget, seed, root, files)
    progress = _Progress(specs, budget, root, command, deadline, report_only, say)
    if jobs <= 1:
        _run_serial(progress, files)
    else:
        _run_parallel(progress, files, jobs)
    return progress.results()


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
    "Run every method under one budget on 4 clients (one domain each) and "
    "write a results table (Markdown + JSON) and plots of score against round and MB."
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
        help="seeds; the headline methods run all, the rest the first (default: 0 1 2; --quick: 0)",
    )
    p.add_argument(
        "--rounds", type=int, default=None, help="federation rounds (default 4; --quick: 2)"
    )
    p.add_argument("--out", default="runs/bench-quality", help="output folder")
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny in-code model on generated files, 2 rounds of 1 step (tests)",
    )
    p.add_argument(
        "--no-extras",
        action="store_true",
        help="skip the FLoRIST threshold sweep and heterogeneous-rank runs",
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
        help="run nothing: tabulate and plot the finished runs in --out",
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
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    deadline = time.time() + 60 * args.max_minutes if args.max_minutes else None
    began = time.time()
    command = "python -m benchmarks.quality " + " ".join(shlex.quote(a) for a in argv)
    if not args.report_only:  # the command that makes the runs, for later reports
        (root / "command.txt").write_text(command + "\n", encoding="utf-8")
    done, missing = run_all(
        specs,
        budget,
        root,
        command,
        deadline,
        jobs=args.jobs,
        report_only=args.report_only,
        say=lambda text: print(f"· {text}", file=sys.stderr, flush=True),
    )
    if done:
        doc = results_doc(specs, budget, done, missing, command, made_by(root), bool(missing))
        write_report(doc, root)
    if args.publish:
        publish(root, Path(args.publish))
    log.info("benchmark took %.1f min", (time.time() - began) / 60)
    finished = sum(1 for r in done if r["finished"])
    print(f"results: {root / 'results.md'} ({finished} of {len(specs)} runs finished)", flush=True)
    return 0 if done and not missing else 1
