"""fedlora's side of the client benchmark: one client alone in its federation, played
through the round driver and the in-process transport, its round split by the timing hook."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from benchmarks.client.report import IN_LOOP_PROBES, OVERHEAD_PHASES, Sample
from benchmarks.common.measure import Stopwatch
from fedlora.config import RunConfig
from fedlora.errors import FedloraError
from fedlora.methods.base import Method
from fedlora.runtime.assemble import Federation
from fedlora.runtime.driver import Dispatch, run_round
from fedlora.runtime.outcome import ClientOutcome
from fedlora.runtime.run_folder import RunState
from fedlora.runtime.simulation import InProcess


class Kept(InProcess):
    """The in-process transport, keeping the outcomes of its last exchange for the benchmark."""

    last: dict[int, ClientOutcome]

    def exchange(
        self, t: int, dispatches: Sequence[Dispatch], rs: RunState
    ) -> dict[int, ClientOutcome]:
        self.last = super().exchange(t, dispatches, rs)
        return self.last


@dataclass
class MethodRun:
    """A method's live federation while it is benchmarked (one base model for all methods)."""

    fed: Federation
    rs: RunState
    watch: Stopwatch
    transport: Kept
    trainable: frozenset[str] = frozenset({"A", "B"})
    """What the method's client trained last round (the bare loop trains the same)."""

    @classmethod
    def start(cls, fed: Federation, method: Method) -> MethodRun:
        method.validate()
        mine = dataclasses.replace(fed, method=method)
        rs = RunState(0, method.init_server(), {c.cid: None for c in fed.setup.clients})
        watch = Stopwatch()
        return cls(mine, rs, watch, Kept(mine, timer=watch))


def alone(cfg: RunConfig) -> RunConfig:
    """``cfg`` with the timed client alone in its federation, so that one round of the round
    driver is one client's round: client 0's file (``files``) or first domain (``domain``),
    its rank, every client sampled, no evaluation and no end in sight."""
    data = cfg.data
    if data.partition == "files":
        data = dataclasses.replace(data, clients=1, files=data.files[:1])
    else:
        data = dataclasses.replace(data, clients=1, domains=data.domains[:1])
    return dataclasses.replace(
        cfg,
        data=data,
        lora=dataclasses.replace(cfg.lora, ranks=cfg.lora.ranks[:1], alphas=cfg.lora.alphas[:1]),
        federation=dataclasses.replace(
            cfg.federation, rounds=10**9, clients_per_round=1.0, min_clients=1
        ),
        eval=dataclasses.replace(cfg.eval, every=10**9),
    )


def fedlora_round(run: MethodRun) -> Sample:
    """Play the next round through the round driver and the in-process transport (the timed
    client is alone: :func:`alone`) and split its time with the explicit timing hook."""
    watch = run.watch
    watch.seconds.clear()
    watch.calls.clear()
    record = run_round(run.fed, run.rs, run.transport, lambda kind, info: None, timer=watch)
    outcome = run.transport.last[0]
    if record.skipped or outcome.upload is None:
        why = outcome.error or record.dropped
        raise FedloraError(f"{run.fed.method.name}: round {record.round} failed: {why}")
    run.trainable = outcome.start.trainable if outcome.start is not None else run.trainable
    swaps = watch.get("swap_in") + watch.get("swap_out")
    overhead = {name: watch.get(name) for name in OVERHEAD_PHASES if name != "other"}
    # client_step's own bookkeeping: its wall time minus every part timed inside it.
    inside = (
        outcome.train_seconds
        + watch.get("client_start")
        + watch.get("upload")
        + watch.get("upload_encode")
    )
    overhead["other"] = max(0.0, watch.get("client_step") - inside)
    return Sample(
        round=record.round,
        tokens=outcome.tokens,
        bare_tokens=0,
        bare_seconds=0.0,
        train_seconds=outcome.train_seconds - swaps,
        overhead=overhead,
        in_loop={name: watch.get(name) for name in IN_LOOP_PROBES},
    )
