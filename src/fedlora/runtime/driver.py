"""The round driver: one federated round, and the run around it, for every runtime.

A runtime only says how messages reach clients and come back (a :class:`Transport`); what a
round *is* lives here, once:

1. sample the round's clients (seeded, :data:`Stream.SAMPLING`);
2. build, encode and decode (as the client will) one broadcast per client shape (rank,
   alpha) and address it to every client of that shape (every client gets one, trained or
   not, so delta-synchronised methods stay in sync and base merges reach everyone);
3. apply the round's base merge to the server's model;
4. hand the broadcasts to the transport, which returns one
   :class:`~fedlora.runtime.outcome.ClientOutcome` per client;
5. mirror every client's view with the same ``client_start`` the client runs (the server's
   copy is what checkpoints hold and what re-synchronises a client that missed a round);
   clients that held one view and got one broadcast share the new view, computed once;
6. decode the uploads strictly and aggregate (:func:`fedlora.runtime.steps.server_step`);
7. write the round's record (identical fields in every runtime) and evaluate.

What a round costs the server therefore grows with the clients sampled and the distinct
client shapes, not with the clients registered (``python -m benchmarks.client --clients``).

One policy for failures: a sampled client without a usable upload is dropped from the round
with the transport's reason; a client whose broadcast cannot be applied (``client_start``
raises on the server's mirror, as it would on the client) keeps its previous view and, if
sampled, is dropped with that reason.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from fedlora.config import RunConfig
from fedlora.methods.base import Factored, Method, Payload, Setup, Tensor
from fedlora.methods.half_round import client_start
from fedlora.ops.seeds import Stream, stream_seed
from fedlora.runtime import checkpoint
from fedlora.runtime.accounting import Release
from fedlora.runtime.assemble import Federation
from fedlora.runtime.evaluate import Scores
from fedlora.runtime.outcome import ClientOutcome, Transfer
from fedlora.runtime.privacy import Plan as PrivacyPlan
from fedlora.runtime.privacy import round_size
from fedlora.runtime.records import Evaluation, RoundRecord, dumps
from fedlora.runtime.run_folder import RunState, start_or_resume
from fedlora.runtime.secure_round import Message, SecureSum
from fedlora.runtime.secured import collected, secure_summary, secured
from fedlora.runtime.steps import Received, ServerOutcome, max_bytes, send, server_step
from fedlora.runtime.tensorboard import with_tensorboard
from fedlora.train.peft_io import compact, write_adapter
from fedlora.train.timing import Timer, untimed
from fedlora.wire import decode

log = logging.getLogger(__name__)

Reporter = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class Dispatch:
    """One client's part of a round, as the transport receives it."""

    cid: int
    train: bool
    broadcast: Transfer
    payload: Payload
    """``broadcast`` decoded, as the client decodes it (in-process transports use it)."""


@dataclass
class EvalReply:
    """One client's scores of its own held-out sets (federated evaluation)."""

    scores: Scores
    sent_bytes: int = 0
    received_bytes: int = 0
    error: str | None = None


class Server(Protocol):
    """What the round needs of the server's side: the federation and, if it has a model,
    where base merges go and how the global model is scored (a ``Federation``; the synthetic
    server of ``fedlora comm`` has no model)."""

    cfg: RunConfig
    method: Method
    setup: Setup
    privacy: PrivacyPlan | None

    def merge_into_base(self, merge: Mapping[str, Factored]) -> None:
        """Add a round's base merge into the server's model."""

    def score(self, update: Mapping[str, Factored]) -> Scores:
        """Scores of the sets the server owns for its model plus ``update``."""


class Transport(Protocol):
    """How a round's messages reach clients and come back."""

    name: str
    min_uploads: int
    """The fewest valid uploads this transport lets a round aggregate (2 where one upload's
    aggregate would be that client's own update, readable by every other participant)."""

    def notes(self) -> dict[str, Any]:
        """What the transport saw since the last round that belongs in the round's record
        (e.g. nodes refused for claiming another's identity); ``{}`` for none."""

    def exchange(
        self, t: int, dispatches: Sequence[Dispatch], rs: RunState
    ) -> dict[int, ClientOutcome]:
        """Deliver round ``t``'s broadcasts; return an outcome for each dispatched client."""

    def stage(self, name: str, requests: Mapping[int, Message]) -> Mapping[int, Message | str]:
        """One stage of a secure round (:mod:`fedlora.runtime.secure_round`): deliver each
        request to its client; a reply, or why there is none."""

    def evaluate(
        self, t: int, update: Mapping[str, Factored], rs: RunState, final: bool
    ) -> dict[int, EvalReply]:
        """Have every client that owns held-out data score the global model (its base with
        ``rs.merges`` plus ``update``) on it, after round ``t``'s aggregation; where clients
        keep own parts (``Method.keeps_own_parts``) each scores its own model, and after the
        last round (``final``) each writes that model as a PEFT folder on its side."""


def sample_clients(cfg: RunConfig, round_: int) -> list[int]:
    """The clients that train in ``round_`` (sorted): ``clients_per_round`` of them, or, with
    ``sampling = "poisson"``, each independently with probability ``sample_rate`` (possibly
    none: what a differential-privacy accountant of Poisson sampling assumes).

    Seeded by the run's seed (:data:`Stream.SAMPLING`), so a run repeats, except under
    differential privacy: every node knows the seed, and the accountant's amplification by
    sampling holds only if nobody can predict the sample, so a private run draws it from the
    operating system's cryptographic source."""
    n, count = cfg.data.clients, round_size(cfg)
    if cfg.privacy.secret:
        draw = secrets.SystemRandom()
        if cfg.federation.sampling == "poisson":
            return [k for k in range(n) if draw.random() < cfg.federation.sample_rate]
        return sorted(draw.sample(range(n), count))
    gen = torch.Generator().manual_seed(stream_seed(cfg.seed, Stream.SAMPLING, round_))
    if cfg.federation.sampling == "poisson":
        draws = torch.rand(n, generator=gen, dtype=torch.float64)
        return [k for k in range(n) if float(draws[k]) < cfg.federation.sample_rate]
    if count >= n:
        return list(range(n))
    return sorted(torch.randperm(n, generator=gen)[:count].tolist())


@dataclass(frozen=True)
class Mirrored:
    """What mirroring a round's views found: the clients that could not apply their
    broadcast (and why), and the upload reference (``Method.upload_reference`` of its start)
    of each training client and of each group of clients alike."""

    unapplied: dict[int, str]
    references: dict[int, dict[str, Tensor]]


@dataclass(frozen=True)
class _Applied:
    """One group's broadcast applied to one old view: the new view, or why it failed. The
    old view is held so that the group's key (its ``id``) is never reused while cached."""

    old: object
    view: dict[str, Tensor] | None
    error: str | None = None


def _mirror_views(
    fed: Server,
    rs: RunState,
    dispatches: Sequence[Dispatch],
    outcomes: Mapping[int, ClientOutcome],
    t: int,
) -> Mirrored:
    """Update every client's view as its ``client_start`` does (see :class:`Mirrored`).

    A start the client played in this process (``ClientOutcome.start``) is used as it is;
    any other is computed here, once. A new view depends on the old one, the broadcast and
    the client's shape only (the ``Method`` contract), so clients alike in all three share
    one. A start's adapter may depend on the client's own seed, so a training client's
    start is its own.
    """
    out = Mirrored({}, {})
    done: dict[tuple[int, int, tuple[int, float]], _Applied] = {}
    for d in dispatches:
        client = fed.setup.client(d.cid)
        old = rs.views[d.cid]
        alike = (id(old), id(d.payload), client.shape)
        reply = outcomes.get(d.cid)
        start = reply.start if reply is not None else None
        if start is None and (alike not in done or d.train):
            try:
                start = client_start(fed.method, client, old, d.payload, t)
            except Exception as exc:  # the client cannot apply it either: it keeps its view
                log.warning("round %d: client %d cannot apply the broadcast: %s", t, d.cid, exc)
                why = f"broadcast could not be applied: {type(exc).__name__}: {exc}"
                done.setdefault(alike, _Applied(old, None, why))
        if start is not None:
            fresh = alike not in done
            done.setdefault(alike, _Applied(old, dict(start.view)))
            if d.train or fresh:
                out.references[d.cid] = fed.method.upload_reference(start, client)
        applied = done[alike]
        if applied.view is None:
            out.unapplied[d.cid] = applied.error or "broadcast could not be applied"
        else:
            rs.views[d.cid] = applied.view
    return out


def run_round(
    fed: Server,
    rs: RunState,
    transport: Transport,
    report: Reporter,
    timer: Timer = untimed,
) -> RoundRecord:
    """Play one round on ``rs`` (mutated: it is the run's explicit progress); returns its
    metrics record. ``timer`` sees the server's phases (``broadcast_encode``,
    ``broadcast_decode``, ``base_merge``, ``upload_decode``; :mod:`fedlora.train.timing`)."""
    began = time.perf_counter()
    cfg, method, setup = fed.cfg, fed.method, fed.setup
    t = rs.round + 1
    sampled = sample_clients(cfg, t)
    report("round_start", {"round": t, "sampled": sampled})
    dispatches = []
    chosen = set(sampled)
    by_shape: dict[tuple[int, float], tuple[Transfer, Payload]] = {}
    for c in setup.clients:
        if c.shape not in by_shape:
            with timer("broadcast_encode"):
                tx = send(method.broadcast(rs.state, c), cfg)
            with timer("broadcast_decode"):
                payload = decode(tx.data, expected=None, max_bytes=max_bytes(cfg))
            by_shape[c.shape] = (tx, payload)
        tx, payload = by_shape[c.shape]
        dispatches.append(Dispatch(c.cid, c.cid in chosen, tx, payload))
    with timer("base_merge"):
        merge = method.base_merge(dispatches[0].payload)
        fed.merge_into_base(merge)
    rs.merges.append(merge)

    replies = transport.exchange(t, dispatches, rs)
    for cid in sampled:
        report("client_done", {"round": t, "cid": cid})
    mirrored = _mirror_views(fed, rs, dispatches, replies, t)
    unapplied, references = mirrored.unapplied, mirrored.references
    uploads, failures, holders = collected(cfg.federation.secure, sampled, replies, unapplied)
    secure = None
    if cfg.federation.secure:
        secure = secured(cfg, method, setup, t, holders, transport.stage, replies)
    report("server_start", {"round": t, "uploads": len(uploads) or len(holders)})
    server = server_step(
        method,
        rs.state,
        cfg,
        Received(uploads, failures, references, t, secure),
        min_uploads=transport.min_uploads,
        dp=fed.privacy,
        timer=timer,
    )
    # A skipped round keeps the state, less what its broadcast already merged everywhere.
    rs.state = method.skip_round(server.state) if server.skipped else server.state
    if fed.privacy is not None and not server.skipped:
        # counted before anything of it can leave: the evaluation below sends it to clients
        rs.released(fed.privacy.release(t))
    warning = (rs.state.meta.get("report") or {}).get("warning") if not server.skipped else None
    if warning:
        log.warning("round %d: %s", t, warning)
        report("status", {"text": f"round {t}: {warning}"})
    rs.round = t
    evaluated = None
    if t % cfg.eval.every == 0 or t == cfg.federation.rounds:
        report("eval_start", {"round": t})
        last = t == cfg.federation.rounds
        evaluated = evaluation(fed, transport, rs, method.global_delta(rs.state), last)
    uploaded = set(uploads) | set(secure.alive if secure is not None else ())
    notes = transport.notes()
    facts = RoundFacts(
        t, sampled, dispatches, replies, uploaded, server, notes, rs.releases, secure
    )
    return round_record(fed, facts, evaluated, time.perf_counter() - began)


def evaluation(
    fed: Server,
    transport: Transport,
    rs: RunState,
    update: Mapping[str, Factored],
    final: bool = False,
) -> Evaluation:
    """Scores of the global model (base plus ``update``): the server's own sets, scored here,
    and each client's own sets, scored on that client through the transport."""
    began = time.perf_counter()
    scores = fed.score(update)
    replies = sorted(transport.evaluate(rs.round, update, rs, final).items())
    for _, reply in replies:
        scores.update(reply.scores)
    return Evaluation(
        scores,
        time.perf_counter() - began,
        sent={str(cid): r.sent_bytes for cid, r in replies},
        received={str(cid): r.received_bytes for cid, r in replies},
        dropped={str(cid): r.error for cid, r in replies if r.error},
    )


@dataclass(frozen=True)
class RoundFacts:
    """What a round did, for its record."""

    t: int
    sampled: list[int]
    dispatches: Sequence[Dispatch]
    replies: Mapping[int, ClientOutcome]
    uploaded: set[int]
    server: ServerOutcome
    notes: Mapping[str, Any]
    releases: Sequence[Release] = ()
    """Every DP release so far (the ledger's)."""
    secure: SecureSum | None = None
    """What a secure round's stages gave (under secure aggregation)."""


def round_record(
    fed: Server, facts: RoundFacts, evaluated: Evaluation | None, seconds: float
) -> RoundRecord:
    """The metrics.jsonl record of a round (the same fields in every runtime).

    ``upload_bytes`` / ``download_bytes`` are the encoded payloads; ``transport_bytes`` is
    everything the runtime's transport moved per client (payloads plus, on Flower, the
    config and re-sync blobs of its messages).
    """
    up = {cid: facts.replies[cid] for cid in sorted(facts.uploaded)}
    loads = {str(c): o.upload for c, o in up.items() if o.upload is not None}
    masked = (
        {str(c): n for c, n in sorted(facts.secure.masked_bytes.items())} if facts.secure else {}
    )
    replies, server = sorted(facts.replies.items()), facts.server
    # What the server decoded, not what a client says of its upload (0 and {} if undecodable)
    seen = {str(c): st for c, st in server.stats.items()}
    private = fed.privacy is not None
    return RoundRecord(
        round=facts.t,
        method=fed.method.name,
        sampled=facts.sampled,
        value_dtype=fed.cfg.wire.value_dtype,
        train_loss={str(c): o.train_loss for c, o in up.items() if o.train_loss is not None},
        n_samples={str(c): o.n_samples for c, o in up.items()},
        tokens={str(c): o.tokens for c, o in up.items()},
        truncated={str(c): o.truncated for c, o in up.items()},
        upload_bytes={c: u.nbytes for c, u in loads.items()} | masked,
        upload_params={c: seen[c].nonzero if c in seen else 0 for c in loads}
        | {c: up[int(c)].held for c in masked},
        download_bytes={str(d.cid): d.broadcast.nbytes for d in facts.dispatches},
        download_params={str(d.cid): d.broadcast.params for d in facts.dispatches},
        encodings={
            "upload": {c: seen[c].encodings() if c in seen else {} for c in loads},
            "download": {str(d.cid): d.broadcast.encodings for d in facts.dispatches},
        },
        transport_bytes={
            "sent": {str(c): r.sent_bytes for c, r in replies},
            "received": {str(c): r.received_bytes for c, r in replies},
        },
        accepted=server.accepted,
        dropped={str(c): why for c, why in server.dropped.items()},
        skipped=server.skipped,
        skip_reason=server.skip_reason,
        weight_capped={str(c): why for c, why in server.capped.items()},
        clipped={str(c): v for c, v in server.clipped.items()},
        server_seconds=server.seconds,
        train_seconds={str(c): o.train_seconds for c, o in up.items()},
        client_overhead_seconds={str(c): o.overhead_seconds for c, o in up.items()},
        # Under DP a report's figures describe the unclipped update: none is kept
        upload_report={} if private else {str(c): o.report for c, o in up.items() if o.report},
        round_seconds=seconds,
        ranks=server.state.meta.get("ranks"),
        server_report=server.state.meta.get("report") if not server.skipped else None,
        nodes_refused=facts.notes.get("nodes_refused"),
        privacy=fed.privacy.spent(facts.releases) if fed.privacy is not None else None,
        secure_aggregation=secure_summary(fed.cfg, facts.secure),
        evaluation=evaluated,
    )


def global_update(fed: Federation, rs: RunState) -> dict[str, Factored]:
    """Everything the run learnt, per layer: all base merges plus the global adapter."""
    return learnt(fed.setup, rs.merges, fed.method.global_delta(rs.state))


def learnt(
    setup: Setup, merges: Sequence[Mapping[str, Factored]], update: Mapping[str, Factored]
) -> dict[str, Factored]:
    """Per layer, the base merges so far and ``update`` side by side as one factored update."""
    total: dict[str, list[Factored]] = {s.name: [] for s in setup.layers}
    for m in merges:
        for name, f in m.items():
            total[name].append(f)
    for name, f in update.items():
        total[name].append(f)
    out: dict[str, Factored] = {}
    for spec in setup.layers:
        parts = total[spec.name]
        if parts:
            out[spec.name] = (
                torch.cat([left for left, _ in parts], dim=1),
                torch.cat([right for _, right in parts], dim=0),
            )
        else:
            out[spec.name] = (torch.zeros(spec.out_features, 1), torch.zeros(1, spec.in_features))
    return out


def drive(fed: Federation, transport: Transport, out: Path, resume: bool, report: Reporter) -> Path:
    """Run (or resume) the federation in run folder ``out`` over ``transport``.

    Metrics first, checkpoint second: on resume metrics are cut back to the last
    checkpoint, so a crash between the two only repeats the round.
    """
    cfg = fed.cfg
    if cfg.log.tensorboard:
        report = with_tensorboard(report, out / "tensorboard")
    metrics_path = out / "metrics.jsonl"
    rs = start_or_resume(
        fed,
        out,
        resume,
        report,
        lambda fresh: evaluation(fed, transport, fresh, {}),
    )
    while rs.round < cfg.federation.rounds:
        record = run_round(fed, rs, transport, report).to_json()
        with metrics_path.open("a") as f:
            f.write(dumps(record) + "\n")
        extra: dict[str, Any] = {"runtime": transport.name}
        if fed.privacy is not None:
            extra["releases"] = [r.to_json() for r in rs.releases]
        checkpoint.write(
            out / "checkpoints",
            checkpoint.Checkpoint(
                round=rs.round,
                state=rs.state,
                views={cid: v for cid, v in rs.views.items() if v is not None},
                merges=rs.merges,
                extra=extra,
            ),
        )
        report("round_done", {"round": rs.round, "record": record})
    learned = global_update(fed, rs)
    # Where clients keep own parts the shared adapter is written factor by factor (FedSA's
    # shared A beside B = 0), so a client can pair it with its own part; else compacted.
    factorwise = fed.method.keeps_own_parts and all(f[0].shape[1] for f in learned.values())
    shared = learned if factorwise else compact(learned)
    write_adapter(out / "adapter", shared, base_model=fed.base_model_ref)
    report("done", {"out": str(out)})
    return out
