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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fedlora import config as config_mod
from fedlora.config import RunConfig
from fedlora.errors import CheckpointError, ConfigError
from fedlora.methods.base import Factored, LayerSpec, ServerState, Tensor
from fedlora.models.placement import placement
from fedlora.runtime import checkpoint, ledger
from fedlora.runtime.accounting import Release
from fedlora.runtime.assemble import Federation
from fedlora.runtime.records import Evaluation, StartRecord, dumps
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
    releases: list[Release] = field(default_factory=list)
    """Every noisy aggregate of a DP run that may have reached a client (:mod:`.ledger`)."""
    ledger: Path | None = None
    """Where each release is written before it can leave the server (DP runs only)."""

    def released(self, release: Release) -> None:
        """Count ``release``: in the ledger first (durably), then here."""
        if self.ledger is not None:
            ledger.append(self.ledger, release)
        self.releases.append(release)


def _fingerprint(cfg: RunConfig) -> dict[str, Any]:
    data = config_mod.to_dict(cfg)
    data.pop("out_dir", None)
    data.get("federation", {}).pop("rounds", None)
    data.get("train", {}).pop("threads", None)  # a resume may run on other cores
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


def _check_factored(where: str, spec: LayerSpec, left: Tensor, right: Tensor) -> None:
    m, n = spec.out_features, spec.in_features
    if left.dim() != 2 or right.dim() != 2 or left.shape[0] != m or right.shape[1] != n:
        raise CheckpointError(
            f"{where}: layer {spec.name} is {list(left.shape)} x {list(right.shape)}, "
            f"not an update of a {m}x{n} layer"
        )
    if left.shape[1] != right.shape[0]:
        raise CheckpointError(f"{where}: layer {spec.name}'s factors do not multiply")


def check_restored(fed: Federation, ckpt: checkpoint.Checkpoint) -> None:
    """Refuse a checkpoint that does not fit this run: non-finite tensors, a state whose
    update does not have the shape of every adapted layer, merges of unknown layers."""
    where = f"checkpoint of round {ckpt.round}"
    tensors = [("state", ckpt.state.tensors)] + [
        (f"view of client {cid}", v) for cid, v in ckpt.views.items()
    ]
    for what, group in tensors:
        for name, t in group.items():
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise CheckpointError(f"{where}: {what} tensor {name} holds NaN or Inf")
    unknown = sorted(set(ckpt.views) - {c.cid for c in fed.setup.clients})
    if unknown:
        raise CheckpointError(f"{where}: views of clients {unknown} this run does not have")
    layers = {spec.name: spec for spec in fed.setup.layers}
    try:
        update = fed.method.global_delta(ckpt.state)
    except (KeyError, RuntimeError, ValueError, IndexError) as exc:
        raise CheckpointError(f"{where}: the state does not fit this run ({exc})") from None
    for name, spec in layers.items():
        if name not in update:
            raise CheckpointError(f"{where}: the state has no update of layer {name}")
        _check_factored(where, spec, *update[name])
    for r, merge in enumerate(ckpt.merges, start=1):
        for name, (left, right) in merge.items():
            if name not in layers:
                raise CheckpointError(f"base merge of round {r}: unknown layer {name}")
            _check_factored(f"base merge of round {r}", layers[name], left, right)
            if not bool(torch.isfinite(left).all() and torch.isfinite(right).all()):
                raise CheckpointError(f"base merge of round {r}: layer {name} holds NaN or Inf")


def restore(fed: Federation, out: Path, report: Reporter) -> RunState | None:
    """The newest checkpoint that reads and fits this run (an older one, said so, when the
    newest cannot be trusted), replayed onto the base; None when there is none at all."""
    ck_root = out / "checkpoints"
    done = checkpoint.rounds(ck_root)
    if not done:
        return None
    problems = []
    for r in reversed(done):
        try:
            ckpt = checkpoint.read(ck_root, r)
            check_restored(fed, ckpt)
        except CheckpointError as exc:
            problems.append(str(exc))
            log.warning("cannot resume from round %d: %s", r, exc)
            continue
        if problems:
            text = f"resuming from round {r}: a newer checkpoint was unusable ({problems[0]})"
            report("status", {"text": text})
        # Replay the base merges in order: the same additions give bit-identical base weights.
        for m in ckpt.merges:
            add_into_base(fed.model, m)
        views: dict[int, dict[str, Tensor] | None] = {c.cid: None for c in fed.setup.clients}
        views.update(ckpt.views)
        rs = RunState(round=ckpt.round, state=ckpt.state, views=views, merges=ckpt.merges)
        if fed.privacy is not None:
            rs.ledger = out / ledger.LEDGER
            try:
                kept = [Release.from_json(x) for x in ckpt.extra.get("releases", [])]
            except (ValueError, KeyError, TypeError) as exc:
                raise CheckpointError(f"checkpoint of round {r}: bad privacy releases") from exc
            rs.releases = ledger.releases_at_resume(rs.ledger, kept)
        return rs
    raise CheckpointError(f"no usable checkpoint in {ck_root}: {'; '.join(problems)}")


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


def announce(
    fed: Federation,
    out: Path,
    report: Reporter,
    resumed: int | None,
    previous: list[dict[str, Any]],
) -> None:
    """Say what runs: the run (or the round it resumes after), each client's data (also
    written to ``clients.json``) and the records so far (so totals count from the start)."""
    if fed.clients_info:
        (out / "clients.json").write_text(json.dumps(fed.clients_info, indent=1) + "\n")
    cfg = fed.cfg
    report(
        "run_start",
        {
            "method": cfg.method.name,
            "model": cfg.model.name,
            "clients": cfg.data.clients,
            "rounds": cfg.federation.rounds,
            "out": str(out),
            "resumed_after": resumed,
            "clients_info": fed.clients_info,
            "previous": previous,
        },
    )


def start_or_resume(
    fed: Federation,
    out: Path,
    resume: bool,
    report: Reporter,
    evaluate_base: Callable[[RunState], Evaluation],
) -> RunState:
    """The run's progress: restored from the last checkpoint (metrics cut back to it), or a
    fresh state whose round-0 record is ``evaluate_base`` (the base model's evaluation;
    only the round and method when ``eval.at_start`` is off)."""
    metrics_path = out / "metrics.jsonl"
    rs = restore(fed, out, report) if resume else None
    if rs is not None:
        truncate_metrics(metrics_path, rs.round)
        log.info("resuming %s after round %d", out, rs.round)
        previous = [json.loads(line) for line in metrics_path.read_text().splitlines()]
        announce(fed, out, report, rs.round, previous)
        return rs
    announce(fed, out, report, None, [])
    rs = RunState(
        round=0,
        state=fed.method.init_server(),
        views={c.cid: None for c in fed.setup.clients},
    )
    if fed.privacy is not None:  # releases already in this folder's ledger still count
        rs.ledger = out / ledger.LEDGER
        rs.releases = ledger.read(rs.ledger)
    evaluated = None
    if fed.cfg.eval.at_start:
        report("eval_start", {"round": 0})
        evaluated = evaluate_base(rs)
    record = StartRecord(fed.method.name, evaluated).to_json()
    metrics_path.write_text(dumps(record) + "\n")
    report("round_done", {"round": 0, "record": record})
    return rs
