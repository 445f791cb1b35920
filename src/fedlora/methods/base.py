"""The method interface: a core of six hooks, capabilities that opt in, and their types.

A method is built for one federation (``registry.build(name, options, setup=...)``): its
:class:`Setup` is bound then, so no hook takes it. A round, as every runtime drives it::

    payload_k = method.broadcast(state, client_k)                  # server, per client shape
    merge     = method.base_merge(payload_k)                       # every client: W0 += L @ R
    start_k   = method.client_start(view_k, payload_k, client_k, seed)
    mine_k    = method.personalise(start_k, own_k from its last round, client_k)
    trained_k = <local training of mine_k.adapter, only mine_k.trainable factors>
    upload_k  = method.upload(mine_k, trained_k, client_k, seed)
    report_k  = method.upload_report(mine_k, trained_k, upload_k, client_k)  # metrics
    own_k     = method.own_part(mine_k, trained_k, client_k)       # stays on the client
    state     = method.aggregate(state, [Upload(k, n_k, upload_k) ...])
    update    = method.global_delta(state)                          # evaluation, export

:class:`Core` is what every method implements (``init_server``, ``broadcast``,
``client_start``, ``upload``, ``aggregate``, ``global_delta``). The rest are capabilities,
each a small protocol with a default (``common.MethodBase``) that a method overrides to opt
in: :class:`Checks`, :class:`UploadContract`, :class:`BaseMerging`, :class:`PersonalParts`,
:class:`LocalLoss`, :class:`Disclosure`, and the secure-sum form
(:mod:`fedlora.methods.secure`). :class:`Method` is their union, what the runtime drives.

Conventions (docs/methods.md's notation): per adapted layer, ``A`` is r×n, ``B`` is m×r, the
adapter adds ``s·B·A`` with ``s = alpha / r``. A ``Factored`` pair ``(L, R)`` stands for the
m×n matrix ``L @ R`` *with any scaling already folded in*; it is never formed densely.
Every hook is a pure function of its arguments: inputs are never mutated, new objects are
returned. Payloads are what crosses the wire and are encoded by ``fedlora.wire``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, NamedTuple, Protocol

import torch

from fedlora.ops.seeded_init import SeededInit
from fedlora.ops.sparse import Sparse

Tensor = torch.Tensor


class LoraPair(NamedTuple):
    """One layer's LoRA factors: ``A`` (r×n) and ``B`` (m×r)."""

    A: Tensor
    B: Tensor


Lora = dict[str, LoraPair]
"""Adapter of one client: layer name -> (A, B)."""

Factored = tuple[Tensor, Tensor]
"""``(L, R)`` with L (m×q), R (q×n), standing for the scaled update ``L @ R``."""

Payload = dict[str, "Tensor | Sparse | SeededInit"]
"""Named tensors that cross the wire; names are chosen by the method. A ``SeededInit`` entry
travels as its seed and init rule only."""


WHOLE = frozenset({"dense"})
"""Entry kinds of an upload entry that is a whole value (a trained factor): dense only."""
CHANGE = frozenset({"dense", "sparse"})
"""Entry kinds of an upload entry that is a change from zero (a delta): it may travel sparse
(positions, or a seeded mask), or dense when its positions would cost more than they save."""


@dataclass(frozen=True)
class EntrySpec:
    """What the server accepts for one upload entry: its (logical) shape and the wire kinds
    it may travel as (:data:`WHOLE` or :data:`CHANGE`; a seeded init never is an upload)."""

    shape: tuple[int, ...]
    kinds: frozenset[str] = WHOLE


Schema = dict[str, EntrySpec]
"""Name -> :class:`EntrySpec` of every entry one client uploads."""


@dataclass(frozen=True)
class LayerSpec:
    """An adapted linear layer: ``W0`` is ``out_features × in_features`` (m×n)."""

    name: str
    in_features: int
    out_features: int


@dataclass(frozen=True)
class ClientSpec:
    """A client's adapter shape: rank ``r_k`` and ``alpha_k`` (scaling ``alpha_k / r_k``)."""

    cid: int
    rank: int
    alpha: float

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    @property
    def shape(self) -> tuple[int, float]:
        """``(rank, alpha)``: all a broadcast or a new view may depend on (``Method``)."""
        return (self.rank, self.alpha)


@dataclass(frozen=True)
class Setup:
    """Everything about the federation a method may depend on, fixed for the whole run."""

    layers: tuple[LayerSpec, ...]
    clients: tuple[ClientSpec, ...]
    seed: int = 0
    weighting: str = "samples"  # "samples" | "uniform"

    @property
    def homogeneous(self) -> bool:
        return len({(c.rank, c.alpha) for c in self.clients}) <= 1

    @property
    def max_rank(self) -> int:
        return max(c.rank for c in self.clients)

    @property
    def global_alpha(self) -> float:
        """Alpha of the global adapter: that of the highest-rank client."""
        return max(self.clients, key=lambda c: (c.rank, c.alpha)).alpha

    @cached_property
    def _by_cid(self) -> dict[int, ClientSpec]:
        return {c.cid: c for c in self.clients}

    def client(self, cid: int) -> ClientSpec:
        try:
            return self._by_cid[cid]
        except KeyError:
            raise KeyError(f"no client with id {cid}") from None

    def layer(self, name: str) -> LayerSpec:
        for spec in self.layers:
            if spec.name == name:
                return spec
        raise KeyError(f"no adapted layer named {name!r}")


@dataclass(frozen=True)
class Upload:
    """A decoded client upload as the server aggregates it.

    ``round`` is the runtime's round the client trained in (the round of its seed streams,
    ``fedlora.ops.seeds``); ``None`` means ``state.round + 1``. They differ after a round
    that was skipped for too few valid uploads.
    """

    cid: int
    n_samples: int
    payload: Payload
    round: int | None = None


@dataclass(frozen=True)
class ServerState:
    """The server's explicit state; ``tensors`` and ``meta`` must round-trip through JSON +
    safetensors, so checkpoints need no pickle."""

    round: int
    tensors: dict[str, Tensor] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ClientStart:
    """What a client trains from after applying a broadcast.

    ``adapter`` has the client's own rank; only factors named in ``trainable`` ("A", "B")
    receive gradients (a ``B`` with a ``b_basis`` through its core only); ``view`` is what the client must remember until the next broadcast
    (e.g. FedSRD's synchronised global adapter), as plain tensors.
    """

    adapter: Lora
    trainable: frozenset[str] = frozenset({"A", "B"})
    view: dict[str, Tensor] = field(default_factory=dict)
    b_basis: dict[str, Tensor] = field(default_factory=dict)
    """Per layer, a fixed m×q matrix ``P`` when ``B`` trains inside its column space
    (Fed-SB): the adapter's ``B`` entry, and the trained one's, is then the q×r core ``R``,
    and the layer computes with ``B = P·R`` while only ``R`` learns. Empty for plain LoRA."""


class Core(Protocol):
    """The hooks every method implements (see the module docstring for how a round calls
    them). ``setup`` is bound when the method is built (``registry.build``)."""

    name: str
    """The registered method name (a class attribute set by ``@register``)."""
    setup: Setup
    """The federation the method was built for."""

    def init_server(self) -> ServerState:
        """The state before round 1."""

    def broadcast(self, state: ServerState, client: ClientSpec) -> Payload:
        """What the server sends ``client`` at the start of the next round. It depends on the
        client only through its shape (``rank``, ``alpha``): the driver builds one broadcast
        per shape and sends it to every client of that shape."""

    def client_start(
        self, view: Mapping[str, Tensor] | None, payload: Payload, client: ClientSpec, seed: int
    ) -> ClientStart:
        """Turn a broadcast (and the client's remembered view) into its starting adapter.

        The returned ``view`` depends on the client only through its shape (``rank``,
        ``alpha``), never on its ``cid`` or ``seed``: clients that remember the same view and
        receive the same broadcast share one new view (the driver computes it once)."""

    def upload(self, start: ClientStart, trained: Lora, client: ClientSpec, seed: int) -> Payload:
        """What the client sends after training ``start.adapter`` into ``trained``."""

    def aggregate(self, state: ServerState, uploads: Sequence[Upload]) -> ServerState:
        """Fold the round's uploads into a new state (round + 1). Inputs are not mutated."""

    def global_delta(self, state: ServerState) -> dict[str, Factored]:
        """The global model's update on top of the (merged) base weights, per layer,
        scaling folded in: used for evaluation and export."""


class Checks(Protocol):
    """Capability: federations the method cannot run (default: it runs every one)."""

    def validate(self) -> None:
        """Raise ``ConfigError`` if the method cannot run its ``setup``; called at build."""


class UploadContract(Protocol):
    """Capability: what the server accepts of an upload and measures it against (default:
    ``layer.A`` / ``layer.B`` of the client's rank, whole, their start as the origin)."""

    def upload_schema(self, client: ClientSpec) -> Schema:
        """Name, (logical) shape and wire kinds of every tensor ``client`` uploads; the
        server decodes uploads strictly against it (an entry of another name, shape or kind
        drops the client)."""

    def upload_reference(self, start: ClientStart, client: ClientSpec) -> dict[str, Tensor]:
        """What ``client`` would upload from ``start`` had it not trained, per upload entry
        (an absent entry is zero): the origin against which a client's change is measured
        and bounded. Computed on the server from its mirror of the client's start."""

    def upload_report(
        self, start: ClientStart, trained: Lora, upload: Payload, client: ClientSpec
    ) -> dict[str, Any]:
        """JSON-ready figures about this client's upload for the round's metrics (e.g. the
        sparsity ratios FedSRD chose); ``{}`` by default. Computed on the client, after
        ``upload`` built ``upload`` (read it rather than building it again)."""


class BaseMerging(Protocol):
    """Capability: broadcasts that clients add into their frozen base weights (default:
    none)."""

    def base_merge(self, payload: Payload) -> dict[str, Factored]:
        """Scaled updates a client adds into its frozen base weights on receipt of
        ``payload``; the same for every client of a round."""

    def skip_round(self, state: ServerState) -> ServerState:
        """The state a skipped round leaves (too few valid uploads to aggregate): its
        broadcast went out, so whatever clients merged into their base weights from it is no
        longer pending and must not be merged again; nothing else changes."""


class PersonalParts(Protocol):
    """Capability: a part of each client's model that never leaves it (FedSA-LoRA's ``B``;
    default: none)."""

    keeps_own_parts: bool
    """Whether the runtime stores a part on each client's side between rounds
    (:mod:`fedlora.runtime.own_parts`) and scores each client's own model."""

    def personalise(
        self, start: ClientStart, own: Mapping[str, Tensor] | None, client: ClientSpec
    ) -> ClientStart:
        """The start the client trains from: ``start`` (what the broadcast gives every
        client alike) combined with its own part (``None`` before it first trained).
        ``start`` itself stays what the server mirrors and bounds uploads against."""

    def own_part(self, start: ClientStart, trained: Lora, client: ClientSpec) -> dict[str, Tensor]:
        """What the client keeps after training and never sends."""

    def own_update(
        self, update: Mapping[str, Factored], own: Mapping[str, Tensor] | None, client: ClientSpec
    ) -> dict[str, Factored]:
        """The client's own model, per layer, given the global ``update``
        (:meth:`Core.global_delta`) and its own part."""


class LocalLoss(Protocol):
    """Capability: an extra term in every client's local loss (FedProx; default: none)."""

    def regulariser(self, current: Lora, start: ClientStart) -> Tensor | None:
        """The term for the adapter being trained, or ``None``."""


class Disclosure(Protocol):
    """Capability: what composes with the method and what its broadcasts reveal (default:
    neither central DP nor secure aggregation; no client's own update broadcast)."""

    dp_refusal: str | None
    """Why central differential privacy does not compose (its server step is not a
    weighted sum of the uploads it receives), or None when it does."""
    secure_refusal: str | None
    """Why secure aggregation does not compose, or None when the server step is a mean of
    per-client terms (:mod:`fedlora.methods.secure`)."""
    shares_individual_updates: bool
    """Whether a broadcast carries clients' own updates rather than only their aggregate
    (FLoRA's stack): any participant could then read another's update."""


class Method(
    Core, Checks, UploadContract, BaseMerging, PersonalParts, LocalLoss, Disclosure, Protocol
):
    """What the runtime drives: the core and every capability. ``common.MethodBase`` gives
    each capability its default, so a method implements :class:`Core` and overrides only
    the capabilities it opts into."""


CAPABILITIES = (Checks, UploadContract, BaseMerging, PersonalParts, LocalLoss, Disclosure)
"""The capability protocols, in the order docs and CONTRIBUTING list them."""


def aggregation_weights(uploads: Sequence[Upload], weighting: str) -> list[float]:
    """``p_k = n_k / Σ n_j`` ("samples") or ``1 / K`` ("uniform"), in upload order."""
    if not uploads:
        raise ValueError("no uploads to weight")
    if weighting == "uniform":
        return [1.0 / len(uploads)] * len(uploads)
    if weighting != "samples":
        raise ValueError(f"unknown weighting {weighting!r}")
    total = sum(u.n_samples for u in uploads)
    if total <= 0:
        raise ValueError("uploads report no training samples")
    return [u.n_samples / total for u in uploads]
