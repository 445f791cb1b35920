"""Small helpers shared by method modules (no method-specific logic here)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from fedlora.methods.base import (
    ClientSpec,
    ClientStart,
    Factored,
    Lora,
    LoraPair,
    Payload,
    Setup,
    Tensor,
)
from fedlora.ops.sparse import Sparse
from fedlora.ops.stack import fit_rank


class DefaultHooks:
    """Defaults for the optional hooks: accept every setup, no base merge, no extra loss."""

    def validate(self, setup: Setup) -> None:
        return None

    def base_merge(self, payload: Payload, setup: Setup) -> dict[str, Factored]:
        return {}

    def regulariser(self, current: Lora, start: ClientStart) -> Tensor | None:
        return None

    def upload_schema(self, setup: Setup, client: ClientSpec) -> dict[str, tuple[int, ...]]:
        """Default: the client uploads ``layer.A`` (r×n) and ``layer.B`` (m×r) of every layer."""
        return lora_schema(setup, client.rank)


def lora_schema(setup: Setup, rank: int, parts: str = "AB") -> dict[str, tuple[int, ...]]:
    """Shapes of ``layer.A`` / ``layer.B`` entries of a rank-``rank`` adapter payload."""
    out: dict[str, tuple[int, ...]] = {}
    for spec in setup.layers:
        if "A" in parts:
            out[key(spec.name, "A")] = (rank, spec.in_features)
        if "B" in parts:
            out[key(spec.name, "B")] = (spec.out_features, rank)
    return out


def key(layer: str, part: str) -> str:
    """Payload / state tensor name of ``part`` ("A", "B", ...) of ``layer``."""
    return f"{layer}.{part}"


def dense(value: Tensor | Sparse) -> Tensor:
    """A payload entry as a dense tensor."""
    return value.to_dense() if isinstance(value, Sparse) else value


def init_lora_a(rank: int, in_features: int, generator: torch.Generator) -> Tensor:
    """PEFT's default A init (kaiming-uniform, a=√5): U(-1/√n, 1/√n), float32."""
    bound = 1.0 / math.sqrt(in_features)
    return (torch.rand(rank, in_features, generator=generator) * 2 - 1) * bound


def fresh_lora(setup: Setup, rank: int, seed: int) -> Lora:
    """A new adapter of ``rank`` on every layer: A random (PEFT init), B = 0."""
    gen = torch.Generator().manual_seed(seed)
    return {
        spec.name: LoraPair(
            init_lora_a(rank, spec.in_features, gen), torch.zeros(spec.out_features, rank)
        )
        for spec in setup.layers
    }


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
