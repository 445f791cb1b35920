"""Small helpers shared by method modules (no method-specific logic here)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch

from fedlora.methods.base import (
    WHOLE,
    ClientSpec,
    ClientStart,
    EntrySpec,
    Factored,
    Lora,
    LoraPair,
    Payload,
    Schema,
    ServerState,
    Setup,
    Tensor,
)
from fedlora.ops.seeded_init import SeededInit, lora_a_init
from fedlora.ops.seeds import label_seed
from fedlora.ops.sparse import Sparse
from fedlora.ops.stack import fit_rank
from fedlora.validate import one_of

ConfigT = TypeVar("ConfigT")

PAD_RULES = ("fresh", "zeros")
"""How a client's adapter slots that carry nothing (``A`` row and ``B`` column both zero) are
filled: ``fresh`` gives their ``A`` rows a seeded PEFT init (``B`` stays 0, so the product is
unchanged and the slots can train); ``zeros`` leaves them zero, and zero ``A`` with zero ``B``
get zero gradients, so such slots never train again (the FLoRIST release's behaviour)."""


class MethodBase(Generic[ConfigT]):
    """A method built for one federation: ``config`` and ``setup`` bound at build (the
    setup is checked then, :meth:`validate`), and every capability's default
    (``methods/base.py``): it runs every setup, uploads ``layer.A`` / ``layer.B`` whole,
    merges nothing into the base, keeps nothing on the client, adds no loss term, and
    composes with neither central DP nor secure aggregation. A method implements the
    :class:`~fedlora.methods.base.Core` hooks and overrides what it opts into."""

    name: str
    shares_individual_updates = False
    keeps_own_parts = False
    dp_refusal: str | None = "its server step is not a weighted sum of the clients' uploads"
    secure_refusal: str | None = "its server step is not a function of the sum of the uploads"

    def __init__(self, config: ConfigT, setup: Setup) -> None:
        self.config = config
        self.setup = setup
        self.validate()

    def validate(self) -> None:
        return None

    def personalise(
        self, start: ClientStart, own: Mapping[str, Tensor] | None, client: ClientSpec
    ) -> ClientStart:
        return start

    def own_part(self, start: ClientStart, trained: Lora, client: ClientSpec) -> dict[str, Tensor]:
        return {}

    def own_update(
        self, update: Mapping[str, Factored], own: Mapping[str, Tensor] | None, client: ClientSpec
    ) -> dict[str, Factored]:
        return dict(update)

    def base_merge(self, payload: Payload) -> dict[str, Factored]:
        return {}

    def skip_round(self, state: ServerState) -> ServerState:
        """Nothing of the state is merged into base weights, so nothing changes."""
        return state

    def regulariser(self, current: Lora, start: ClientStart) -> Tensor | None:
        return None

    def upload_report(
        self, start: ClientStart, trained: Lora, upload: Payload, client: ClientSpec
    ) -> dict[str, Any]:
        return {}

    def upload_schema(self, client: ClientSpec) -> Schema:
        """The client uploads ``layer.A`` (r×n) and ``layer.B`` (m×r) of every layer."""
        return lora_schema(self.setup, client.rank)

    def upload_reference(self, start: ClientStart, client: ClientSpec) -> dict[str, Tensor]:
        """By the upload's names: an ``A`` / ``B`` entry is a trained factor, whose untrained
        value is the start's; any other entry (``dA``, a delta) is zero untrained."""
        out: dict[str, Tensor] = {}
        for name in self.upload_schema(client):
            layer, _, part = name.rpartition(".")
            if part in ("A", "B"):
                out[name] = getattr(start.adapter[layer], part)
        return out


def lora_schema(setup: Setup, rank: int, parts: str = "AB") -> Schema:
    """The ``layer.A`` / ``layer.B`` entries of a rank-``rank`` adapter upload: whole
    factors, dense."""
    out: Schema = {}
    for spec in setup.layers:
        if "A" in parts:
            out[key(spec.name, "A")] = EntrySpec((rank, spec.in_features), WHOLE)
        if "B" in parts:
            out[key(spec.name, "B")] = EntrySpec((spec.out_features, rank), WHOLE)
    return out


def key(layer: str, part: str) -> str:
    """Payload / state tensor name of ``part`` ("A", "B", ...) of ``layer``."""
    return f"{layer}.{part}"


def dense(value: Tensor | Sparse | SeededInit) -> Tensor:
    """A payload entry as a dense tensor (a seeded init is rebuilt from its seed)."""
    if isinstance(value, Sparse | SeededInit):
        return value.to_dense()
    return value


@dataclass(frozen=True)
class PadConfig:
    """The ``pad`` option (:data:`PAD_RULES`) of every method that pads a client's adapter;
    their configs extend it."""

    pad: str = "fresh"

    def __post_init__(self) -> None:
        one_of("pad", self.pad, PAD_RULES)


def layer_init_seed(seed: int, layer: str) -> int:
    """Seed of the fresh ``A`` of ``layer`` for an adapter seeded with ``seed``."""
    return label_seed(seed, "lora-a", layer)


def init_lora_a(rank: int, in_features: int, seed: int) -> Tensor:
    """PEFT's default A init (kaiming-uniform, a=√5): U(-1/√n, 1/√n), float32, portable."""
    return lora_a_init(seed, rank, in_features)


def fresh_lora(setup: Setup, rank: int, seed: int) -> Lora:
    """A new adapter of ``rank`` on every layer: A random (PEFT init), B = 0.

    Each layer draws from its own portable stream, so the rank-k adapter of a seed is the
    first k slots of its rank-r adapter, and :func:`initial_payload` describes it exactly.
    """
    return {
        spec.name: LoraPair(
            init_lora_a(rank, spec.in_features, layer_init_seed(seed, spec.name)),
            torch.zeros(spec.out_features, rank),
        )
        for spec in setup.layers
    }


def no_update(setup: Setup) -> dict[str, Factored]:
    """A rank-0 factored update of every layer (``(m×0, 0×n)``: nothing to merge)."""
    return {
        s.name: (torch.zeros(s.out_features, 0), torch.zeros(0, s.in_features))
        for s in setup.layers
    }


def empty_sparse(shape: tuple[int, ...]) -> Sparse:
    """The zero tensor of ``shape`` as a sparse entry with no values (a few bytes on the wire)."""
    return Sparse(shape, torch.zeros(0, dtype=torch.int64), torch.zeros(0))


def initial_payload(setup: Setup, rank: int, seed: int) -> Payload:
    """``fresh_lora(setup, rank, seed)`` as it crosses the wire: each ``A`` as its seed and
    init rule (:class:`SeededInit`), each ``B = 0`` as an empty sparse entry."""
    out: Payload = {}
    for spec in setup.layers:
        init = SeededInit((rank, spec.in_features), layer_init_seed(seed, spec.name))
        out[key(spec.name, "A")] = init
        out[key(spec.name, "B")] = empty_sparse((spec.out_features, rank))
    return out


def revive_dead_slots(adapter: Lora, setup: Setup) -> Lora:
    """Give every dead slot (its ``A`` row and ``B`` column both exactly zero) a fresh ``A``
    row: PEFT's init from a stream of the run seed shared by all clients (rule ``fresh`` of
    :data:`PAD_RULES`). ``B @ A`` is unchanged; live slots are untouched."""
    out: Lora = {}
    for layer, (a, b) in adapter.items():
        dead = (a == 0).all(dim=1) & (b == 0).all(dim=0)
        if not bool(dead.any()):
            out[layer] = LoraPair(a.clone(), b.clone())
            continue
        seed = label_seed(setup.seed, "lora-pad", layer)
        fresh = init_lora_a(a.shape[0], a.shape[1], seed).to(a.dtype)
        out[layer] = LoraPair(torch.where(dead.unsqueeze(1), fresh, a), b.clone())
    return out


def apply_pad(adapter: Lora, setup: Setup, pad: str) -> Lora:
    """``adapter`` with its dead slots filled by the pad rule ``pad``."""
    return revive_dead_slots(adapter, setup) if pad == "fresh" else adapter


def lora_payload(adapter: Mapping[str, LoraPair]) -> Payload:
    """An adapter as a dense payload ``{layer.A, layer.B}``."""
    out: Payload = {}
    for layer, pair in adapter.items():
        out[key(layer, "A")] = pair.A.detach().clone()
        out[key(layer, "B")] = pair.B.detach().clone()
    return out


def lora_from_payload(payload: Payload, setup: Setup) -> Lora:
    """Inverse of :func:`lora_payload`."""
    return {
        spec.name: LoraPair(
            dense(payload[key(spec.name, "A")]), dense(payload[key(spec.name, "B")])
        )
        for spec in setup.layers
    }


def pad_rank(pair: LoraPair, rank: int) -> LoraPair:
    """Zero-pad (or truncate) a pair to ``rank``: rows of A, columns of B."""
    a, b = pair
    r = a.shape[0]
    if r == rank:
        return pair
    if r > rank:
        return LoraPair(a[:rank].clone(), b[:, :rank].clone())
    a_pad = torch.zeros(rank, a.shape[1], dtype=a.dtype)
    b_pad = torch.zeros(b.shape[0], rank, dtype=b.dtype)
    a_pad[:r] = a
    b_pad[:, :r] = b
    return LoraPair(a_pad, b_pad)


def lora_at_rank(payload: Payload, setup: Setup, rank: int) -> Lora:
    """A broadcast ``{layer.A, layer.B}`` fitted to a client of ``rank``: its first ``rank``
    directions, or zero-padded when the broadcast has fewer."""
    return {
        spec.name: LoraPair(
            *fit_rank(
                dense(payload[key(spec.name, "A")]), dense(payload[key(spec.name, "B")]), rank
            )
        )
        for spec in setup.layers
    }
