"""Fed-DARE: clients upload DARE-sparsified LoRA deltas; the server averages them.

DARE (Drop And REscale) is from L. Yu, B. Yu, H. Yu, F. Huang, Y. Li, "Language Models are
Super Mario: Absorbing Abilities from Homologous Models as a Free Lunch", ICML 2024: drop each
element of a fine-tuning delta with probability ``p`` and scale the survivors by
``1/(1 − p)``, an unbiased random sparsification. The FedSRD paper
(arXiv 2510.04601, WWW 2026) uses it as a federated baseline, "Fed-DARE", which is what this
module implements:

- Client: deltas ``ΔA = A_k − A``, ``ΔB = B_k − B`` against the global adapter it started
  from (kept in ``ClientStart.view``), each DARE'd with ``p_up`` (default 0.9).
- Server: ``Δ̄ = Σ p_k DARE(Δ_k)`` per factor, added to the global adapter.
- Broadcast: the averaged sparse delta (its positions are the union of the clients' kept
  positions); clients add it to their view, so both sides stay bit-identical (:mod:`.synced`).

Choices and departures:

- Mask positions come from the portable seeded generator with a seed derived from the seed
  the runtime gives the client, the round, the client id, the layer and the factor; the
  seed travels with each :class:`Sparse` so the wire may send it instead of the positions.
- Aggregation weights follow ``setup.weighting``; uploads are summed in client-id order.
- The broadcast leaves out positions whose averaged value is exactly 0 (they change
  nothing); after a skipped round it is empty (:func:`.synced.skip_round`). The first broadcast is the initial adapter sent as seeds and the init rule
  (``common.initial_payload``: no values of A, ``B^0 = 0`` as an empty sparse tensor).
- Heterogeneous ranks (or alphas) are refused: there is one shared global adapter.

The project's reference for this method's maths and invariants: docs/methods.md
("Fed-DARE").
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
from fedlora.methods.common import key
from fedlora.methods.registry import register
from fedlora.ops.masks import dare
from fedlora.ops.seeds import label_seed
from fedlora.validate import number


@dataclass(frozen=True)
class FedDareConfig:
    """``p_up``: probability of dropping each element of an uploaded delta."""

    p_up: float = 0.9

    def __post_init__(self) -> None:
        number("p_up", self.p_up, at_least=0.0, below=1.0)


def upload_seed(client_seed: int, round_: int, cid: int, layer: str, part: str) -> int:
    """Seed of a client's DARE mask for one factor of one layer in one round."""
    return label_seed(client_seed, "fed_dare-uplink", round_, cid, layer, part)


@register("fed_dare", FedDareConfig)
class FedDare(synced.DeltaSynced[FedDareConfig]):
    """Fed-DARE (see module docstring)."""

    dp_refusal = None  # the server step is a weighted sum of the uploads
    secure_refusal = (
        "its uploads are sparse on each client's own random support: masked, every one would "
        "travel dense, losing the bytes the method exists to save"
    )

    name = "fed_dare"

    def client_start(
        self,
        view: Mapping[str, Tensor] | None,
        payload: Payload,
        client: ClientSpec,
        seed: int,
    ) -> ClientStart:
        new_view = synced.apply_broadcast(view, payload, self.setup)
        return ClientStart(adapter=synced.lora_from_view(new_view, self.setup), view=new_view)

    def upload_schema(self, client: ClientSpec) -> Schema:
        return synced.delta_schema(self.setup, client.rank)

    def upload(self, start: ClientStart, trained: Lora, client: ClientSpec, seed: int) -> Payload:
        round_ = synced.view_round(start.view) + 1
        out: Payload = {}
        for s in self.setup.layers:
            new = {"A": trained[s.name].A.detach(), "B": trained[s.name].B.detach()}
            for part in ("A", "B"):
                delta = new[part] - start.view[key(s.name, part)]
                mask_seed = upload_seed(seed, round_, client.cid, s.name, part)
                out[key(s.name, "d" + part)] = dare(delta, self.config.p_up, mask_seed)
        return out

    def aggregate(self, state: ServerState, uploads: Sequence[Upload]) -> ServerState:
        return synced.mean_delta_step(state, uploads, self.setup)
