"""The secure-sum form of a method: what it needs when the server may see only a sum.

Under secure aggregation (:mod:`fedlora.runtime.secagg`) the server learns the sum of the
round's client vectors and nothing of any one of them. A method fits when its server step
needs only the mean of per-client terms, each computed on its client:

- ``secure_shapes``: the terms' names and shapes (every client alike);
- ``secure_terms``: one client's terms, from its start and its (decoded) upload;
- ``aggregate_mean``: the new state from the mean of the terms over the round's clients.

A method whose server step is the weighted mean of its uploads (FedAvg, FFA-LoRA, …) opts
in by declaring ``secure_refusal = None``; :class:`MeanOfUploads` is then its form: each
term is the client's change (its upload minus what it would have uploaded untrained, the
same origin central DP clips against) and the server aggregates the mean change, added
back to that origin, as one upload. A method with a form of its own (FedSRD-e's projected
terms) implements the three hooks itself. Any other names why in ``secure_refusal``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import torch

from fedlora.errors import ConfigError
from fedlora.methods.base import (
    ClientSpec,
    ClientStart,
    Method,
    Payload,
    ServerState,
    Tensor,
    Upload,
)
from fedlora.methods.common import dense

Shapes = dict[str, tuple[int, ...]]


@runtime_checkable
class SecureForm(Protocol):
    """A server step computed from the mean of per-client terms (see the module doc)."""

    def secure_shapes(self, client: ClientSpec, round_: int) -> Shapes:
        """Name and shape of every term a client sends in ``round_``."""

    def secure_terms(
        self, start: ClientStart, upload: Payload, client: ClientSpec, round_: int
    ) -> dict[str, Tensor]:
        """One client's terms (float64), from its start and the upload it would send."""

    def aggregate_mean(
        self,
        state: ServerState,
        mean: Mapping[str, Tensor],
        reference: Mapping[str, Tensor],
        round_: int,
    ) -> ServerState:
        """The new state from the terms' mean over the round's clients (``reference``: what
        any client would upload untrained, as the server mirrors it)."""


class MeanOfUploads:
    """The form of a method whose server step is the weighted mean of its uploads: terms
    are changes from the untrained upload; the mean change, added back, is one upload."""

    def __init__(self, method: Method) -> None:
        self.method = method

    def secure_shapes(self, client: ClientSpec, round_: int) -> Shapes:
        schema = self.method.upload_schema(client)
        return {name: entry.shape for name, entry in schema.items()}

    def secure_terms(
        self, start: ClientStart, upload: Payload, client: ClientSpec, round_: int
    ) -> dict[str, Tensor]:
        reference = self.method.upload_reference(start, client)
        out: dict[str, Tensor] = {}
        for name, shape in self.secure_shapes(client, round_).items():
            value = (
                dense(upload[name]).double()
                if name in upload
                else torch.zeros(shape, dtype=torch.float64)
            )
            base = reference.get(name)
            out[name] = value.reshape(shape) - (base.double() if base is not None else 0.0)
        return out

    def aggregate_mean(
        self,
        state: ServerState,
        mean: Mapping[str, Tensor],
        reference: Mapping[str, Tensor],
        round_: int,
    ) -> ServerState:
        payload: Payload = {}
        for name, value in mean.items():
            base = reference.get(name)
            whole = value.double() + (base.double() if base is not None else 0.0)
            payload[name] = whole.to(torch.float32)
        one = Upload(self.method.setup.clients[0].cid, 1, payload, round_)
        return self.method.aggregate(state, [one])


def secure_form(method: Method) -> SecureForm:
    """``method``'s secure-sum form; ``ConfigError`` naming why when it has none."""
    refusal = getattr(method, "secure_refusal", "it declares no secure-sum form")
    if refusal is not None:
        raise ConfigError(
            f"federation.secure_aggregation does not compose with {method.name}: {refusal}"
        )
    return method if isinstance(method, SecureForm) else MeanOfUploads(method)
