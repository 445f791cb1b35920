"""The server side of a Flower run: the round driver over Flower messages.

The round, its record, checkpoints and the final adapter are the driver's
(:mod:`fedlora.runtime.driver`); this module is the transport: it finds which SuperNode
serves which client, sends each its client's broadcast (all clients, trained or not) with the
run's config, re-synchronises a client that may have missed a round from the server's mirror
of its view, and turns the replies into the driver's :class:`~fedlora.runtime.driver.Reply`,
counting every byte of every message it hands to Flower or gets back.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

from fedlora import config as config_mod
from fedlora.config import RunConfig
from fedlora.errors import FedloraError, PayloadError
from fedlora.methods.base import Factored, Payload
from fedlora.runtime.assemble import Federation, assemble
from fedlora.runtime.driver import Dispatch, EvalReply, Reply, drive
from fedlora.runtime.flower.protocol import (
    EVALUATE,
    QUERY,
    RECORD,
    TRAIN,
    EvalInstruction,
    Instruction,
    Memory,
    Report,
    content_bytes,
    eval_instruction_content,
    instruction_content,
    pack_memory,
    read_eval_report,
    read_report,
)
from fedlora.runtime.run_folder import RunState, check_run_dir, prepare_run_dir
from fedlora.runtime.steps import ClientOutcome, Transfer
from fedlora.wire import encode

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


def _collect(
    t: int, cid: int, reply: Message | None, nodes: Nodes, needs_sync: set[int]
) -> Report | str:
    """One client's reply as a Report, or why there is none; anything but a clean reply
    means the client may be out of sync (it is re-synchronised next round)."""
    why: str
    if reply is None:
        why = "no reply within round-timeout"
    elif reply.has_error():
        why = f"no reply: {reply.error.reason}"
        if reply.error.code == ErrorCode.NODE_UNAVAILABLE:
            nodes.forget(cid)
    else:
        try:
            rep = read_report(reply.content)
            if rep.cid != cid or rep.round != t:
                raise PayloadError(f"reply is for client {rep.cid} round {rep.round}")
        except PayloadError as exc:
            why = f"invalid reply: {exc}"
        else:
            if rep.status != "out-of-sync":
                needs_sync.discard(cid)  # it applied the broadcast, even if training failed
                return rep
            why = f"out of sync: {rep.error}"
    needs_sync.add(cid)
    log.warning("round %d: client %d: %s", t, cid, why)
    return why


def _eval_reply(t: int, cid: int, msg: Message, reply: Message | None) -> EvalReply:
    sent = content_bytes(msg.content)
    if reply is None:
        return EvalReply({}, sent, 0, "no reply within round-timeout")
    if reply.has_error():
        return EvalReply({}, sent, 0, f"no reply: {reply.error.reason}")
    received = content_bytes(reply.content)
    try:
        rep = read_eval_report(reply.content)
        if rep.cid != cid or rep.round != t:
            raise PayloadError(f"reply is for client {rep.cid} round {rep.round}")
    except PayloadError as exc:
        return EvalReply({}, sent, received, f"invalid reply: {exc}")
    if rep.status != "ok":
        return EvalReply({}, sent, received, f"{rep.status}: {rep.error}")
    # A client may only report the sets it owns.
    own = {name: s for name, s in rep.scores.items() if name == f"client{cid}"}
    return EvalReply(own, sent, received)


def _outcome(cid: int, got: Report | str) -> ClientOutcome:
    """A reply as the driver reads it (the same fields the in-process client step fills)."""
    if isinstance(got, str):
        return ClientOutcome(cid=cid, view={}, error=got)
    out = ClientOutcome(
        cid=cid,
        view={},
        n_samples=got.n_samples,
        train_loss=got.train_loss,
        tokens=got.tokens,
        truncated=got.truncated,
        train_seconds=got.train_seconds,
        overhead_seconds=got.overhead_seconds,
        error=got.error if got.status == "failed" else None,
        report=dict(got.upload_report),
    )
    if got.upload is not None:
        out.upload = Transfer(got.upload, got.params, got.encodings)
    return out


class FlowerTransport:
    """Round messages over a Flower ``Grid``: one TRAIN message per served client, carrying
    the broadcast, the run's config and, for a client that may be out of sync, its memory
    (view and base merges so far) to re-synchronise from."""

    name = "flower"

    def __init__(self, fed: Federation, grid: Grid, nodes: Nodes, opts: ServerOptions) -> None:
        self.fed, self.grid, self.nodes, self.opts = fed, grid, nodes, opts
        # Every client starts unsynchronised: round 1 ships an (empty) memory, a resumed run
        # ships each client's view and the base merges so far.
        self.needs_sync = {c.cid for c in fed.setup.clients}
        self.config_json = json.dumps(config_mod.to_dict(fed.cfg), sort_keys=True)

    def exchange(self, t: int, dispatches: Sequence[Dispatch], rs: RunState) -> dict[int, Reply]:
        self.nodes.discover(self.grid, timeout=self.opts.round_timeout or 60.0)
        replies: dict[int, Reply] = {}
        targets, msgs = [], []
        for d in dispatches:
            node = self.nodes.by_cid.get(d.cid)
            if node is None:
                self.needs_sync.add(d.cid)
                replies[d.cid] = Reply(_outcome(d.cid, "no SuperNode serves this client"))
                continue
            sync = None
            if d.cid in self.needs_sync:
                # The merges before this round's (the driver has appended it already).
                sync = pack_memory(Memory(t - 1, rs.views[d.cid], tuple(rs.merges[:-1])))
            ins = Instruction(
                round=t,
                cid=d.cid,
                train=d.train,
                config=self.config_json,
                broadcast=d.broadcast.data,
                sync=sync,
            )
            targets.append(d.cid)
            msgs.append(Message(instruction_content(ins), node, TRAIN, group_id=str(t)))
        answers = exchange(self.grid, msgs, self.opts.round_timeout)
        for cid, msg, reply in zip(targets, msgs, answers, strict=True):
            got = _collect(t, cid, reply, self.nodes, self.needs_sync)
            received = content_bytes(reply.content) if reply and not reply.has_error() else 0
            replies[cid] = Reply(_outcome(cid, got), content_bytes(msg.content), received)
        return replies

    def evaluate(
        self, t: int, update: Mapping[str, Factored], rs: RunState
    ) -> dict[int, EvalReply]:
        """Federated evaluation: every served client scores its own held-out data."""
        if not self.fed.cfg.data.own_heldout:
            return {}
        factors: Payload = {}
        for layer, (left, right) in update.items():
            factors[f"{layer}.L"], factors[f"{layer}.R"] = left, right
        blob = encode(factors)  # float32: scores must not depend on the wire's value dtype
        out: dict[int, EvalReply] = {}
        targets, msgs = [], []
        for c in self.fed.setup.clients:
            node = self.nodes.by_cid.get(c.cid)
            if node is None:
                out[c.cid] = EvalReply({}, error="no SuperNode serves this client")
                continue
            ins = EvalInstruction(t, c.cid, self.config_json, blob)
            targets.append(c.cid)
            msgs.append(Message(eval_instruction_content(ins), node, EVALUATE, group_id=str(t)))
        answers = exchange(self.grid, msgs, self.opts.round_timeout)
        for cid, msg, reply in zip(targets, msgs, answers, strict=True):
            out[cid] = _eval_reply(t, cid, msg, reply)
        return out


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
    check_run_dir(cfg, resume)
    fed = assemble(cfg, report, with_client_data=False)
    out = prepare_run_dir(cfg, resume)
    nodes = Nodes(clients=cfg.data.clients)
    report("status", {"text": f"waiting for {cfg.data.clients} SuperNodes"})
    wait_for_nodes(grid, nodes, cfg, opts)
    return drive(fed, FlowerTransport(fed, grid, nodes, opts), out, resume, report)
