"""In-process federation: one base model shared by every simulated client.

The round is :func:`fedlora.runtime.driver.run_round`; this module is only its transport:
each sampled client plays :func:`fedlora.runtime.steps.client_step` on its decoded broadcast
and the shared model (which already carries the round's base merge), and its encoded upload
goes back to the server. An idle client's view is the server's mirror of it (every client
receives every broadcast, and the driver applies it), so nothing runs for it here. Nothing else crosses,
so the transport's byte counts equal the payloads'. A client's own held-out set is scored by
that client's part of the transport, as in a deployment. Deterministic under ``cfg.seed``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from fedlora.config import RunConfig
from fedlora.methods.base import Factored
from fedlora.methods.half_round import Turn
from fedlora.runtime.assemble import Federation, assemble
from fedlora.runtime.client_data import with_client_count
from fedlora.runtime.driver import Dispatch, EvalReply, Reporter, drive, learnt
from fedlora.runtime.evaluate import score_sets
from fedlora.runtime.outcome import ClientOutcome
from fedlora.runtime.own_parts import OwnParts, client_folder, run_token
from fedlora.runtime.run_folder import RunState, check_run_dir, prepare_run_dir
from fedlora.runtime.secure_round import Held, Message, answer
from fedlora.runtime.steps import ClientSide, client_step
from fedlora.train.peft_io import compact, write_adapter
from fedlora.train.threads import resolve_threads, use_threads
from fedlora.train.timing import Timer, untimed

log = logging.getLogger(__name__)


class InProcess:
    """The in-process transport: clients are function calls on the shared model."""

    name = "in-process"
    min_uploads = 1  # one process: there is no other participant to read a lone update

    def notes(self) -> dict[str, Any]:
        return {}

    def __init__(
        self,
        fed: Federation,
        timer: Timer = untimed,
        report: Reporter | None = None,
        own_root: Path | None = None,
    ) -> None:
        self.fed = fed
        self.timer = timer
        self.report = report or (lambda kind, info: None)
        self.own_root = own_root
        """``clients/run-<token>`` of the run folder, where the clients keep their own parts
        (methods that keep any; :mod:`fedlora.runtime.own_parts`)."""
        self.side = ClientSide(fed.model, fed.method, fed.setup, fed.cfg, fed.pad_id)
        """What every in-process client holds: the one shared model, method and config."""
        self.held: dict[int, Held] = {}
        """Each client's side of the round's secure sum (secure aggregation only)."""

    def own_parts(self, cid: int) -> OwnParts | None:
        """Client ``cid``'s own parts, where the method keeps any."""
        if not self.fed.method.keeps_own_parts:
            return None
        if self.own_root is None:
            raise ValueError(
                f"{self.fed.method.name} keeps own parts: the transport needs own_root"
            )
        return OwnParts(self.own_root / f"client-{cid}")

    def exchange(
        self, t: int, dispatches: Sequence[Dispatch], rs: RunState
    ) -> dict[int, ClientOutcome]:
        fed = self.fed
        replies: dict[int, ClientOutcome] = {}
        self.held = {}  # what a client held for the last round's secure sum is spent
        for d in dispatches:
            if not d.train:
                # An idle client's view is the server's mirror (one process, one memory), so
                # applying its broadcast here would only repeat the driver's work.
                replies[d.cid] = ClientOutcome(d.cid, t, sent_bytes=d.broadcast.nbytes)
                continue
            client = fed.setup.client(d.cid)
            store = self.own_parts(d.cid)
            try:
                with self.timer("client_step"):
                    own = store.before(t) if store is not None else None
                    turn = Turn(client, t, rs.views[d.cid], d.payload, own)
                    outcome = client_step(self.side, turn, fed.train_sets[d.cid], timer=self.timer)
                if store is not None and outcome.upload is not None:
                    store.save(t, outcome.own)
            except Exception as exc:  # a client's failure must not end the federation
                log.warning("round %d: client %d failed: %s", t, d.cid, exc)
                outcome = ClientOutcome(
                    d.cid, t, error=f"client failed: {type(exc).__name__}: {exc}"
                )
            self.report(
                "client_trained",
                {
                    "round": t,
                    "cid": d.cid,
                    "loss": outcome.train_loss,
                    "seconds": outcome.train_seconds,
                    "error": outcome.error,
                },
            )
            outcome.sent_bytes = d.broadcast.nbytes
            outcome.received_bytes = outcome.upload.nbytes if outcome.upload is not None else 0
            if outcome.words is not None:  # kept on the client's side for the secure stages
                self.held[d.cid] = Held(t, outcome.words)
            replies[d.cid] = outcome
        return replies

    def stage(self, name: str, requests: Mapping[int, Message]) -> dict[int, Message | str]:
        """A secure round's stage: each client answers from what it holds."""
        out: dict[int, Message | str] = {}
        for cid, request in requests.items():
            held = self.held.get(cid)
            if held is None:
                out[cid] = "it holds no vector for this round"
                continue
            try:
                out[cid] = answer(cid, name, request, held)
            except Exception as exc:  # a client's failure must not end the federation
                out[cid] = f"{type(exc).__name__}: {exc}"
        return out

    def evaluate(
        self, t: int, update: Mapping[str, Factored], rs: RunState, final: bool
    ) -> dict[int, EvalReply]:
        """Each client scores its own held-out sets on the shared model (which carries the
        run's base merges, as every client's own copy does) plus its own update; after the
        last round a client that keeps own parts writes its model beside them. Nothing
        crosses."""
        fed = self.fed
        out: dict[int, EvalReply] = {}
        for cid, sets in sorted(fed.client_eval_sets.items()):
            mine = self.own_update(cid, update, t)
            out[cid] = EvalReply(
                score_sets(fed.model, fed.tokenizer, sets, fed.cfg, fed.pad_id, mine)
            )
        if self.own_root is not None and fed.eval_sets:
            # Each client's own model on the public sets too (one process holds both; a
            # deployment's server cannot: it never holds a client's own part).
            for c in fed.setup.clients:
                scores = fed.score(self.own_update(c.cid, update, t))
                reply = out.setdefault(c.cid, EvalReply({}))
                reply.scores.update({f"{name}@client{c.cid}": v for name, v in scores.items()})
        if final and self.own_root is not None:
            for c in fed.setup.clients:
                store = self.own_parts(c.cid)
                assert store is not None
                write_adapter(
                    store.folder / "adapter",
                    compact(learnt(fed.setup, rs.merges, self.own_update(c.cid, update, t))),
                    base_model=fed.base_model_ref,
                )
        return out

    def own_update(self, cid: int, update: Mapping[str, Factored], t: int) -> dict[str, Factored]:
        """Client ``cid``'s own model after round ``t``: ``update`` with its own part."""
        store = self.own_parts(cid)
        if store is None:
            return dict(update)
        method, setup = self.fed.method, self.fed.setup
        return method.own_update(update, store.before(t + 1), setup.client(cid))


def run(cfg: RunConfig, *, resume: bool = False, report: Reporter | None = None) -> Path:
    """Run (or resume) a federation in this process; returns the run folder."""
    report = report or (lambda kind, info: None)
    cfg = with_client_count(cfg)
    # Clients train one after another here: each may use every core this process has.
    cfg = replace(cfg, train=replace(cfg.train, threads=resolve_threads(cfg.train.threads)))
    use_threads(cfg.train.threads)
    check_run_dir(cfg, resume)
    fed = assemble(cfg, report)  # bad data stops the run here, before anything is written
    out = prepare_run_dir(cfg, resume)
    own_root = None
    if fed.method.keeps_own_parts:
        own_root = client_folder(out / "clients", run_token(out, resume), 0).parent
    return drive(fed, InProcess(fed, report=report, own_root=own_root), out, resume, report)
