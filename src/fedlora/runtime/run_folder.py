"""The run folder: what a run writes and how a killed run is picked up again.

``config.json`` (the resolved config; a folder holding another run is refused),
``metrics.jsonl`` (round 0 is the base model's evaluation, then one record per round),
``checkpoints/round-NNNN/`` (:mod:`fedlora.runtime.checkpoint`) and ``adapter/``. Resuming
replays the checkpointed base merges onto the freshly built base model and cuts the metrics
back to the last checkpoint.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedlora import config as config_mod
from fedlora.config import RunConfig
from fedlora.errors import CheckpointError, ConfigError
from fedlora.methods.base import Factored, ServerState, Tensor
from fedlora.models.placement import placement
from fedlora.runtime import checkpoint
from fedlora.runtime.assemble import Federation
from fedlora.runtime.tensorboard import check_available
from fedlora.train.adapters import add_into_base

log = logging.getLogger(__name__)

Reporter = Callable[[str, dict[str, Any]], None]


@dataclass
class RunState:
    """Mutable progress of a run (explicit, checkpointed every round)."""

    round: int
    state: ServerState
    views: dict[int, dict[str, Tensor] | None]
    merges: list[dict[str, Factored]] = field(default_factory=list)


def _fingerprint(cfg: RunConfig) -> dict[str, Any]:
    data = config_mod.to_dict(cfg)
    data.pop("out_dir", None)
    data.get("federation", {}).pop("rounds", None)
    return data


def prepare_run_dir(cfg: RunConfig, resume: bool) -> Path:
    """Create (or check, on resume) the run folder; refuse a folder of a different run
    (:func:`check_run_dir`), then write its ``config.json``."""
    out = check_run_dir(cfg, resume)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(
        json.dumps(config_mod.to_dict(cfg), indent=2, sort_keys=True) + "\n"
    )
    return out


def check_run_dir(cfg: RunConfig, resume: bool) -> Path:
    """Every check of :func:`prepare_run_dir`, writing nothing: a run this machine cannot
    place (no CUDA for ``train.device``/``model.quantize``), a folder of a different run, or
    nothing to resume stops here."""
    placement(cfg.model, cfg.train.device)
    if cfg.log.tensorboard:
        check_available()
    out = Path(cfg.out_dir)
    cfg_path = out / "config.json"
    if cfg_path.exists():
        try:
            previous = json.loads(cfg_path.read_text())
        except json.JSONDecodeError:
            raise ConfigError(f"{cfg_path} is corrupt; choose another out_dir") from None
        prev_cfg = dict(previous)
        if _fingerprint(config_mod.from_dict({k: v for k, v in prev_cfg.items()})) != _fingerprint(
            cfg
        ):
            raise ConfigError(
                f"run directory {out} already holds a different run; choose another out_dir"
            )
        if not resume and (out / "metrics.jsonl").exists():
            raise ConfigError(
                f"run directory {out} already holds this run; use --resume {out} to continue it"
            )
    elif resume:
        raise ConfigError(f"nothing to resume in {out}: no config.json")
    return out


def restore(fed: Federation, out: Path) -> RunState | None:
    ck_root = out / "checkpoints"
    done = checkpoint.rounds(ck_root)
    if not done:
        return None
    merges: list[dict[str, Factored]] = []
    last: checkpoint.Checkpoint | None = None
    for r in done:
        if r != len(merges) + 1:
            raise CheckpointError(f"checkpoint of round {len(merges) + 1} is missing in {ck_root}")
        last = checkpoint.read(ck_root, r)
        merges.append(last.merge)
    assert last is not None
    # Replay the base merges in order: the same additions give bit-identical base weights.
    for m in merges:
        add_into_base(fed.model, m)
    views: dict[int, dict[str, Tensor] | None] = {c.cid: None for c in fed.setup.clients}
    views.update(last.views)
    return RunState(round=last.round, state=last.state, views=views, merges=merges)


def truncate_metrics(path: Path, last_round: int) -> None:
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash
        if rec.get("round", 0) <= last_round:
            keep.append(line)
    path.write_text("".join(k + "\n" for k in keep))


def start_or_resume(
    fed: Federation,
    out: Path,
    resume: bool,
    report: Reporter,
    evaluate_base: Callable[[RunState], dict[str, Any]],
) -> RunState:
    """The run's progress: restored from the last checkpoint (metrics cut back to it), or a
    fresh state whose round-0 record is ``evaluate_base`` (the base model's evaluation;
    only the round and method when ``eval.at_start`` is off)."""
    metrics_path = out / "metrics.jsonl"
    rs = restore(fed, out) if resume else None
    if rs is not None:
        truncate_metrics(metrics_path, rs.round)
        log.info("resuming %s after round %d", out, rs.round)
        return rs
    rs = RunState(
        round=0,
        state=fed.method.init_server(fed.setup),
        views={c.cid: None for c in fed.setup.clients},
    )
    record: dict[str, Any] = {"round": 0, "method": fed.method.name}
    if fed.cfg.eval.at_start:
        report("eval_start", {"round": 0})
        began = time.perf_counter()
        record.update(evaluate_base(rs))
        record["eval_seconds"] = time.perf_counter() - began
    metrics_path.write_text(json.dumps(record) + "\n")
    report("round_done", {"round": 0, "record": record})
    return rs
