"""A global adapter that server and clients keep in sync by exchanging sparse deltas.

Shared by FedSRD / FedSRD-e, Fed-DARE and RoLoRA. The protocol:

- Round 0 (``state.round == 0``): the server sends the initial global adapter in full, as
  ``common.initial_payload`` describes a fresh PEFT init: each ``layer.A`` as its seed and init
  rule (the client rebuilds it), each ``layer.B = 0`` as an empty sparse entry. A method may
  also send a full adapter later (FedSRD's ``decompose = "dense"``): any payload carrying
  ``layer.A`` replaces the view.
- Later rounds: the server sends only the delta it applied in its last aggregation,
  ``layer.dA`` and/or ``layer.dB`` (sparse). Server and client both apply a delta with
  :func:`add_delta` to identical tensors, so their copies stay bit-identical.
- The client remembers the synced global in ``ClientStart.view`` as ``layer.A``,
  ``layer.B`` and a 0-d ``round`` counter (local only, never on the wire). A delta arriving
  at a client without a view is refused: such a client missed the full broadcast.

Server state tensors: ``layer.A``, ``layer.B`` (the global adapter) and, after round 0, the
dense delta applied in the last round (``layer.dA`` / ``layer.dB``), from which the next
broadcast is rebuilt. ``state.round`` equals the round of every client's view once it has
applied the state's broadcast.

A skipped round (too few valid uploads) still sent its broadcast, which every client
applied: :func:`skip_round` advances the state to the clients' round with no delta pending,
so the next broadcast is empty instead of the same delta a second time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from fedlora.errors import ConfigError, PayloadError
from fedlora.methods.base import (
    CHANGE,
    ClientSpec,
    EntrySpec,
    Factored,
    Lora,
    LoraPair,
    Payload,
    Schema,
    ServerState,
    Setup,
    Tensor,
    Upload,
    aggregation_weights,
)
from fedlora.methods.common import ConfigT, MethodBase, dense, fresh_lora, initial_payload, key
from fedlora.ops.seeded_init import SeededInit
from fedlora.ops.sparse import Sparse

ROUND = "round"
"""View entry holding the number of broadcasts the client has applied minus one."""

DeltaCheck = Callable[[str, str, Sparse | Tensor | SeededInit, int], None]
"""``check(layer, part, delta, round)``: raise if a received delta is not the expected one."""


def require_homogeneous(setup: Setup, method: str) -> None:
    """Refuse federations whose clients differ in rank or alpha (one shared global adapter)."""
    if not setup.homogeneous:
        shapes = sorted({(c.rank, c.alpha) for c in setup.clients})
        raise ConfigError(
            f"{method} keeps one global adapter that every client shares, so all clients "
            f"need the same LoRA rank and alpha; got (rank, alpha) pairs {shapes}"
        )


def initial_state(setup: Setup, meta: dict[str, Any] | None = None) -> ServerState:
    """Round 0: the fresh global adapter (PEFT's init from the run seed, ``B = 0``)."""
    tensors: dict[str, Tensor] = {}
    for layer, pair in fresh_lora(setup, setup.max_rank, setup.seed).items():
        tensors[key(layer, "A")] = pair.A
        tensors[key(layer, "B")] = pair.B
    return ServerState(round=0, tensors=tensors, meta=dict(meta or {}))


def global_lora(state: ServerState, setup: Setup) -> Lora:
    """The global adapter held in ``state``."""
    return {
        s.name: LoraPair(state.tensors[key(s.name, "A")], state.tensors[key(s.name, "B")])
        for s in setup.layers
    }


def global_scaled(state: ServerState, setup: Setup) -> dict[str, Factored]:
    """``(s·B, A)`` per layer with the clients' common scaling ``s``."""
    scaling = setup.clients[0].scaling
    return {name: (scaling * p.B, p.A) for name, p in global_lora(state, setup).items()}


def skip_round(state: ServerState) -> ServerState:
    """The state after a skipped round whose broadcast every client applied: the same global
    adapter, one round on, no delta pending (the next broadcast sends nothing)."""
    kept = {name: t for name, t in state.tensors.items() if name.rpartition(".")[2] in ("A", "B")}
    return ServerState(round=state.round + 1, tensors=kept, meta=dict(state.meta))


def delta_broadcast(state: ServerState, setup: Setup) -> Payload:
    """The deltas the server applied in its last aggregation, sparse on their nonzeros
    (``layer.dA`` / ``layer.dB``; a factor the round left alone is not sent)."""
    out: Payload = {}
    for s in setup.layers:
        for part in ("dA", "dB"):
            applied = state.tensors.get(key(s.name, part))
            if applied is not None:
                out[key(s.name, part)] = Sparse.from_mask(applied, applied != 0)
    return out


def mean_delta_step(
    state: ServerState, uploads: Sequence[Upload], setup: Setup, parts: str = "AB"
) -> ServerState:
    """Add the weighted mean of the uploaded deltas of ``parts`` to the global adapter
    (uploads summed in client-id order) and keep what was applied for the next broadcast.
    The server applies the sparse tensor it will send, so clients reproduce the same bits."""
    ordered = sorted(uploads, key=lambda u: u.cid)
    weights = aggregation_weights(ordered, setup.weighting)
    tensors: dict[str, Tensor] = {}
    for s in setup.layers:
        for part in ("A", "B"):
            prev = state.tensors[key(s.name, part)]
            if part not in parts:
                tensors[key(s.name, part)] = prev.clone()
                continue
            mean = torch.zeros_like(prev)
            for p, u in zip(weights, ordered, strict=True):
                mean = mean + p * upload_delta(u.payload, s.name, part, prev)
            sent = Sparse.from_mask(mean, mean != 0)
            tensors[key(s.name, part)] = add_delta(prev, sent)
            tensors[key(s.name, "d" + part)] = sent.to_dense()
    return ServerState(round=state.round + 1, tensors=tensors)


def add_delta(x: Tensor, delta: Sparse | Tensor | SeededInit | None) -> Tensor:
    """``x + delta`` as both sides compute it (a new tensor; ``None`` means no change)."""
    if delta is None:
        return x.clone()
    d = dense(delta)
    if tuple(d.shape) != tuple(x.shape):
        raise PayloadError(f"delta of shape {tuple(d.shape)} does not fit {tuple(x.shape)}")
    return x + d.to(x.dtype)


def is_full(payload: Payload, setup: Setup) -> bool:
    """Whether ``payload`` is a full adapter (as in round 0) rather than a delta."""
    return key(setup.layers[0].name, "A") in payload


def apply_broadcast(
    view: Mapping[str, Tensor] | None,
    payload: Payload,
    setup: Setup,
    check: DeltaCheck | None = None,
) -> dict[str, Tensor]:
    """The client's new view after receiving ``payload``.

    ``check`` is called on every received delta with the round it brings the view to.
    """
    if is_full(payload, setup):
        out = {
            key(s.name, part): dense(payload[key(s.name, part)]).clone()
            for s in setup.layers
            for part in ("A", "B")
        }
        previous = -1 if view is None or ROUND not in view else int(view[ROUND])
        out[ROUND] = torch.tensor(previous + 1, dtype=torch.int64)
        return out
    if view is None or ROUND not in view:
        raise PayloadError(
            "received a delta broadcast without a synchronised global adapter: this client "
            "missed an earlier broadcast (every client must receive every broadcast)"
        )
    round_ = int(view[ROUND]) + 1
    out = {}
    for s in setup.layers:
        for part in ("A", "B"):
            delta = payload.get(key(s.name, "d" + part))
            if delta is not None and check is not None:
                check(s.name, part, delta, round_)
            out[key(s.name, part)] = add_delta(view[key(s.name, part)], delta)
    out[ROUND] = torch.tensor(round_, dtype=torch.int64)
    return out


def lora_from_view(view: Mapping[str, Tensor], setup: Setup) -> Lora:
    """Fresh copies of the synced global adapter (the client's starting point)."""
    return {
        s.name: LoraPair(view[key(s.name, "A")].clone(), view[key(s.name, "B")].clone())
        for s in setup.layers
    }


def view_round(view: Mapping[str, Tensor]) -> int:
    """The round of the view (0 after the full broadcast)."""
    return int(view[ROUND])


def delta_schema(setup: Setup, rank: int) -> Schema:
    """The ``layer.dA`` (r×n) and ``layer.dB`` (m×r) upload entries: changes, which may
    travel sparse."""
    out: Schema = {}
    for s in setup.layers:
        out[key(s.name, "dA")] = EntrySpec((rank, s.in_features), CHANGE)
        out[key(s.name, "dB")] = EntrySpec((s.out_features, rank), CHANGE)
    return out


def upload_entry(payload: Payload, layer: str, part: str, like: Tensor) -> Tensor | Sparse:
    """A client's uploaded delta of ``part`` as sent (dense, or sparse with its values in
    ``like``'s dtype), refused unless it is shaped like ``like``."""
    name = key(layer, "d" + part)
    if name not in payload:
        raise PayloadError(f"upload lacks {name}")
    entry = payload[name]
    if isinstance(entry, Sparse):
        if tuple(entry.shape) != tuple(like.shape):
            raise PayloadError(
                f"{name} has shape {tuple(entry.shape)}, expected {tuple(like.shape)}"
            )
        if entry.values.dtype == like.dtype:
            return entry
        return Sparse(entry.shape, entry.indices, entry.values.to(like.dtype))
    return upload_delta(payload, layer, part, like)


def upload_delta(payload: Payload, layer: str, part: str, like: Tensor) -> Tensor:
    """A client's uploaded delta of ``part`` as a dense tensor shaped and typed like ``like``."""
    name = key(layer, "d" + part)
    if name not in payload:
        raise PayloadError(f"upload lacks {name}")
    d = dense(payload[name])
    if tuple(d.shape) != tuple(like.shape):
        raise PayloadError(f"{name} has shape {tuple(d.shape)}, expected {tuple(like.shape)}")
    return d.to(like.dtype)


class SharedAdapter(MethodBase[ConfigT]):
    """Hooks of a method whose clients all train one global adapter the server keeps: one
    rank and alpha for all, PEFT's init from the run seed at round 0, global update
    ``s·B·A``."""

    name: str

    def validate(self) -> None:
        require_homogeneous(self.setup, self.name)

    def init_server(self) -> ServerState:
        return initial_state(self.setup)

    def global_delta(self, state: ServerState) -> dict[str, Factored]:
        return global_scaled(state, self.setup)


class DeltaSynced(SharedAdapter[ConfigT]):
    """A :class:`SharedAdapter` kept in sync on the clients by the deltas the server applied
    (the protocol of this module): the first broadcast is the initial adapter, later ones
    the last aggregation's deltas, and a skipped round leaves nothing pending."""

    def broadcast(self, state: ServerState, client: ClientSpec) -> Payload:
        if state.round == 0:
            return initial_payload(self.setup, self.setup.max_rank, self.setup.seed)
        return delta_broadcast(state, self.setup)

    def skip_round(self, state: ServerState) -> ServerState:
        return skip_round(state)
