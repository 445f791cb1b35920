"""The server side of a Flower run: the round driver over Flower messages.

The round, its record, checkpoints and the final adapter are the driver's
(:mod:`fedlora.runtime.driver`); this module is the transport: it finds which SuperNode
serves which client, sends each its client's broadcast (all clients, trained or not) with the
run's config, re-synchronises a client that may have missed a round from the server's mirror
of its view, and turns the replies into the driver's
:class:`~fedlora.runtime.outcome.ClientOutcome` (and :class:`~fedlora.runtime.driver.EvalReply`),
counting every byte of every message it hands to Flower or gets back.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

from fedlora import config as config_mod
from fedlora.config import RunConfig
from fedlora.errors import ConfigError, PayloadError
from fedlora.methods.base import Factored, Payload
from fedlora.runtime.assemble import Federation, assemble
from fedlora.runtime.driver import Dispatch, EvalReply, drive
from fedlora.runtime.flower.identity import NONCE, SIGNATURE, fresh_nonce, verify
from fedlora.runtime.flower.nodes import Answer, Nodes, exchange, node_keys, wait_for_nodes
from fedlora.runtime.flower.protocol import (
    EVALUATE,
    RECORD,
    SECAGG,
    TRAIN,
    EvalInstruction,
    Instruction,
    Memory,
    config_for_nodes,
    content_bytes,
    eval_instruction_content,
    instruction_content,
    pack_memory,
    read_eval_report,
    read_report,
)
from fedlora.runtime.outcome import ClientOutcome
from fedlora.runtime.own_parts import run_token
from fedlora.runtime.privacy import round_size
from fedlora.runtime.run_folder import RunState, check_run_dir, prepare_run_dir
from fedlora.runtime.secure_round import Message as Message_
from fedlora.wire import encode

log = logging.getLogger(__name__)

Reporter = Callable[[str, dict[str, Any]], None]
R = TypeVar("R")


@dataclass(frozen=True)
class ServerOptions:
    """Flower-only knobs (the RunConfig is the same for both runtimes).

    ``round_timeout``: seconds to wait for a round's (or an evaluation's) replies; a node
    silent by then is dropped from the round. ``join_timeout``: seconds to wait at the start
    for one SuperNode per client; the run starts earlier once every client id is served,
    and fails if fewer than ``federation.min_clients`` joined.
    """

    round_timeout: float = 3600.0
    join_timeout: float = 300.0
    poll_seconds: float = 0.5

    def __post_init__(self) -> None:
        if self.round_timeout <= 0 or self.join_timeout < 0 or self.poll_seconds <= 0:
            raise ConfigError("round-timeout must be > 0 and join-timeout >= 0")


def _collect(
    t: int, cid: int, nonce: str, reply: Answer, transport: FlowerTransport
) -> ClientOutcome:
    """One client's reply as the driver reads it, or why there is none (its ``error``);
    anything but a clean reply means the client may be out of sync (it is re-synchronised next round). Nothing a reply
    holds can raise out of here."""
    why: str
    if reply is None:
        why = "no reply within round-timeout"
    elif isinstance(reply, str):
        why = f"invalid reply: {reply}"
    elif reply.has_error():
        why = f"no reply: {reply.error.reason}"
        if reply.error.code == ErrorCode.NODE_UNAVAILABLE:
            transport.nodes.forget(cid)
    else:
        try:
            rep = transport.read(cid, reply, read_report)
            if rep.cid != cid or rep.round != t:
                raise PayloadError(f"reply is for client {rep.cid} round {rep.round}")
            if rep.nonce != nonce:
                raise PayloadError("stale or foreign reply: it does not echo this round's nonce")
        except Exception as exc:
            why = f"invalid reply: {_reason(exc)}"
        else:
            if rep.in_sync:
                transport.needs_sync.discard(cid)  # it applied the broadcast
                return rep
            why = f"out of sync: {rep.error}"
    transport.needs_sync.add(cid)
    log.warning("round %d: client %d: %s", t, cid, why)
    return ClientOutcome(cid, t, error=why)


def _reason(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, PayloadError) else f"{type(exc).__name__}: {exc}"


def _eval_reply(
    t: int, cid: int, nonce: str, reply: Answer, transport: FlowerTransport
) -> EvalReply:
    if reply is None:
        return EvalReply({}, error="no reply within round-timeout")
    if isinstance(reply, str):
        return EvalReply({}, error=f"invalid reply: {reply}")
    if reply.has_error():
        return EvalReply({}, error=f"no reply: {reply.error.reason}")
    received = content_bytes(reply.content)
    try:
        rep = transport.read(cid, reply, read_eval_report)
        if rep.cid != cid or rep.round != t:
            raise PayloadError(f"reply is for client {rep.cid} round {rep.round}")
        if rep.nonce != nonce:
            raise PayloadError("stale or foreign reply: it does not echo this evaluation's nonce")
    except Exception as exc:
        return EvalReply({}, 0, received, f"invalid reply: {_reason(exc)}")
    if rep.status != "ok":
        return EvalReply({}, 0, received, f"{rep.status}: {rep.error}")
    # A client may only report the sets it owns.
    own = {name: s for name, s in rep.scores.items() if name == f"client{cid}"}
    return EvalReply(own, 0, received)


def _stage_reply(cid: int, nonce: str, reply: Answer, transport: FlowerTransport) -> Message_ | str:
    """A secure stage's reply as a plain record, or why there is none."""
    if reply is None:
        return "no reply within round-timeout"
    if isinstance(reply, str):
        return f"invalid reply: {reply}"
    if reply.has_error():
        return f"no reply: {reply.error.reason}"
    try:
        record = transport.read(cid, reply, lambda content: dict(content.config_records[RECORD]))
    except Exception as exc:
        return f"invalid reply: {_reason(exc)}"
    if record.pop(NONCE, None) != nonce:
        return "stale or foreign reply: it does not echo this stage's nonce"
    record.pop(SIGNATURE, None)
    if "error" in record:
        return f"the client refused: {str(record['error'])[:1024]}"
    return record


class FlowerTransport:
    """Round messages over a Flower ``Grid``: one TRAIN message per served client, carrying
    a fresh nonce, the broadcast, the run's config as nodes see it and, for a client that
    may be out of sync, its memory (view and base merges so far) to re-synchronise from."""

    name = "flower"

    def __init__(
        self, fed: Federation, grid: Grid, nodes: Nodes, opts: ServerOptions, run: str = ""
    ) -> None:
        self.fed, self.grid, self.nodes, self.opts = fed, grid, nodes, opts
        self.run = run  # the run token, where clients keep own parts (own_parts.run_token)
        # Every client starts unsynchronised: round 1 ships an (empty) memory, a resumed run
        # ships each client's view and the base merges so far.
        self.needs_sync = {c.cid for c in fed.setup.clients}
        self.config_json = json.dumps(config_for_nodes(config_mod.to_dict(fed.cfg)), sort_keys=True)
        self.max_reply = int(fed.cfg.federation.max_reply_mb * 2**20)
        # One valid upload's aggregate is that client's own update, which every other
        # participant would then receive.
        self.min_uploads = 1 if fed.cfg.federation.allow_individual_updates else 2

    def notes(self) -> dict[str, Any]:
        refused = self.nodes.take_refusals()
        return {"nodes_refused": refused} if refused else {}

    def read(self, cid: int, reply: Message, parse: Callable[[RecordDict], R]) -> R:
        """Parse a reply of client ``cid``; with node keys, only one signed by its key."""
        key = self.nodes.keys.get(cid)
        if key is not None and not verify(key, reply.content.config_records.get(RECORD, {})):
            raise PayloadError(f"reply is not signed with client {cid}'s key")
        return parse(reply.content)

    def _send(self, kind: str, t: int, contents: dict[int, RecordDict]) -> dict[int, Answer]:
        msgs = [
            Message(content, self.nodes.by_cid[cid], kind, group_id=str(t))
            for cid, content in contents.items()
        ]
        answers = exchange(self.grid, msgs, self.opts.round_timeout, self.max_reply)
        return dict(zip(contents, answers, strict=True))

    def exchange(
        self, t: int, dispatches: Sequence[Dispatch], rs: RunState
    ) -> dict[int, ClientOutcome]:
        self.nodes.discover(self.grid, self.opts.round_timeout, self.max_reply)
        replies: dict[int, ClientOutcome] = {}
        contents: dict[int, RecordDict] = {}
        nonces: dict[int, str] = {}
        for d in dispatches:
            if d.cid not in self.nodes.by_cid:
                self.needs_sync.add(d.cid)
                replies[d.cid] = ClientOutcome(d.cid, t, error="no SuperNode serves this client")
                continue
            sync = None
            if d.cid in self.needs_sync:
                # The merges before this round's (the driver has appended it already).
                sync = pack_memory(Memory(t - 1, rs.views[d.cid], tuple(rs.merges[:-1])))
            nonces[d.cid] = fresh_nonce()
            ins = Instruction(
                round=t,
                cid=d.cid,
                train=d.train,
                config=self.config_json,
                broadcast=d.broadcast.data,
                sync=sync,
                nonce=nonces[d.cid],
                run=self.run,
            )
            contents[d.cid] = instruction_content(ins)
        for cid, reply in self._send(TRAIN, t, contents).items():
            got = _collect(t, cid, nonces[cid], reply, self)
            got.sent_bytes = content_bytes(contents[cid])
            if isinstance(reply, Message) and not reply.has_error():
                got.received_bytes = content_bytes(reply.content)
            replies[cid] = got
        return replies

    def stage(self, name: str, requests: Mapping[int, Message_]) -> dict[int, Message_ | str]:
        """One stage of a secure round: a ``query.secagg`` message per client, carrying the
        request and a fresh nonce; a reply must echo it (and, with node keys, be signed)."""
        contents: dict[int, RecordDict] = {}
        nonces: dict[int, str] = {}
        out: dict[int, Message_ | str] = {}
        for cid, request in requests.items():
            if cid not in self.nodes.by_cid:
                out[cid] = "no SuperNode serves this client"
                continue
            nonces[cid] = fresh_nonce()
            record = ConfigRecord({**request, "stage": name, NONCE: nonces[cid]})
            contents[cid] = RecordDict({RECORD: record})
        t = int(next(iter(requests.values()), {}).get("round", 0))
        for cid, reply in self._send(SECAGG, t, contents).items():
            out[cid] = _stage_reply(cid, nonces[cid], reply, self)
        return out

    def evaluate(
        self, t: int, update: Mapping[str, Factored], rs: RunState, final: bool
    ) -> dict[int, EvalReply]:
        """Federated evaluation: every served client scores its own held-out data (and after
        the last round writes its own model, where the method keeps own parts)."""
        writes = final and self.fed.method.keeps_own_parts
        if not self.fed.cfg.data.own_heldout and not writes:
            return {}
        factors: Payload = {}
        for layer, (left, right) in update.items():
            factors[f"{layer}.L"], factors[f"{layer}.R"] = left, right
        blob = encode(factors)  # float32: scores must not depend on the wire's value dtype
        out: dict[int, EvalReply] = {}
        contents: dict[int, RecordDict] = {}
        nonces: dict[int, str] = {}
        for c in self.fed.setup.clients:
            if c.cid not in self.nodes.by_cid:
                out[c.cid] = EvalReply({}, error="no SuperNode serves this client")
                continue
            nonces[c.cid] = fresh_nonce()
            ins = EvalInstruction(
                t, c.cid, self.config_json, blob, nonces[c.cid], run=self.run, final=final
            )
            contents[c.cid] = eval_instruction_content(ins)
        for cid, reply in self._send(EVALUATE, t, contents).items():
            got = _eval_reply(t, cid, nonces[cid], reply, self)
            got.sent_bytes = content_bytes(contents[cid])
            out[cid] = got
        return out


def refuse_individual_updates(fed: Federation) -> None:
    """Stop a Flower run whose broadcasts would show clients each other's own updates,
    unless ``federation.allow_individual_updates`` says the operator accepts it."""
    cfg = fed.cfg
    if cfg.federation.allow_individual_updates:
        return
    if fed.method.shares_individual_updates:
        raise ConfigError(
            f"method {fed.method.name!r} broadcasts every client's own update to every client; "
            "set federation.allow_individual_updates = true to run it on Flower anyway"
        )
    if cfg.federation.sampling == "fixed" and not cfg.privacy.on and round_size(cfg) < 2:
        raise ConfigError(
            "with one client per round the broadcast is that client's own update; "
            "sample at least 2 clients or set federation.allow_individual_updates = true"
        )


def require_identity(cfg: RunConfig, loopback: bool) -> None:
    """Refuse a deployment whose SuperNodes may run on other machines (its SuperLink is not
    on loopback, or its address is unknown here) without ``federation.node_keys``: any node
    could then claim any client id. ``federation.allow_unauthenticated = true`` accepts that."""
    fed = cfg.federation
    if loopback or fed.node_keys or fed.allow_unauthenticated:
        return
    raise ConfigError(
        "federation.node_keys: a deployment whose SuperLink is not on loopback needs one "
        "SuperNode public key per client, or any node can claim any client (impostors, "
        "Sybils: docs/threat-model.md); set federation.allow_unauthenticated = true to run "
        "without them"
    )


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
    if cfg.data.clients == 0:
        raise ConfigError(
            "data.clients: a Flower server never reads client data, so it cannot count the "
            f"values of data.label_column = {cfg.data.label_column!r}; set data.clients"
        )
    check_run_dir(cfg, resume)
    fed = assemble(cfg, report, with_client_data=False)
    refuse_individual_updates(fed)
    nodes = Nodes(clients=cfg.data.clients, keys=node_keys(cfg))
    out = prepare_run_dir(cfg, resume)
    report("status", {"text": f"waiting for {cfg.data.clients} SuperNodes"})
    token = run_token(out, resume) if fed.method.keeps_own_parts else ""
    transport = FlowerTransport(fed, grid, nodes, opts, token)
    wait_for_nodes(grid, nodes, cfg, opts.join_timeout, opts.poll_seconds, transport.max_reply)
    return drive(fed, transport, out, resume, report)
