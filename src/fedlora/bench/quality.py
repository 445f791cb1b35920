"""``fedlora bench quality``: every method under one training budget, scored and costed.

Each run is a real federation (:func:`fedlora.runtime.simulation.run`) with 4 clients, one
domain each, on the same model, data, seed and budget; only the method (and, for the extra
settings, FLoRIST's threshold or the clients' ranks) differs. From each run's
``metrics.jsonl`` the benchmark reads the held-out scores after the last round, the bytes on
the wire per round per client and the server's aggregation time, then averages over seeds
(mean and sample standard deviation) and writes:

* ``results.md`` and ``results.json`` in ``--out`` (the table, the base model's round-0
  scores, the budget, the command, versions and machine);
* PNG plots (:mod:`fedlora.bench.plots`): score against round and against cumulative MB on
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
import datetime as dt
import json
import logging
import math
import multiprocessing
import os
import platform
import re
import shlex
import statistics
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fedlora.runtime.client_data import OOD_NAME

log = logging.getLogger(__name__)

MB = 2**20

HETERO_RANKS: tuple[int, ...] = (16, 8, 8, 4)
HETERO_METHODS: tuple[str, ...] = ("fedavg", "fedprox", "florist", "flora", "flexlora")
"""Methods that aggregate clients of different ranks (the others refuse mixed ranks)."""

FLORIST_TAUS: tuple[float, ...] = (0.80, 0.90, 0.99)
FLORIST_TAU_HOMO = 0.90
FLORIST_TAU_HETERO = 0.85

PAPER_OPTIONS: Mapping[str, Mapping[str, Any]] = {
    # The papers' defaults, written out so the results state exactly what ran.
    "fedsrd": {"base": 0.85, "coeff": 0.1, "upper": 0.11, "p_down": 0.8},
    "fedsrd-e": {"base": 0.85, "coeff": 0.1, "upper": 0.11, "p_down": 0.8},
    "fed_dare": {"p_up": 0.9},
    "fedprox": {"mu": 0.01},
    "florist": {"tau": FLORIST_TAU_HOMO},
}


@dataclass(frozen=True)
class Budget:
    """The training and evaluation budget every run shares.

    ``lr`` is fixed a priori (never tuned on the evaluation sets); ``alpha = 2 * rank`` as
    in FedSRD; ``max_train`` caps each client's examples (a fixed pseudo-random subset, far
    more than ``rounds * local_steps * batch_size`` so it never repeats within the budget).

    Sizing of the default (2 quiet cores, smollm2-135m): a training step of 4 x 64 tokens
    takes about 1.6 s, so 4 rounds x 4 clients x 3 steps = 48 steps is about 77 s; one
    evaluation scores 17 sequences per ``max_eval`` item (5 loss sets + 6 + 2 + 4 choices)
    at about 0.13 s each, so 3 evaluations (rounds 0, 2, 4) at ``max_eval=10`` are about
    66 s; with loading, about 2.5 min per run and 34 runs (2 seeds) in about 87 min.
    """

    model: str = "smollm2-135m"
    rounds: int = 4
    local_steps: int = 3
    batch_size: int = 4
    seq_len: int = 64
    lr: float = 5e-4
    rank: int = 8
    hetero_ranks: tuple[int, ...] = HETERO_RANKS
    max_train: int = 256
    max_eval: int = 10
    eval_every: int = 2
    weighting: str = "uniform"
    quick_files: bool = False

    def overrides(self) -> list[str]:
        """``key=value`` overrides shared by every run of this budget."""
        out = [
            f"model.name={json.dumps(self.model)}",
            f"federation.rounds={self.rounds}",
            f"federation.weighting={json.dumps(self.weighting)}",
            f"train.local_steps={self.local_steps}",
            f"train.batch_size={self.batch_size}",
            f"train.seq_len={self.seq_len}",
            f"train.lr={self.lr!r}",
            f"lora.rank={self.rank}",
            f"lora.alpha={2.0 * self.rank!r}",
            f"data.clients={len(self.hetero_ranks)}",
            f"data.max_train_per_client={self.max_train}",
            f"data.max_eval_per_domain={self.max_eval}",
            f"eval.every={self.eval_every}",
        ]
        return out


DEFAULT_BUDGET = Budget()
QUICK_BUDGET = Budget(
    model="tiny-llama",
    rounds=2,
    local_steps=1,
    batch_size=2,
    seq_len=32,
    lr=5e-3,
    rank=4,
    hetero_ranks=(8, 4, 4, 2),
    max_train=0,
    max_eval=4,
    eval_every=1,
    quick_files=True,
)
"""``--quick``: the in-code tiny Llama on generated JSONL client files (one task each);
no choice task and no OOD set there, so it checks the plumbing, not the papers' claims."""


@dataclass(frozen=True)
class RunSpec:
    """One federation of the benchmark."""

    label: str
    group: str  # "main" | "florist-tau" | "hetero"
    method: str
    seed: int
    options: Mapping[str, Any] = field(default_factory=dict)
    ranks: tuple[int, ...] = ()

    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", self.label).strip("_")

    def overrides(self, budget: Budget, out_dir: Path, files: Sequence[str]) -> list[str]:
        """Every override of this run on top of the defaults."""
        out = [
            *budget.overrides(),
            f"method={self.method}",
            f"seed={self.seed}",
            f"out_dir={json.dumps(str(out_dir))}",
        ]
        for k, v in self.options.items():
            out.append(f"method.{self.method}.{k}={json.dumps(v)}")
        if self.ranks:
            out.append(f"lora.ranks={json.dumps(list(self.ranks))}")
        if files:
            out += ['data.partition="files"', f"data.files={json.dumps(list(files))}"]
        return out


def plan(
    methods: Sequence[str], seeds: Sequence[int], budget: Budget, extras: bool = True
) -> list[RunSpec]:
    """The runs of a benchmark, in the order they are run.

    Every main method over every seed comes first (so an interrupted benchmark still has the
    seed-to-seed spread of the main table), then FLoRIST's other thresholds and the
    heterogeneous-rank runs, seed by seed.
    """
    main = [
        RunSpec(m, "main", m, s, dict(PAPER_OPTIONS.get(m, {}))) for s in seeds for m in methods
    ]
    if not extras:
        return main
    more: list[RunSpec] = []
    for s in seeds:
        if "florist" in methods:
            more += [
                RunSpec(f"florist tau={t:.2f}", "florist-tau", "florist", s, {"tau": t})
                for t in FLORIST_TAUS
                if not math.isclose(t, FLORIST_TAU_HOMO)
            ]
        ranks = "-".join(str(r) for r in budget.hetero_ranks)
        for m in HETERO_METHODS:
            if m not in methods:
                continue
            opts = dict(PAPER_OPTIONS.get(m, {}))
            if m == "florist":
                opts["tau"] = FLORIST_TAU_HETERO
            more.append(RunSpec(f"{m} ranks {ranks}", "hetero", m, s, opts, budget.hetero_ranks))
    return main + more


# --------------------------------------------------------------------------- quick data


def write_quick_files(folder: Path, clients: int, per_client: int = 40) -> list[str]:
    """Deterministic prompt/completion JSONL files, a different small task per client."""
    folder.mkdir(parents=True, exist_ok=True)
    words = [
        "apple",
        "river",
        "stone",
        "cloud",
        "lamp",
        "tiger",
        "bread",
        "glass",
        "music",
        "paper",
        "north",
        "green",
    ]
    tasks = [
        lambda i: (f"Add {i} and {i + 3}.", f"{i} plus {i + 3} is {2 * i + 3}."),
        lambda i: (f"Reverse the word {words[i % 12]}.", words[i % 12][::-1]),
        lambda i: (f"Spell {words[(i * 5) % 12]} in capitals.", words[(i * 5) % 12].upper()),
        lambda i: (f"Count from {i} to {i + 4}.", " ".join(str(j) for j in range(i, i + 5))),
    ]
    paths = []
    for k in range(clients):
        path = folder / f"client{k}.jsonl"
        with path.open("w", encoding="utf-8") as f:
            for i in range(per_client):
                prompt, completion = tasks[k % len(tasks)](i)
                f.write(json.dumps({"prompt": prompt, "completion": completion}) + "\n")
        paths.append(str(path))
    return paths


# --------------------------------------------------------------------------- summaries


def _mean(values: Iterable[float]) -> float | None:
    vals = [float(v) for v in values]
    return sum(vals) / len(vals) if vals else None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``, in round order."""
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return sorted(records, key=lambda r: int(r["round"]))


def scores(ev: Mapping[str, Mapping[str, float]]) -> dict[str, float | None]:
    """Headline scores of one evaluation: in-domain mean loss and accuracy, OOD loss.

    Parameters
    ----------
    ev
        ``{domain: {"loss": x, "acc": y?}}`` as a metrics record's ``eval``.

    Returns
    -------
    dict
        ``id_loss`` (mean loss over the in-domain sets), ``id_acc`` (mean accuracy over the
        in-domain sets that have a choice task, None if none does), ``ood_loss`` (None
        without an OOD set).
    """
    inside = {d: e for d, e in ev.items() if d != OOD_NAME}
    return {
        "id_loss": _mean(e["loss"] for e in inside.values()),
        "id_acc": _mean(e["acc"] for e in inside.values() if "acc" in e),
        "ood_loss": float(ev[OOD_NAME]["loss"]) if OOD_NAME in ev else None,
    }


def summarise_run(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Scores and costs of one finished run from its metrics records.

    MB are per client per round (mean over clients, then over rounds); ``cum_mb`` is what
    one client sends plus receives over the whole run (mean over clients). ``curve`` holds
    every evaluated round with the cumulative MB per client up to it (round 0 = base model).
    """
    base = next(r for r in records if int(r["round"]) == 0)
    rounds = [r for r in records if int(r["round"]) > 0]
    if not rounds:
        raise ValueError("a run summary needs at least one trained round")
    up = [_mean(r.get("upload_bytes", {}).values()) or 0.0 for r in rounds]
    down = [_mean(r.get("download_bytes", {}).values()) or 0.0 for r in rounds]
    curve = [{"round": 0, "cum_mb": 0.0, **scores(base["eval"])}]
    cum = 0.0
    for r, u, d in zip(rounds, up, down, strict=True):
        cum += (u + d) / MB
        if "eval" in r:
            curve.append({"round": int(r["round"]), "cum_mb": cum, **scores(r["eval"])})
    last = next(r for r in reversed(rounds) if "eval" in r)
    tasks: dict[str, float] = {}
    for d, e in last["eval"].items():
        for k, v in e.items():
            tasks[f"{d}.{k}"] = float(v)
    out: dict[str, Any] = {
        **scores(last["eval"]),
        "tasks": tasks,
        "mb_up": sum(up) / len(up) / MB,
        "mb_down": sum(down) / len(down) / MB,
        "cum_mb": cum,
        "server_s": _mean(float(r.get("server_seconds", 0.0)) for r in rounds),
        "rounds": int(rounds[-1]["round"]),
        "curve": curve,
        "base_eval": base["eval"],
    }
    if "ranks" in rounds[-1]:
        out["final_ranks"] = rounds[-1]["ranks"]
    return out


def spread(values: Sequence[float | None]) -> dict[str, float | None]:
    """Mean and sample standard deviation (None when fewer than two values)."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return {"mean": None, "sd": None, "n": 0}
    sd = statistics.stdev(vals) if len(vals) > 1 else None
    return {"mean": statistics.fmean(vals), "sd": sd, "n": len(vals)}


SCALARS = ("id_loss", "id_acc", "ood_loss", "mb_up", "mb_down", "cum_mb", "server_s")


def aggregate(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per label: mean ± sd over seeds of every scalar, every task and the curve."""
    rows: list[dict[str, Any]] = []
    labels = list(dict.fromkeys(r["label"] for r in runs))
    for label in labels:
        mine = [r for r in runs if r["label"] == label]
        row: dict[str, Any] = {
            "label": label,
            "group": mine[0]["group"],
            "method": mine[0]["method"],
            "options": mine[0]["options"],
            "ranks": mine[0]["ranks"],
            "seeds": [r["seed"] for r in mine],
        }
        for k in SCALARS:
            row[k] = spread([r[k] for r in mine])
        task_names = list(dict.fromkeys(t for r in mine for t in r["tasks"]))
        row["tasks"] = {t: spread([r["tasks"].get(t) for r in mine]) for t in task_names}
        row["curve"] = _mean_curve([r["curve"] for r in mine])
        rows.append(row)
    return rows


def _mean_curve(curves: Sequence[Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    by_round: dict[int, list[Mapping[str, Any]]] = {}
    for c in curves:
        for p in c:
            by_round.setdefault(int(p["round"]), []).append(p)
    out = []
    for rnd in sorted(by_round):
        pts = by_round[rnd]
        out.append(
            {
                "round": rnd,
                **{
                    k: spread([p[k] for p in pts])["mean"]
                    for k in ("cum_mb", "id_loss", "id_acc", "ood_loss")
                },
            }
        )
    return out


def base_row(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The base model's round-0 scores (one evaluation per seed, mean ± sd over seeds)."""
    per_seed: dict[int, Mapping[str, Any]] = {}
    for r in runs:
        per_seed.setdefault(r["seed"], r["base_eval"])
    evs = list(per_seed.values())
    tasks: dict[str, list[float]] = {}
    for ev in evs:
        for d, e in ev.items():
            for k, v in e.items():
                tasks.setdefault(f"{d}.{k}", []).append(float(v))
    heads = [scores(ev) for ev in evs]
    row: dict[str, Any] = {
        "label": "base model (round 0)",
        "group": "base",
        "seeds": sorted(per_seed),
    }
    for k in ("id_loss", "id_acc", "ood_loss"):
        row[k] = spread([h[k] for h in heads])
    row["tasks"] = {t: spread(v) for t, v in tasks.items()}
    return row


# --------------------------------------------------------------------------- rendering


def _cell(s: Mapping[str, Any] | None, digits: int = 3) -> str:
    if not s or s.get("mean") is None:
        return "–"
    text = f"{s['mean']:.{digits}f}"
    if s.get("sd") is not None:
        text += f" ± {s['sd']:.{digits}f}"
    return text


def task_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Per-task columns in a stable order: each domain's loss then its accuracy."""
    names = list(dict.fromkeys(t for r in rows for t in r["tasks"]))
    return sorted(names, key=lambda t: (t.split(".")[0] == OOD_NAME, t))


def render_table(rows: Sequence[Mapping[str, Any]], base: Mapping[str, Any] | None) -> str:
    """The results table as Markdown (mean ± sd over seeds)."""
    tasks = [
        t for t in task_columns([*rows, *([base] if base else [])]) if not t.startswith(OOD_NAME)
    ]
    head = [
        "method",
        "seeds",
        "ID loss ↓",
        "ID acc ↑",
        *tasks,
        "OOD loss ↓",
        "MB up /rnd/client",
        "MB down /rnd/client",
        "cum MB /client",
        "server s /rnd",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    all_rows = ([base] if base else []) + list(rows)
    for r in all_rows:
        cells = [r["label"], str(len(r["seeds"])), _cell(r["id_loss"]), _cell(r["id_acc"])]
        cells += [_cell(r["tasks"].get(t)) for t in tasks]
        cells.append(_cell(r["ood_loss"]))
        if r.get("group") == "base":
            cells += ["–", "–", "–", "–"]
        else:
            cells += [
                _cell(r["mb_up"], 4),
                _cell(r["mb_down"], 4),
                _cell(r["cum_mb"], 3),
                _cell(r["server_s"], 3),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def environment() -> dict[str, Any]:
    """Versions and machine, for the record."""
    import torch
    import transformers

    import fedlora

    try:
        import peft

        peft_version = peft.__version__
    except ImportError:  # pragma: no cover - peft is a dependency
        peft_version = "missing"
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft_version,
        "fedlora": getattr(fedlora, "__version__", "unknown"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


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


def run_one(spec: RunSpec, budget: Budget, root: Path, files: Sequence[str]) -> dict[str, Any]:
    """Run (or reuse, or resume) one federation and summarise it."""
    from fedlora import config
    from fedlora.runtime.simulation import run

    run_dir = _run_dir(root, spec)
    began = time.perf_counter()
    reused = _complete(run_dir, budget.rounds)
    if not reused:
        cfg = config.load(None, spec.overrides(budget, run_dir, files))
        resume = (run_dir / "config.json").is_file()
        log.info("running %s seed %d -> %s", spec.label, spec.seed, run_dir)
        run(cfg, resume=resume)
    summary = summarise_run(read_metrics(run_dir / "metrics.jsonl"))
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
        "wall_s": None if reused else time.perf_counter() - began,
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
    summary = summarise_run([r for r in recs if int(r["round"]) <= last])
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


def run_all(
    specs: Sequence[RunSpec],
    budget: Budget,
    root: Path,
    command: str,
    deadline: float | None = None,
    jobs: int = 1,
    report_only: bool = False,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run every spec in plan order, ``jobs`` at a time; a failed run is recorded, not fatal.

    No new run starts once ``deadline`` (``time.time()``) has passed; those are reported as
    not run; with ``report_only`` only finished runs are read and nothing is run. The table
    (not the plots) is rewritten after every run, so a killed benchmark still leaves its
    results so far.
    """
    files = write_quick_files(root / "data", len(budget.hetero_ranks)) if budget.quick_files else []
    done: dict[int, dict[str, Any]] = {}
    missing: dict[int, dict[str, Any]] = {}

    def finish(i: int, outcome: dict[str, Any] | BaseException) -> None:
        spec = specs[i]
        if isinstance(outcome, BaseException):
            log.warning("%s seed %d failed: %s", spec.label, spec.seed, outcome)
            missing[i] = {
                "label": spec.label,
                "seed": spec.seed,
                "why": f"{type(outcome).__name__}: {outcome}",
            }
        else:
            done[i] = outcome
            log.info("finished %s seed %d (%d/%d)", spec.label, spec.seed, len(done), len(specs))
        write_results(
            root,
            specs,
            budget,
            [done[k] for k in sorted(done)],
            [missing[k] for k in sorted(missing)],
            command,
            partial=len(done) < len(specs),
            plots=False,
        )

    def late(i: int) -> bool:
        if report_only and not _complete(_run_dir(root, specs[i]), budget.rounds):
            cut = _unfinished(specs[i], root, budget.rounds)
            if cut is not None:
                done[i] = cut
            missing[i] = {
                "label": specs[i].label,
                "seed": specs[i].seed,
                "why": "not finished (report only)"
                + (f"; shown as {cut['label']!r}" if cut else ""),
            }
            return True
        if deadline is not None and time.time() > deadline:
            missing[i] = {
                "label": specs[i].label,
                "seed": specs[i].seed,
                "why": "not started: time limit",
            }
            return True
        return False

    if jobs <= 1:
        for i, spec in enumerate(specs):
            if late(i):
                continue
            log.info("[%d/%d] %s seed %d", i + 1, len(specs), spec.label, spec.seed)
            try:
                finish(i, run_one(spec, budget, root, files))
            except Exception as exc:  # one broken run must not lose the others' results
                finish(i, exc)
    else:
        threads = max(1, (os.cpu_count() or 1) // jobs)
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            pending: dict[Future[dict[str, Any]], int] = {}
            queue = list(range(len(specs)))
            while queue or pending:
                while queue and len(pending) < jobs:
                    i = queue.pop(0)
                    if not late(i):
                        log.info(
                            "[%d/%d] %s seed %d", i + 1, len(specs), specs[i].label, specs[i].seed
                        )
                        pending[pool.submit(_worker, specs[i], budget, root, files, threads)] = i
                if not pending:
                    break
                ready, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in ready:
                    i = pending.pop(fut)
                    error = fut.exception()
                    finish(i, error if error is not None else fut.result())
    return [done[k] for k in sorted(done)], [missing[k] for k in sorted(missing)]


def write_results(
    root: Path,
    specs: Sequence[RunSpec],
    budget: Budget,
    done: Sequence[Mapping[str, Any]],
    missing: Sequence[Mapping[str, Any]],
    command: str,
    partial: bool,
    plots: bool = True,
) -> None:
    """Write ``results.json``, ``results.md`` and (if ``plots``) the PNGs of the runs so far."""
    from fedlora.bench.plots import plot_group

    if not done:
        return
    rows = aggregate(done)
    base = base_row(done)
    finished = sum(1 for r in done if r.get("finished", True))
    doc = {
        "command": command,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "partial": partial,
        "budget": asdict(budget),
        "planned_runs": len(specs),
        "finished_runs": finished,
        "not_run": list(missing),
        "environment": environment(),
        "base": base,
        "rows": rows,
        "runs": list(done),
    }
    (root / "results.json").write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    images = []
    for group in dict.fromkeys(r["group"] for r in rows) if plots else ():
        mine = [r for r in rows if r["group"] == group]
        for x in ("round", "cum_mb"):
            path = root / f"{group}_vs_{'round' if x == 'round' else 'mb'}.png"
            plot_group(mine, base, x, path, title=f"{group} ({budget.model})")
            images.append(path.name)
    md = [
        f"# fedlora bench quality{' (PARTIAL)' if partial else ''}",
        "",
        f"- command: `{doc['command']}`",
        f"- date: {doc['date']}",
        f"- runs finished: {finished} of {len(specs)}",
        f"- budget: {json.dumps(asdict(budget))}",
        f"- environment: {json.dumps(doc['environment'])}",
        "",
        "Mean ± sample sd over seeds; losses are held-out completion losses (nats/token).",
        "",
        render_table(rows, base),
    ]
    if missing:
        md += (
            ["Not run / failed:", ""]
            + [f"- {m['label']} seed {m['seed']}: {m['why']}" for m in missing]
            + [""]
        )
    md += [f"![{name}]({name})" for name in images]
    (root / "results.md").write_text("\n".join(md) + "\n")


def build_parser() -> argparse.ArgumentParser:
    from fedlora.methods.registry import names

    p = argparse.ArgumentParser(
        prog="fedlora bench quality",
        description="Run every method under one budget on 4 clients (one domain each) and "
        "write a results table (Markdown + JSON) and plots of score against round and MB.",
    )
    p.add_argument(
        "--methods",
        nargs="+",
        default=None,
        choices=names(),
        metavar="METHOD",
        help="methods to run (default: all registered)",
    )
    p.add_argument(
        "--seeds", nargs="+", type=int, default=None, help="seeds (default: 0 1; --quick: 0)"
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
        "--max-minutes",
        type=float,
        default=None,
        help="start no new run after this many minutes; report the rest as not run",
    )
    return p


def main(argv: list[str]) -> int:
    """Entry point of ``fedlora bench quality``; returns the exit status."""
    from fedlora.methods.registry import names

    args = build_parser().parse_args(argv)
    budget = QUICK_BUDGET if args.quick else DEFAULT_BUDGET
    if args.rounds is not None:
        if args.rounds < 1:
            print("fedlora bench quality: --rounds must be at least 1", file=sys.stderr)
            return 2
        budget = Budget(
            **{**asdict(budget), "rounds": args.rounds, "hetero_ranks": tuple(budget.hetero_ranks)}
        )
    methods = args.methods or names()
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1])
    specs = plan(methods, seeds, budget, extras=not args.no_extras)
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    deadline = time.time() + 60 * args.max_minutes if args.max_minutes else None
    began = time.time()
    command = "fedlora bench quality " + " ".join(shlex.quote(a) for a in argv)
    done, missing = run_all(
        specs, budget, root, command, deadline, jobs=args.jobs, report_only=args.report_only
    )
    write_results(root, specs, budget, done, missing, command, partial=bool(missing))
    log.info("benchmark took %.1f min", (time.time() - began) / 60)
    finished = sum(1 for r in done if r["finished"])
    print(f"results: {root / 'results.md'} ({finished} of {len(specs)} runs finished)", flush=True)
    return 0 if done and not missing else 1
