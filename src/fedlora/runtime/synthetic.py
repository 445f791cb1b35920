"""The round driver without a model: synthetic clients for measuring bytes and server work.

``fedlora comm`` and the benchmarks play rounds of a method on a model *shape* (no weights):
:class:`SyntheticServer` is the server's side with nowhere to merge and nothing to score,
and :class:`SyntheticTransport` plays every client through the method's real hooks
(``client_start`` → :func:`trained_adapter` as its "training" → ``upload`` → wire encode),
with the same seed streams as a real run (:mod:`fedlora.ops.seeds`). Everything else (the
broadcasts, views, drops, decoding, aggregation, records) is the driver's, as in any run.

The synthetic training moves every trainable factor by a shared direction plus a smaller
client-specific one, ``δ_k = shared[:r_k] + ε·noise_k`` (``ε = 0.1``), with the shared B
direction's columns scaled by a decaying spectrum ``exp(−i / max(1, r/8))``. Real clients of a
round start from the same global adapter and move in correlated directions, and real LoRA
updates have quickly decaying singular values; plain independent noise would instead give a
flat spectrum, where a rank-r truncation or an energy threshold cuts between nearly equal
singular values and two correct float32 computations may legitimately disagree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from fedlora.config import RunConfig
from fedlora.methods.base import (
    ClientSpec,
    ClientStart,
    Factored,
    LayerSpec,
    Lora,
    LoraPair,
    Method,
    Setup,
)
from fedlora.methods.half_round import Turn, half_round
from fedlora.runtime.driver import Dispatch, EvalReply
from fedlora.runtime.evaluate import Scores
from fedlora.runtime.outcome import ClientOutcome, Transfer
from fedlora.runtime.privacy import Plan as PrivacyPlan
from fedlora.runtime.run_folder import RunState
from fedlora.runtime.secure_round import Held, Message, answer
from fedlora.runtime.steps import secure_words, send

Tensor = torch.Tensor

CLIENT_NOISE = 0.1
"""Size of each client's own direction relative to the shared one."""


def n_samples(cid: int) -> int:
    """Unequal example counts, so that sample weighting is exercised."""
    return 100 + 50 * cid


def _shared_direction(spec: LayerSpec, rank: int, index: int, seed: int) -> LoraPair:
    gen = torch.Generator().manual_seed(seed * 1_000_003 + index)
    decay = torch.exp(-torch.arange(rank, dtype=torch.float32) / max(1.0, rank / 8))
    b = torch.randn(spec.out_features, rank, generator=gen) * decay
    a = torch.randn(rank, spec.in_features, generator=gen)
    return LoraPair(a, b)


def trained_adapter(start: ClientStart, setup: Setup, client: ClientSpec, seed: int) -> Lora:
    """``start.adapter`` moved along the shared + client directions (see module docstring).

    Only factors in ``start.trainable`` move (a ``B`` with a basis through its core, by the
    step's projection on the basis). Step sizes: A by ``0.1/√n`` per unit direction
    (the scale of its PEFT init is ``1/√n``), B by ``0.01``.
    """
    gen = torch.Generator().manual_seed(seed * 7_919 + 31 * client.cid + 1)
    out: Lora = {}
    for index, spec in enumerate(setup.layers):
        a0, b0 = start.adapter[spec.name]
        rank = a0.shape[0]
        shared = _shared_direction(spec, setup.max_rank, index, seed)
        step_a = 0.1 / math.sqrt(spec.in_features)
        a, b = a0, b0
        if "A" in start.trainable:
            noise = torch.randn(rank, spec.in_features, generator=gen)
            a = a0 + step_a * (shared.A[:rank] + CLIENT_NOISE * noise)
        if "B" in start.trainable:
            noise = torch.randn(spec.out_features, rank, generator=gen)
            step_b = 0.01 * (shared.B[:, :rank] + CLIENT_NOISE * noise)
            basis = start.b_basis.get(spec.name)
            # B trained inside a fixed span moves its core by the step's projection
            b = b0 + (step_b if basis is None else basis.T @ step_b)
        out[spec.name] = LoraPair(a.contiguous(), b.contiguous())
    return out


@dataclass
class SyntheticServer:
    """The server's side of a run on a model shape: no model to merge into or to score."""

    cfg: RunConfig
    method: Method
    setup: Setup
    privacy: PrivacyPlan | None = None

    def merge_into_base(self, merge: Mapping[str, Factored]) -> None:
        return None

    def score(self, update: Mapping[str, Factored]) -> Scores:
        return {}


@dataclass
class SyntheticTransport:
    """Clients as calls of the method's hooks with :func:`trained_adapter` as training.

    A client trains in rounds ``1..train_rounds`` when dispatched to (afterwards it only
    applies broadcasts). ``sent`` and ``uploaded`` keep every broadcast and upload, by round,
    for whoever measures them.
    """

    server: SyntheticServer
    train_rounds: int
    sent: dict[int, list[Transfer]] = field(default_factory=dict)
    uploaded: dict[int, list[Transfer]] = field(default_factory=dict)
    name: str = "synthetic"
    min_uploads: int = 1
    held: dict[int, Held] = field(default_factory=dict)

    def notes(self) -> dict[str, Any]:
        return {}

    def exchange(
        self, t: int, dispatches: Sequence[Dispatch], rs: RunState
    ) -> dict[int, ClientOutcome]:
        method, setup, cfg = self.server.method, self.server.setup, self.server.cfg
        self.sent[t] = [d.broadcast for d in dispatches]
        self.uploaded[t] = []
        self.held = {}
        replies: dict[int, ClientOutcome] = {}
        for d in dispatches:
            client = setup.client(d.cid)
            trains = d.train and t <= self.train_rounds
            synthetic = (
                (lambda s, c=client: trained_adapter(s, setup, c, setup.seed + t))
                if trains
                else None
            )
            turn = Turn(client, t, rs.views[d.cid], d.payload)
            done = half_round(method, turn, synthetic)
            outcome = ClientOutcome(d.cid, t, start=done.start, sent_bytes=d.broadcast.nbytes)
            if done.upload is not None and cfg.federation.secure:
                words = secure_words(method, setup, cfg, turn, done.start, done.upload)
                self.held[d.cid] = Held(t, words)
                outcome.held, outcome.n_samples = int(words.size), n_samples(d.cid)
            elif done.upload is not None:
                outcome.upload = send(done.upload, cfg)
                outcome.n_samples = n_samples(d.cid)
                outcome.received_bytes = outcome.upload.nbytes
                self.uploaded[t].append(outcome.upload)
            replies[d.cid] = outcome
        return replies

    def stage(self, name: str, requests: Mapping[int, Message]) -> dict[int, Message | str]:
        """A secure round's stage, each client answering from what it holds."""
        return {cid: answer(cid, name, req, self.held[cid]) for cid, req in requests.items()}

    def evaluate(
        self, t: int, update: Mapping[str, Factored], rs: RunState, final: bool
    ) -> dict[int, EvalReply]:
        return {}
