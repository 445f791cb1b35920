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
from pathlib import Path
from typing import Any

from fedlora.config import RunConfig
from fedlora.methods.base import Factored
from fedlora.runtime.assemble import Federation, assemble
from fedlora.runtime.driver import Dispatch, EvalReply, Reporter, drive
from fedlora.runtime.evaluate import score_sets
from fedlora.runtime.outcome import ClientOutcome
from fedlora.runtime.run_folder import RunState, check_run_dir, prepare_run_dir
from fedlora.runtime.steps import client_step
from fedlora.train.timing import Timer, untimed

log = logging.getLogger(__name__)


class InProcess:
    """The in-process transport: clients are function calls on the shared model."""

    name = "in-process"
    min_uploads = 1  # one process: there is no other participant to read a lone update

    def notes(self) -> dict[str, Any]:
        return {}

    def __init__(
        self, fed: Federation, timer: Timer = untimed, report: Reporter | None = None
    ) -> None:
        self.fed = fed
        self.timer = timer
        self.report = report or (lambda kind, info: None)

    def exchange(
        self, t: int, dispatches: Sequence[Dispatch], rs: RunState
    ) -> dict[int, ClientOutcome]:
        fed = self.fed
        replies: dict[int, ClientOutcome] = {}
        for d in dispatches:
            if not d.train:
                # An idle client's view is the server's mirror (one process, one memory), so
                # applying its broadcast here would only repeat the driver's work.
                replies[d.cid] = ClientOutcome(d.cid, t, sent_bytes=d.broadcast.nbytes)
                continue
            client = fed.setup.client(d.cid)
            try:
                with self.timer("client_step"):
                    outcome = client_step(
                        model=fed.model,
                        method=fed.method,
                        setup=fed.setup,
                        client=client,
                        view=rs.views[d.cid],
                        broadcast=d.payload,
                        examples=fed.train_sets[d.cid],
                        cfg=fed.cfg,
                        round_=t,
                        pad_id=fed.pad_id,
                        timer=self.timer,
                    )
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
            replies[d.cid] = outcome
        return replies

    def evaluate(
        self, t: int, update: Mapping[str, Factored], rs: RunState
    ) -> dict[int, EvalReply]:
        """Each client scores its own held-out sets on the shared model (which carries the
        run's base merges, as every client's own copy does); nothing crosses."""
        fed = self.fed
        return {
            cid: EvalReply(score_sets(fed.model, fed.tokenizer, sets, fed.cfg, fed.pad_id, update))
            for cid, sets in sorted(fed.client_eval_sets.items())
        }


def run(cfg: RunConfig, *, resume: bool = False, report: Reporter | None = None) -> Path:
    """Run (or resume) a federation in this process; returns the run folder."""
    report = report or (lambda kind, info: None)
    check_run_dir(cfg, resume)
    fed = assemble(cfg, report)  # bad data stops the run here, before anything is written
    out = prepare_run_dir(cfg, resume)
    return drive(fed, InProcess(fed, report=report), out, resume, report)
