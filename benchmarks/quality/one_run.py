"""One run of the quality benchmark: the base model's scores it is measured against, the
federation itself (run, resumed or reused), its kept provenance record and its summary."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.quality.plan import Budget, RunSpec
from benchmarks.quality.provenance import (
    code_version,
    read_record,
    record_path,
    run_record,
    same_run,
    write_record,
)
from benchmarks.quality.report import read_metrics, summarise_run

log = logging.getLogger(__name__)


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


def _split(spec: RunSpec) -> str:
    """Which held-out sets a run scores: a tuning or pilot run the validation slices."""
    return "validation" if 'data.eval_split="validation"' in spec.settings else "test"


def _base_path(results: Path, seed: int, split: str = "test") -> Path:
    name = f"seed{seed}.json" if split == "test" else f"{split}-seed{seed}.json"
    return results / "base" / name


def _base_config(budget: Budget, seed: int, root: Path, files: Sequence[str], split: str) -> Any:
    from fedlora import config

    spec = RunSpec("base", "base", "fedavg", seed, settings=(f"data.eval_split={split!r}",))
    return config.load(None, spec.overrides(budget, root / "base" / "unused", files))


def base_key(cfg: Any) -> dict[str, Any]:
    """What the base model's scores depend on (model, data, sequence length), as JSON keeps
    it: tuples become lists, so a stored key compares equal to a fresh one."""
    from fedlora import config

    plain = config.to_dict(cfg)
    data = {k: v for k, v in plain["data"].items() if k != "files"}  # paths differ by clone
    key = {"model": plain["model"], "data": data, "seq_len": cfg.train.seq_len}
    return dict(json.loads(json.dumps(key)))


def base_scores(
    budget: Budget,
    seed: int,
    root: Path,
    files: Sequence[str],
    split: str = "test",
    results: Path | None = None,
) -> dict[str, Any]:
    """The base model's scores on every evaluation set of ``seed`` (and ``split``: the test
    sets or the validation slices), computed once and kept beside the run records
    (``results/base/``, committed with them) with what they depend on (model, data, sequence
    length, template); a stored file that no longer matches the budget is recomputed."""
    from fedlora.runtime.assemble import assemble
    from fedlora.runtime.driver import evaluation
    from fedlora.runtime.run_folder import RunState
    from fedlora.runtime.simulation import InProcess

    path = _base_path(results or root / "results", seed, split)
    cfg = _base_config(budget, seed, root, files, split)
    key = base_key(cfg)
    if path.is_file():
        stored = json.loads(path.read_text(encoding="utf-8"))
        if stored.get("key") == key:
            return dict(stored)
    log.info("scoring the base model for seed %d (%s)", seed, split)
    fed = assemble(cfg, lambda kind, info: None)
    rs = RunState(0, fed.method.init_server(), {})
    evaluated = evaluation(fed, InProcess(fed), rs, {})
    doc = {"key": key, "eval": evaluated.scores, "eval_seconds": evaluated.seconds}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return doc


def made_by(root: Path) -> str | None:
    """The command that made the runs in ``root`` (a report-only command records none)."""
    path = root / "command.txt"
    return path.read_text(encoding="utf-8").strip() if path.is_file() else None


def _spec_doc(spec: RunSpec, lr: float | None) -> dict[str, Any]:
    return {
        "label": spec.label,
        "group": spec.group,
        "method": spec.method,
        "seed": spec.seed,
        "options": dict(spec.options),
        "ranks": list(spec.ranks),
        "settings": list(spec.settings),
        "tuned_as": spec.tuned_as,
        "local_steps": spec.local_steps,
        "lr": spec.lr if spec.lr is not None else lr,
    }


def summary_of(record: Mapping[str, Any], clients: int) -> dict[str, Any]:
    """A run's summary from its provenance record alone."""
    spec = record["spec"]
    return {
        **{k: spec[k] for k in ("label", "group", "method", "seed", "options", "ranks", "lr")},
        "reused": True,
        "finished": True,
        "code": record.get("code"),
        "dirty": record.get("dirty", False),
        "environment": record.get("environment", {}),
        **record["made"],
        **summarise_run(record["records"], record["base_eval"], clients),
    }


def kept_run(
    spec: RunSpec,
    budget: Budget,
    root: Path,
    results: Path,
    files: Sequence[str],
    lr: float | None = None,
) -> dict[str, Any] | None:
    """The kept record of this run, when ``results`` holds it (a finished run: reused as it
    is, wherever and whenever it was made), else None."""
    from fedlora import config

    kept = read_record(record_path(results, spec.slug(), spec.seed))
    if kept is None or "records" not in kept:
        return None
    overrides = spec.overrides(budget, _run_dir(root, spec), files, lr)
    as_run = json.loads(json.dumps(config.to_dict(config.load(None, overrides))))
    return kept if same_run(kept, as_run, overrides) else None


def run_one(
    spec: RunSpec,
    budget: Budget,
    root: Path,
    files: Sequence[str],
    verify: bool = True,
    lr: float | None = None,
    results: Path | None = None,
) -> dict[str, Any]:
    """Run (or reuse, or resume) one federation at learning rate ``lr`` (a tuning row's
    own, else the tuned one), keep its provenance record in ``results`` (default
    ``root/results``) and summarise it. A kept record of this run is reused as it is, never
    rewritten; with ``verify`` a run folder holding a run of another budget or setting is
    refused."""
    from fedlora import config
    from fedlora.runtime.run_folder import check_run_dir
    from fedlora.runtime.simulation import run

    results = results or root / "results"
    kept = kept_run(spec, budget, root, results, files, lr)
    if kept is not None:
        return {**summary_of(kept, budget.clients), "reused": True}
    run_dir = _run_dir(root, spec)
    began = time.perf_counter()
    load_before = os.getloadavg()[0]
    cfg = config.load(None, spec.overrides(budget, run_dir, files, lr))
    resume = (run_dir / "config.json").is_file()
    if resume and verify:  # a folder of another budget or setting is refused, never reused
        check_run_dir(cfg, resume=True)
    finished = _complete(run_dir, budget.rounds)
    if not finished:
        log.info("running %s seed %d -> %s", spec.label, spec.seed, run_dir)
        run(cfg, resume=resume)
    made = {
        "wall_s": None if finished else time.perf_counter() - began,
        "load_1min": None if finished else [load_before, os.getloadavg()[0]],
        "finished_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    base = json.loads(_base_path(results, spec.seed, _split(spec)).read_text(encoding="utf-8"))
    record = run_record(
        _spec_doc(spec, lr),
        config.to_dict(cfg),
        read_metrics(run_dir / "metrics.jsonl"),
        made,
        code_version(),
    )
    record["base_eval"] = base["eval"]
    write_record(record_path(results, spec.slug(), spec.seed), record)
    return {**summary_of(record, budget.clients), "reused": False, "run_dir": str(run_dir)}


def worker(
    spec: RunSpec,
    budget: Budget,
    root: Path,
    files: Sequence[str],
    threads: int,
    lr: float | None,
    results: Path,
) -> dict[str, Any]:
    """A run in a child process with ``threads`` torch threads (``--jobs`` > 1)."""
    import torch

    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    return run_one(spec, budget, root, files, lr=lr, results=results)
