"""The server side of a Flower run: a strategy that wraps a fedlora method.

Each round is the in-process round (:func:`fedlora.runtime.simulation.run_round`) with the
client loop replaced by Flower messages: the server encodes a broadcast for every client,
sends each SuperNode its client's bytes (all clients, trained or not, so delta-synchronised
methods stay in sync and base merges reach everyone), waits for the replies, and hands the
upload bytes to :func:`fedlora.runtime.steps.server_step`. Metrics, checkpoints and the final
adapter are written exactly as the in-process runtime writes them.

The server also keeps every client's ``view`` (the same ``client_start`` the client runs,
without training), as the in-process runtime does: checkpoints stay the same, and a client
that missed a round, restarted, or joined late is re-synchronised from it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

from fedlora import config as config_mod
from fedlora.config import RunConfig
from fedlora.errors import FedloraError, PayloadError
from fedlora.runtime import checkpoint, simulation
from fedlora.runtime.assemble import Federation, assemble
from fedlora.runtime.evaluate import evaluate
from fedlora.runtime.flower.protocol import (
    QUERY,
    RECORD,
    TRAIN,
    Instruction,
    Memory,
    Report,
    instruction_content,
    pack_memory,
    read_report,
)
from fedlora.runtime.simulation import RunState, global_update, prepare_run_dir, sample_clients
from fedlora.runtime.steps import Transfer, client_step, max_bytes, send, server_step
from fedlora.train.adapters import add_into_base
from fedlora.train.peft_io import compact, write_adapter
from fedlora.wire import decode

log = logging.getLogger(__name__)

Reporter = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class ServerOptions:
    """Flower-only knobs (the RunConfig is the same for both runtimes).

    ``round_timeout``: seconds to wait for a round's replies (0: until every SuperNode has
    answered or the SuperLink declares it unavailable, about 60 s after it stops sending
    heartbeats). ``join_timeout``: seconds to wait at the start for one SuperNode per
    client; the run starts earlier once every partition is served, and fails if fewer than
    ``federation.min_clients`` joined.
    """

    round_timeout: float = 0.0
    join_timeout: float = 300.0
    poll_seconds: float = 0.5

    def __post_init__(self) -> None:
        if self.round_timeout < 0 or self.join_timeout < 0 or self.poll_seconds <= 0:
            raise FedloraError("round-timeout and join-timeout must be >= 0")


@dataclass
class Nodes:
    """Which SuperNode serves which client id (learnt by asking each node once)."""

    clients: int
    by_cid: dict[int, int] = field(default_factory=dict)
    asked: set[int] = field(default_factory=set)

    def discover(self, grid: Grid, timeout: float) -> list[int]:
        """Ask SuperNodes not asked yet for their ``partition-id``; forget nodes that went
        offline. Returns the client ids that got a (new) node."""
        online = set(grid.get_node_ids())
        for cid, node in list(self.by_cid.items()):
            if node not in online:
                log.warning("SuperNode %d (client %d) is offline", node, cid)
                del self.by_cid[cid]
        self.asked &= online
        fresh = sorted(online - self.asked)
        if not fresh:
            return []
        msgs = [Message(_empty_query(), node, QUERY) for node in fresh]
        replies = exchange(grid, msgs, timeout)
        added = []
        for node, reply in zip(fresh, replies, strict=True):
            if reply is None or reply.has_error():
                why = "no reply" if reply is None else reply.error.reason
                log.warning("SuperNode %d did not say its partition-id: %s", node, why)
                continue  # asked again next time
            self.asked.add(node)
            pid = reply.content.config_records[RECORD].get("partition-id")
            if not isinstance(pid, int) or isinstance(pid, bool) or not 0 <= pid < self.clients:
                log.warning(
                    "SuperNode %d has partition-id %r outside 0..%d; ignored",
                    node,
                    pid,
                    self.clients - 1,
                )
                continue
            if pid in self.by_cid:
                log.warning(
                    "SuperNode %d also claims partition %d (served by %d); ignored",
                    node,
                    pid,
                    self.by_cid[pid],
                )
                continue
            self.by_cid[pid] = node
            added.append(pid)
        return added

    def forget(self, cid: int) -> None:
        node = self.by_cid.pop(cid, None)
        if node is not None:
            self.asked.discard(node)


def _empty_query() -> RecordDict:
    return RecordDict({RECORD: ConfigRecord({})})


def exchange(grid: Grid, messages: list[Message], timeout: float) -> list[Message | None]:
    """Send ``messages`` and collect their replies, in order (``None``: no reply in time).

    ``timeout`` 0 waits until every message has a reply; the SuperLink itself replies with
    an error for a node that went offline.
    """
    ids = list(grid.push_messages(messages))
    replies: dict[str, Message] = {}
    deadline = time.monotonic() + timeout if timeout > 0 else None
    while len(replies) < len(ids):
        for reply in grid.pull_messages([i for i in ids if i not in replies]):
            replies[reply.metadata.reply_to_message_id] = reply
        if len(replies) == len(ids) or (deadline is not None and time.monotonic() > deadline):
            break
        time.sleep(0.2)
    return [replies.get(i) for i in ids]


def wait_for_nodes(grid: Grid, nodes: Nodes, cfg: RunConfig, opts: ServerOptions) -> None:
    """Wait until every client id has a SuperNode, or ``join_timeout`` with at least
    ``federation.min_clients`` of them."""
    deadline = time.monotonic() + opts.join_timeout
    while True:
        nodes.discover(grid, timeout=max(opts.join_timeout, 30.0))
        if len(nodes.by_cid) == nodes.clients:
            return
        if time.monotonic() > deadline:
            break
        time.sleep(opts.poll_seconds)
    if len(nodes.by_cid) < cfg.federation.min_clients:
        raise FedloraError(
            f"only {len(nodes.by_cid)} SuperNode(s) joined within {opts.join_timeout:g} s; "
            f"federation.min_clients is {cfg.federation.min_clients} (start one SuperNode "
            f"per client with --node-config 'partition-id=<k>')"
        )
    log.warning("starting with clients %s of %d", sorted(nodes.by_cid), nodes.clients)


@dataclass
class Round:
    """What the server collected in one round."""

    t: int
    sampled: list[int]
    down: dict[int, Transfer]
    reports: dict[int, Report] = field(default_factory=dict)
    failures: dict[int, str] = field(default_factory=dict)


def _collect(
    rnd: Round, cid: int, reply: Message | None, nodes: Nodes, needs_sync: set[int]
) -> None:
    """Record one client's reply; anything but a clean reply means it may be out of sync."""
    why: str | None = None
    if reply is None:
        why = "no reply within round-timeout"
    elif reply.has_error():
        why = f"no reply: {reply.error.reason}"
        if reply.error.code == ErrorCode.NODE_UNAVAILABLE:
            nodes.forget(cid)
    else:
        try:
            rep = read_report(reply.content)
            if rep.cid != cid or rep.round != rnd.t:
                raise PayloadError(f"reply is for client {rep.cid} round {rep.round}")
        except PayloadError as exc:
            why = f"invalid reply: {exc}"
        else:
            rnd.reports[cid] = rep
            if rep.status == "out-of-sync":
                why = f"out of sync: {rep.error}"
            else:
                needs_sync.discard(cid)  # it applied the broadcast, even if training failed
                if rep.status == "failed":
                    rnd.failures[cid] = rep.error or "client failed"
                return
    needs_sync.add(cid)
    log.warning("round %d: client %d: %s", rnd.t, cid, why)
    rnd.failures[cid] = why or "unknown"


def play_round(
    fed: Federation,
    rs: RunState,
    grid: Grid,
    nodes: Nodes,
    needs_sync: set[int],
    opts: ServerOptions,
    report: Reporter,
) -> dict[str, Any]:
    """One round over Flower; ``rs`` is updated as the in-process runtime updates it."""
    cfg, method, setup = fed.cfg, fed.method, fed.setup
    t = rs.round + 1
    nodes.discover(grid, timeout=opts.round_timeout or 60.0)
    rnd = Round(t=t, sampled=sample_clients(cfg, t), down={})
    report("round_start", {"round": t, "sampled": rnd.sampled})
    decoded = {}
    for c in setup.clients:
        rnd.down[c.cid] = send(method.broadcast(rs.state, setup, c), cfg)
        decoded[c.cid] = decode(rnd.down[c.cid].data, expected=None, max_bytes=max_bytes(cfg))
    merge = method.base_merge(decoded[setup.clients[0].cid], setup)
    add_into_base(fed.model, merge)

    config_json = json.dumps(config_mod.to_dict(cfg), sort_keys=True)
    targets, msgs = [], []
    for c in setup.clients:
        node = nodes.by_cid.get(c.cid)
        if node is None:
            needs_sync.add(c.cid)
            if c.cid in rnd.sampled:
                rnd.failures[c.cid] = "no SuperNode serves this client"
            continue
        sync = None
        if c.cid in needs_sync:
            sync = pack_memory(Memory(t - 1, rs.views[c.cid], tuple(rs.merges)))
        ins = Instruction(
            round=t,
            cid=c.cid,
            train=c.cid in rnd.sampled,
            config=config_json,
            broadcast=rnd.down[c.cid].data,
            sync=sync,
        )
        targets.append(c.cid)
        msgs.append(Message(instruction_content(ins), node, TRAIN, group_id=str(t)))
    rs.merges.append(merge)
    for cid, reply in zip(targets, exchange(grid, msgs, opts.round_timeout), strict=True):
        _collect(rnd, cid, reply, nodes, needs_sync)
        if cid in rnd.sampled:
            report("client_done", {"round": t, "cid": cid})

    uploads = {
        cid: (r.upload, r.n_samples)
        for cid, r in rnd.reports.items()
        if r.upload is not None and cid in rnd.sampled
    }
    failures = {cid: why for cid, why in rnd.failures.items() if cid in rnd.sampled}
    server = server_step(
        method=method,
        state=rs.state,
        setup=setup,
        uploads=uploads,
        failures=failures,
        cfg=cfg,
        round_=t,
    )
    # Mirror every client's view: the same client_start the clients ran (no training).
    for c in setup.clients:
        rs.views[c.cid] = client_step(
            model=fed.model,
            method=method,
            setup=setup,
            client=c,
            view=rs.views[c.cid],
            broadcast=decoded[c.cid],
            examples=[],
            cfg=cfg,
            round_=t,
            pad_id=fed.pad_id,
            train=False,
        ).view
    rs.state = server.state
    rs.round = t
    record = round_record(fed, rnd, targets, uploads, server)
    if "ranks" in rs.state.meta:
        record["ranks"] = rs.state.meta["ranks"]
    if t % cfg.eval.every == 0 or t == cfg.federation.rounds:
        report("eval_start", {"round": t})
        record["eval"] = evaluate(fed, method.global_delta(rs.state, setup))
    return record


def round_record(
    fed: Federation,
    rnd: Round,
    targets: Iterable[int],
    uploads: dict[int, tuple[bytes, int]],
    server: Any,
) -> dict[str, Any]:
    """The metrics.jsonl record of a round, with the in-process runtime's fields."""
    up = {cid: r for cid, r in rnd.reports.items() if cid in uploads}
    sent = sorted(targets)
    return {
        "round": rnd.t,
        "method": fed.method.name,
        "sampled": rnd.sampled,
        "value_dtype": fed.cfg.wire.value_dtype,
        "train_loss": {
            str(cid): r.train_loss for cid, r in rnd.reports.items() if r.train_loss is not None
        },
        "n_samples": {str(cid): r.n_samples for cid, r in up.items()},
        "upload_bytes": {str(cid): len(uploads[cid][0]) for cid in up},
        "upload_params": {str(cid): r.params for cid, r in up.items()},
        "download_bytes": {str(cid): rnd.down[cid].nbytes for cid in sent},
        "download_params": {str(cid): rnd.down[cid].params for cid in sent},
        "encodings": {
            "upload": {str(cid): r.encodings for cid, r in up.items()},
            "download": {str(cid): rnd.down[cid].encodings for cid in sent},
        },
        "accepted": server.accepted,
        "dropped": {str(cid): why for cid, why in server.dropped.items()},
        "skipped": server.skipped,
        "server_seconds": server.seconds,
        "train_seconds": {str(cid): r.train_seconds for cid, r in up.items()},
        "client_overhead_seconds": {str(cid): r.overhead_seconds for cid, r in up.items()},
        "upload_report": {str(cid): r.upload_report for cid, r in up.items() if r.upload_report},
    }


def serve(
    grid: Grid,
    cfg: RunConfig,
    *,
    resume: bool = False,
    options: ServerOptions | None = None,
    report: Reporter | None = None,
) -> Path:
    """Run (or resume) the federation ``cfg`` over ``grid``; returns the run folder."""
    opts = options or ServerOptions()
    report = report or (lambda kind, info: None)
    out = prepare_run_dir(cfg, resume)
    fed = assemble(cfg, report)
    metrics_path = out / "metrics.jsonl"
    rs = simulation.start_or_resume(fed, out, resume, report)
    nodes = Nodes(clients=cfg.data.clients)
    report("status", {"text": f"waiting for {cfg.data.clients} SuperNodes"})
    wait_for_nodes(grid, nodes, cfg, opts)
    # Every client starts unsynchronised: round 1 ships an (empty) memory, a resumed run
    # ships each client's view and the base merges so far.
    needs_sync = {c.cid for c in fed.setup.clients}
    while rs.round < cfg.federation.rounds:
        began = time.perf_counter()
        record = play_round(fed, rs, grid, nodes, needs_sync, opts, report)
        record["round_seconds"] = time.perf_counter() - began
        with metrics_path.open("a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
        checkpoint.write(
            out / "checkpoints",
            checkpoint.Checkpoint(
                round=rs.round,
                state=rs.state,
                views={cid: v for cid, v in rs.views.items() if v is not None},
                merge=rs.merges[-1],
                extra={"runtime": "flower"},
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
