"""RoLoRA: alternate rounds train and aggregate only A or only B, so each average is exact.

Paper: S. Chen, Y. Guo, Y. Ju, H. Dalal, A. Khisti, "Robust Federated Finetuning of LLMs via
Alternating Optimization of LoRA", NeurIPS 2025, arXiv 2502.01755. All clients share one
global adapter ``(A, B)``. In odd rounds every client freezes ``A`` and trains ``B``; the
server averages the ``B_k``: ``s·(Σ p_k B_k)·A = Σ p_k s B_k A`` exactly, because ``A`` is
the same for all. In even rounds the roles swap. A's initial value is PEFT's random init and
``B^0 = 0``, so the first round trains ``B`` (training ``A`` against ``B = 0`` would give it
no gradient).

How fedlora carries it (:mod:`.synced`): server and clients keep the global adapter in sync;
each client uploads its change of the factor it trained (``layer.dB`` or ``layer.dA``; the
frozen factor's is an empty entry of a few bytes), the server adds the weighted mean change
to the global adapter and broadcasts that same change (only that factor's), which every
client adds. The first broadcast is the initial adapter as seeds and the init rule. The
round, and so the factor, is the runtime's: a skipped round still counts.

Departures and choices:

- Uploads and broadcasts are changes of the trained factor, not the factor itself: the same
  numbers for the same cost, and both sides stay bit-identical.
- Aggregation weights follow ``setup.weighting``; uploads are summed in client-id order.
- All clients share one rank and alpha (one global adapter); mixed ranks are refused. The
  paper's DP experiments are supported through ``privacy.mode = "central"``: the server step
  is a weighted sum of the uploads.

The project's reference for this method's maths and invariants: docs/methods.md
("RoLoRA").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fedlora.methods import synced
from fedlora.methods.base import (
    ClientSpec,
    ClientStart,
    Lora,
    Payload,
    Schema,
    ServerState,
    Tensor,
    Upload,
)
from fedlora.methods.common import empty_sparse, key
from fedlora.methods.registry import register


@dataclass(frozen=True)
class RoLoraConfig:
    """RoLoRA has no options of its own."""


def trained_factor(round_: int) -> str:
    """The factor clients train in round ``round_`` (1-based): odd ``B``, even ``A``."""
    if round_ < 1:
        raise ValueError(f"rounds count from 1, got {round_}")
    return "B" if round_ % 2 == 1 else "A"


@register("rolora", RoLoraConfig)
class RoLora(synced.DeltaSynced[RoLoraConfig]):
    """RoLoRA (see module docstring)."""

    name = "rolora"
    dp_refusal = None  # the server step is a weighted sum of the uploads
    secure_refusal = None  # the same mean, of the masked changes

    def client_start(
        self,
        view: Mapping[str, Tensor] | None,
        payload: Payload,
        client: ClientSpec,
        seed: int,
    ) -> ClientStart:
        new_view = synced.apply_broadcast(view, payload, self.setup)
        factor = trained_factor(synced.view_round(new_view) + 1)
        return ClientStart(
            adapter=synced.lora_from_view(new_view, self.setup),
            trainable=frozenset({factor}),
            view=new_view,
        )

    def upload_schema(self, client: ClientSpec) -> Schema:
        return synced.delta_schema(self.setup, client.rank)

    def upload(self, start: ClientStart, trained: Lora, client: ClientSpec, seed: int) -> Payload:
        (factor,) = start.trainable
        out: Payload = {}
        for s in self.setup.layers:
            for part in ("A", "B"):
                old = start.view[key(s.name, part)]
                if part == factor:
                    new = getattr(trained[s.name], part).detach()
                    out[key(s.name, "d" + part)] = (new - old).clone()
                else:
                    out[key(s.name, "d" + part)] = empty_sparse(tuple(old.shape))
        return out

    def aggregate(self, state: ServerState, uploads: Sequence[Upload]) -> ServerState:
        return synced.mean_delta_step(state, uploads, self.setup, trained_factor(state.round + 1))
