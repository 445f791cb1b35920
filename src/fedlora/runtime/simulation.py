"""In-process federation: one base model shared by every simulated client.

Each round: the server encodes a broadcast per client, every client decodes it (all clients
receive every broadcast, so delta-synchronised methods stay in sync and base merges reach
everyone), the round's base merge is applied once to the shared base model, the sampled
clients train and upload encoded payloads, the server decodes them strictly and aggregates.
Bytes counted are the encoded bytes. Deterministic under ``cfg.seed``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fedlora import config as config_mod
from fedlora.config import RunConfig
from fedlora.errors import CheckpointError, ConfigError
from fedlora.methods.base import Factored, ServerState, Tensor
from fedlora.ops.seeds import Stream, stream_seed
from fedlora.runtime import checkpoint
from fedlora.runtime.assemble import Federation, assemble
from fedlora.runtime.evaluate import evaluate
from fedlora.runtime.steps import ClientOutcome, client_step, send, server_step
from fedlora.train.adapters import add_into_base
from fedlora.train.peft_io import compact, write_adapter
from fedlora.wire import decode

log = logging.getLogger(__name__)

Reporter = Callable[[str, dict[str, Any]], None]


def sample_clients(cfg: RunConfig, round_: int) -> list[int]:
    """The clients that train in ``round_`` (seeded; sorted)."""
    n = cfg.data.clients
    want = cfg.federation.clients_per_round
    count = max(1, round(want * n)) if want <= 1 else min(n, int(want))
    if count >= n:
        return list(range(n))
    gen = torch.Generator().manual_seed(stream_seed(cfg.seed, Stream.SAMPLING, round_))
    return sorted(torch.randperm(n, generator=gen)[:count].tolist())


def _concat(a: Factored | None, b: Factored) -> Factored:
    if a is None:
        return b
    return torch.cat([a[0], b[0]], dim=1), torch.cat([a[1], b[1]], dim=0)


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
    """Create (or check, on resume) the run folder; refuse a folder of a different run."""
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
    out.mkdir(parents=True, exist_ok=True)
    cfg_path.write_text(json.dumps(config_mod.to_dict(cfg), indent=2, sort_keys=True) + "\n")
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


def global_update(fed: Federation, rs: RunState) -> dict[str, Factored]:
    """Everything the run learnt, per layer: all base merges plus the global adapter."""
    total: dict[str, Factored | None] = {s.name: None for s in fed.setup.layers}
    for m in rs.merges:
        for name, f in m.items():
            total[name] = _concat(total[name], f)
    for name, f in fed.method.global_delta(rs.state, fed.setup).items():
        total[name] = _concat(total[name], f)
    out: dict[str, Factored] = {}
    for spec in fed.setup.layers:
        merged = total[spec.name]
        out[spec.name] = (
            merged
            if merged is not None
            else (torch.zeros(spec.out_features, 1), torch.zeros(1, spec.in_features))
        )
    return out


def run_round(fed: Federation, rs: RunState, report: Reporter) -> dict[str, Any]:
    """Play one round on ``rs`` (mutated: it is the run's explicit progress)."""
    cfg, method, setup = fed.cfg, fed.method, fed.setup
    t = rs.round + 1
    sampled = sample_clients(cfg, t)
    report("round_start", {"round": t, "sampled": sampled})
    record: dict[str, Any] = {
        "round": t,
        "method": method.name,
        "sampled": sampled,
        "value_dtype": cfg.wire.value_dtype,
    }
    down_bytes, down_params, down_enc = {}, {}, {}
    decoded = {}
    for c in setup.clients:
        tx = send(method.broadcast(rs.state, setup, c), cfg)
        decoded[c.cid] = decode(
            tx.data, expected=None, max_bytes=int(cfg.wire.max_payload_mb * 2**20)
        )
        down_bytes[str(c.cid)], down_params[str(c.cid)] = tx.nbytes, tx.params
        down_enc[str(c.cid)] = tx.encodings
    merge = method.base_merge(decoded[setup.clients[0].cid], setup)
    add_into_base(fed.model, merge)
    rs.merges.append(merge)

    outcomes: dict[int, ClientOutcome] = {}
    for c in setup.clients:
        train = c.cid in sampled
        try:
            outcomes[c.cid] = client_step(
                model=fed.model,
                method=method,
                setup=setup,
                client=c,
                view=rs.views[c.cid],
                broadcast=decoded[c.cid],
                examples=fed.train_sets[c.cid],
                cfg=cfg,
                round_=t,
                pad_id=fed.pad_id,
                train=train,
            )
        except Exception as exc:  # a client's failure must not end the federation
            log.warning("round %d: client %d failed: %s", t, c.cid, exc)
            outcomes[c.cid] = ClientOutcome(
                cid=c.cid, view=rs.views[c.cid] or {}, error=f"{type(exc).__name__}: {exc}"
            )
        if train:
            report("client_done", {"round": t, "cid": c.cid})
    uploads = {
        cid: (o.upload.data, o.n_samples) for cid, o in outcomes.items() if o.upload is not None
    }
    failures = {cid: o.error for cid, o in outcomes.items() if cid in sampled and o.error}
    server = server_step(
        method=method,
        state=rs.state,
        setup=setup,
        uploads=uploads,
        failures=failures,
        cfg=cfg,
        round_=t,
    )
    for cid, o in outcomes.items():
        rs.views[cid] = o.view
    rs.state = server.state
    rs.round = t

    up = {str(cid): o.upload for cid, o in outcomes.items() if o.upload is not None}
    record.update(
        {
            "train_loss": {
                str(cid): o.train_loss for cid, o in outcomes.items() if o.train_loss is not None
            },
            "n_samples": {str(cid): o.n_samples for cid, o in outcomes.items() if o.upload},
            "upload_bytes": {cid: tx.nbytes for cid, tx in up.items()},
            "upload_params": {cid: tx.params for cid, tx in up.items()},
            "download_bytes": down_bytes,
            "download_params": down_params,
            "encodings": {
                "upload": {cid: tx.encodings for cid, tx in up.items()},
                "download": down_enc,
            },
            "accepted": server.accepted,
            "dropped": {str(cid): why for cid, why in server.dropped.items()},
            "skipped": server.skipped,
            "server_seconds": server.seconds,
            "train_seconds": {str(cid): o.train_seconds for cid, o in outcomes.items() if o.upload},
            "client_overhead_seconds": {
                str(cid): o.overhead_seconds for cid, o in outcomes.items() if o.upload
            },
            "upload_report": {
                str(cid): o.report for cid, o in outcomes.items() if o.upload and o.report
            },
        }
    )
    if "ranks" in rs.state.meta:
        record["ranks"] = rs.state.meta["ranks"]
    if t % cfg.eval.every == 0 or t == cfg.federation.rounds:
        report("eval_start", {"round": t})
        record["eval"] = evaluate(fed, method.global_delta(rs.state, setup))
    return record


def start_or_resume(fed: Federation, out: Path, resume: bool, report: Reporter) -> RunState:
    """The run's progress: restored from the last checkpoint (metrics cut back to it), or a
    fresh state whose round-0 record is the base model's evaluation. Shared by the runtimes."""
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
    report("eval_start", {"round": 0})
    base_eval = evaluate(fed, {})
    metrics_path.write_text(
        json.dumps({"round": 0, "method": fed.method.name, "eval": base_eval}) + "\n"
    )
    report("round_done", {"round": 0, "record": {"round": 0, "eval": base_eval}})
    return rs


def run(cfg: RunConfig, *, resume: bool = False, report: Reporter | None = None) -> Path:
    """Run (or resume) a federation; returns the run folder."""
    report = report or (lambda kind, info: None)
    out = prepare_run_dir(cfg, resume)
    fed = assemble(cfg, report)
    metrics_path = out / "metrics.jsonl"
    rs = start_or_resume(fed, out, resume, report)
    while rs.round < cfg.federation.rounds:
        began = time.perf_counter()
        record = run_round(fed, rs, report)
        record["round_seconds"] = time.perf_counter() - began
        # Metrics first, checkpoint second: on resume, metrics are cut back to the last
        # checkpoint, so a crash between the two only repeats the round.
        with metrics_path.open("a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
        checkpoint.write(
            out / "checkpoints",
            checkpoint.Checkpoint(
                round=rs.round,
                state=rs.state,
                views={cid: v for cid, v in rs.views.items() if v is not None},
                merge=rs.merges[-1],
                extra={},
            ),
        )
        report("round_done", {"round": rs.round, "record": record})
    write_adapter(
        out / "adapter",
        compact(global_update(fed, rs)),
        base_model=fed.base_model_ref,
        target_modules=list(cfg.lora.target_modules),
    )
    report("done", {"out": str(out)})
    return out
