"""The uplink sparsifier: FedSRD's Sparsify stage as a plug-in for other methods.

Paper: Yan et al., FedSRD (arXiv 2510.04601, WWW 2026), Table 7 ("plug-in"): the
importance-aware sparsification of FedSRD applied to the uploads of methods that send LoRA
factors (FedAvg, FedProx, FFA-LoRA, FLoRA, FlexLoRA, FLoRIST). It wraps any method whose
upload is ``layer.A`` / ``layer.B`` factors; the method itself is unchanged.

Client side, :meth:`SparseUplink.upload`: the wrapped method's upload ``U(trained)`` is
compared with what it would upload had the client not trained, ``U(start)``; the difference
(per tensor: ``ΔA``, ``ΔB``) is sparsified with :func:`fedlora.ops.sparsify.select` at the
FedSRD ratio (importance scores ``I_A`` with the new ``B``, ``I_B`` with the old ``A``) and
sent under the wrapped method's names and shapes, as sparse entries.

Server side, :meth:`SparseUplink.aggregate`: the server rebuilds each client's start from its
own state, as the client did (``broadcast`` → the wire's value rounding → ``client_start``
with the client's seed stream :data:`fedlora.ops.seeds.Stream.CLIENT_START`), adds the sparse
difference back to ``U(start)`` and hands the wrapped method ordinary uploads. With nothing
pruned (``fixed_rho = 0``) this reproduces the wrapped method exactly.

Departures and choices:

- Which methods qualify is decided by the upload schema (only ``.A`` / ``.B`` entries), not by
  a list of names; FedSRD and Fed-DARE already send sparse deltas and are refused.
- The ratio is computed from the importance scores for every sparsifier (``importance``,
  ``magnitude``, ``random``), as in the FedSRD ablations (:mod:`fedlora.ops.sparsify`).
- The wrapped method must be able to rebuild a client's start without the client's view
  (true of every method that qualifies: their starts follow from the broadcast and a seed).

The project's reference for this method's maths and invariants: docs/methods.md
("The uplink plug-in").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any, cast

import torch

from fedlora.errors import ConfigError
from fedlora.methods.base import (
    CHANGE,
    ClientSpec,
    ClientStart,
    EntrySpec,
    Lora,
    Method,
    Payload,
    Schema,
    ServerState,
    Tensor,
    Upload,
)
from fedlora.methods.common import dense
from fedlora.methods.half_round import Turn, half_round, untrained_upload
from fedlora.ops.ratio import RatioRule
from fedlora.ops.seeded_init import SeededInit
from fedlora.ops.seeds import label_seed
from fedlora.ops.sparse import Sparse
from fedlora.ops.sparsify import delta_scores, ratio_summary, select

WIRE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def as_received(payload: Payload, value_dtype: str) -> Payload:
    """``payload`` with its values rounded as the wire's ``value_dtype`` rounds them."""
    dtype = WIRE_DTYPES[value_dtype]

    def rounded(t: Tensor) -> Tensor:
        return t.to(dtype).to(torch.float32)

    out: Payload = {}
    for name, entry in payload.items():
        if isinstance(entry, Sparse):
            out[name] = replace(entry, values=rounded(entry.values))
        elif isinstance(entry, SeededInit):
            out[name] = entry
        else:
            out[name] = rounded(entry)
    return out


def _split(name: str) -> tuple[str, str]:
    layer, _, part = name.rpartition(".")
    return layer, part


class SparseUplink:
    """A method whose uploads are sparsified differences (see module docstring)."""

    def __init__(
        self,
        inner: Method,
        *,
        sparsifier: str,
        rule: RatioRule,
        wire_dtype: str = "float32",
    ) -> None:
        self.inner = inner
        self.sparsifier = sparsifier
        self.rule = rule
        self.wire_dtype = wire_dtype
        self.validate()

    secure_refusal = (
        "the plug-in's uploads are sparse on each client's own support: masked, every one "
        "would travel dense, losing the bytes the plug-in exists to save"
    )

    def __getattr__(self, hook: str) -> Any:
        # Every hook the plug-in does not change is the wrapped method's own (delegation:
        # a hook added to the protocol later needs no line here).
        if hook == "inner":  # not set yet (copying, unpickling): no recursion
            raise AttributeError(hook)
        return getattr(self.inner, hook)

    def validate(self) -> None:
        """Refuse a method whose upload is not LoRA factors (the wrapped method checked
        its setup when it was built)."""
        for client in self.setup.clients:
            names = self.inner.upload_schema(client)
            odd = sorted(n for n in names if _split(n)[1] not in ("A", "B"))
            if odd:
                raise ConfigError(
                    f"uplink.sparsify: method {self.name!r} does not upload LoRA factors "
                    f"(it sends {odd[0]!r}); the uplink sparsifier wraps methods that send "
                    "A and B (fedavg, fedprox, ffa, flora, flexlora, florist)"
                )

    def upload_schema(self, client: ClientSpec) -> Schema:
        """The wrapped method's entries, as changes: they may travel sparse."""
        inner = self.inner.upload_schema(client)
        return {name: EntrySpec(entry.shape, CHANGE) for name, entry in inner.items()}

    def upload_reference(self, start: ClientStart, client: ClientSpec) -> dict[str, Tensor]:
        """Zero: the plug-in uploads the difference from what the client would send untrained."""
        return {}

    # -- the plug-in -----------------------------------------------------------------------

    def _scores(self, name: str, delta: Tensor, start: ClientStart, trained: Lora) -> Tensor:
        layer, part = _split(name)
        return delta_scores(part, delta, start.adapter[layer].A, trained[layer].B.detach())

    def _differences(
        self, start: ClientStart, trained: Lora, client: ClientSpec, seed: int
    ) -> dict[str, Tensor]:
        full = self.inner.upload(start, trained, client, seed)
        ref = self.inner.upload(start, start.adapter, client, seed)
        return {name: dense(full[name]) - dense(ref[name]) for name in full}

    def upload(self, start: ClientStart, trained: Lora, client: ClientSpec, seed: int) -> Payload:
        out: Payload = {}
        for name, delta in self._differences(start, trained, client, seed).items():
            scores = self._scores(name, delta, start, trained)
            rho = self.rule.ratio(scores)
            mask_seed = label_seed(seed, "uplink", name)
            out[name] = select(delta, scores, rho, self.sparsifier, self.rule.rescale, mask_seed)
        return out

    def upload_report(
        self, start: ClientStart, trained: Lora, upload: Payload, client: ClientSpec
    ) -> dict[str, Any]:
        # The ratios only: from the factors' own differences (what every method that
        # qualifies uploads), without building the upload a second time.
        rhos: dict[str, list[float]] = {"A": [], "B": []}
        for name in self.inner.upload_schema(client):
            layer, part = _split(name)
            new, old = getattr(trained[layer], part), getattr(start.adapter[layer], part)
            delta = (new - old).detach()
            rhos[part].append(self.rule.ratio(self._scores(name, delta, start, trained)))
        report = dict(self.inner.upload_report(start, trained, upload, client))
        for part, values in rhos.items():
            if values:
                report[f"uplink_rho_{part}"] = ratio_summary(values)
        return report

    def rebuilt_start(self, state: ServerState, client: ClientSpec, round_: int) -> ClientStart:
        """What ``client`` trained from in runtime round ``round_``, rebuilt on the server."""
        received = as_received(self.inner.broadcast(state, client), self.wire_dtype)
        return half_round(self.inner, Turn(client, round_, None, received)).start

    def aggregate(self, state: ServerState, uploads: Sequence[Upload]) -> ServerState:
        rebuilt = []
        for up in uploads:
            client = self.setup.client(up.cid)
            round_ = up.round if up.round is not None else state.round + 1
            start = self.rebuilt_start(state, client, round_)
            ref = untrained_upload(self.inner, client, start, round_)
            payload: Payload = {
                name: dense(ref[name]) + dense(up.payload[name]).to(dense(ref[name]).dtype)
                for name in ref
            }
            rebuilt.append(Upload(up.cid, up.n_samples, payload, up.round))
        return self.inner.aggregate(state, rebuilt)


def with_uplink(
    method: Method,
    *,
    sparsify: str,
    rule: RatioRule,
    wire_dtype: str = "float32",
) -> Method:
    """``method`` itself for ``sparsify = "none"``, else wrapped in :class:`SparseUplink`
    (which is the wrapped method for every hook it does not change)."""
    if sparsify == "none":
        return method
    return cast(Method, SparseUplink(method, sparsifier=sparsify, rule=rule, wire_dtype=wire_dtype))
