"""Shared fixtures for method tests: a tiny federation and a one-round simulator.

Stable API (other test modules import it):

- ``tiny_setup(ranks=(4, 4, 4), d=16, layers=2, ...) -> Setup``
- ``random_lora(setup, rank, gen, dtype=float32, scale=1.0) -> Lora``
- ``perturb(start, gen, scale=0.1) -> Lora``: fake local training of the trainable factors
- ``dense(factored) -> Tensor``: float64 ``L @ R`` (tests only; shapes are tiny)
- ``run_round(method, state, setup, ...) -> RoundResult``: broadcast → base_merge →
  client_start → training → upload → aggregate, recording every intermediate object and
  accumulating the (shared) merged base offsets as dense float64 matrices.
- ``global_dense(method, state, setup, base) -> {layer: Tensor}``: the dense global update
  on top of the original W0 (merged base offsets + ``global_delta``).
- ``make_uploads(setup, gen, dtype=float32, n_samples=None) -> list[Upload]``: random trained
  adapters of every client as A/B payloads; ``reference_aggregate(uploads, setup)``: their
  dense float64 ``Σ p_k s_k B_k A_k`` computed independently of the package.
- ``snapshot(obj)`` / ``assert_same(a, b)``: deep copies of nested tensors for "inputs are not
  mutated" checks; ``MaxNumel``: a dispatch mode recording the largest tensor any op creates.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from fedlora.methods.base import (
    ClientSpec,
    ClientStart,
    Factored,
    LayerSpec,
    Lora,
    LoraPair,
    Method,
    Payload,
    ServerState,
    Setup,
    Tensor,
    Upload,
)
from fedlora.methods.half_round import Turn, half_round
from fedlora.ops.seeded_init import SeededInit
from fedlora.ops.sparse import Sparse

Trainer = Callable[[ClientStart, torch.Generator], Lora]


def tiny_setup(
    ranks: Sequence[int] = (4, 4, 4),
    d: int = 16,
    layers: int = 2,
    *,
    out_features: int | None = None,
    alpha_ratio: float = 2.0,
    seed: int = 0,
    weighting: str = "samples",
) -> Setup:
    """``len(ranks)`` clients (cids 0..K-1, alpha = alpha_ratio·rank) on ``layers`` layers of
    shape (out_features or d) × d; layer i is named ``l{i}``."""
    m = out_features if out_features is not None else d
    return Setup(
        layers=tuple(LayerSpec(f"l{i}", d, m) for i in range(layers)),
        clients=tuple(ClientSpec(k, r, alpha_ratio * r) for k, r in enumerate(ranks)),
        seed=seed,
        weighting=weighting,
    )


def random_lora(
    setup: Setup,
    rank: int,
    gen: torch.Generator,
    dtype: torch.dtype = torch.float32,
    scale: float = 1.0,
) -> Lora:
    """A dense random adapter of ``rank`` on every layer (both factors nonzero)."""
    return {
        s.name: LoraPair(
            scale * torch.randn(rank, s.in_features, generator=gen, dtype=dtype),
            scale * torch.randn(s.out_features, rank, generator=gen, dtype=dtype),
        )
        for s in setup.layers
    }


def perturb(start: ClientStart, gen: torch.Generator, scale: float = 0.1) -> Lora:
    """Fake local training: add Gaussian noise to the trainable factors only."""
    out: Lora = {}
    for layer, pair in start.adapter.items():
        a, b = pair.A.clone(), pair.B.clone()
        if "A" in start.trainable:
            a = a + scale * torch.randn(a.shape, generator=gen, dtype=a.dtype)
        if "B" in start.trainable:
            b = b + scale * torch.randn(b.shape, generator=gen, dtype=b.dtype)
        out[layer] = LoraPair(a, b)
    return out


def dense(factored: Factored) -> Tensor:
    """``L @ R`` in float64 (tests only)."""
    left, right = factored
    return left.double() @ right.double()


@dataclass
class RoundResult:
    """Everything one simulated round produced."""

    state: ServerState
    payloads: dict[int, Payload]
    merges: dict[int, dict[str, Factored]]
    starts: dict[int, ClientStart]
    trained: dict[int, Lora]
    uploads: list[Upload]
    views: dict[int, dict[str, Tensor]]
    base: dict[str, Tensor] = field(default_factory=dict)
    own: dict[int, dict[str, Tensor]] = field(default_factory=dict)
    """What each client kept for itself (``Method.own_part``)."""


def run_round(
    method: Method,
    state: ServerState,
    setup: Setup,
    *,
    cids: Sequence[int] | None = None,
    n_samples: Mapping[int, int] | None = None,
    gen: torch.Generator | None = None,
    train: Trainer = perturb,
    views: Mapping[int, Mapping[str, Tensor]] | None = None,
    base: Mapping[str, Tensor] | None = None,
    upload_order: Sequence[int] | None = None,
    transport: Callable[[Payload], Payload] | None = None,
    own: Mapping[int, Mapping[str, Tensor]] | None = None,
) -> RoundResult:
    """One round as a runtime drives it (see ``methods/base.py``).

    ``base`` is the dense float64 offset already merged into W0 per layer; the result's
    ``base`` adds this round's ``base_merge`` (which must be identical for every client).
    ``upload_order`` permutes the uploads handed to ``aggregate`` (default: ``cids``);
    ``transport`` turns each broadcast into what the client receives (e.g. ``to_float64``);
    ``own`` is what each client kept from its last round (``Method.own_part``).
    """
    cids = list(cids) if cids is not None else [c.cid for c in setup.clients]
    gen = gen if gen is not None else torch.Generator().manual_seed(1234)
    n_samples = n_samples or {cid: 10 + 7 * cid for cid in cids}
    views = views or {}
    new_base = {
        s.name: (
            base[s.name].clone()
            if base
            else torch.zeros(s.out_features, s.in_features, dtype=torch.float64)
        )
        for s in setup.layers
    }
    payloads, merges, starts, trained, uploads_by_cid, new_views = {}, {}, {}, {}, {}, {}
    kept: dict[int, dict[str, Tensor]] = {}
    for cid in cids:
        client = setup.client(cid)
        payloads[cid] = method.broadcast(state, client)
        if transport is not None:
            payloads[cid] = transport(payloads[cid])
        merges[cid] = method.base_merge(payloads[cid])
    _check_same_merge(merges)
    for layer, factored in merges[cids[0]].items():
        new_base[layer] = new_base[layer] + dense(factored)
    for cid in cids:
        client = setup.client(cid)
        turn = Turn(client, state.round + 1, views.get(cid), payloads[cid], (own or {}).get(cid))
        done = half_round(method, turn, lambda start: train(start, gen))
        assert done.trained is not None and done.upload is not None
        starts[cid], trained[cid] = done.start, done.trained
        kept[cid] = done.own
        uploads_by_cid[cid] = Upload(cid, n_samples[cid], done.upload)
        new_views[cid] = dict(done.start.view)
    order = list(upload_order) if upload_order is not None else cids
    uploads = [uploads_by_cid[c] for c in order]
    new_state = method.aggregate(state, uploads)
    return RoundResult(
        new_state, payloads, merges, starts, trained, uploads, new_views, new_base, kept
    )


def to_float64(payload: Payload) -> Payload:
    """A payload with every entry rebuilt and cast to float64 (sparse entries stay sparse):
    the transport of float64 reference tests, where a seeded float32 init would lose digits."""
    out: Payload = {}
    for name, entry in payload.items():
        if isinstance(entry, Sparse):
            out[name] = dataclasses.replace(entry, values=entry.values.double())
        elif isinstance(entry, SeededInit):
            out[name] = entry.to_dense().double()
        else:
            out[name] = entry.double()
    return out


def _check_same_merge(merges: Mapping[int, dict[str, Factored]]) -> None:
    first = next(iter(merges.values()))
    for cid, merge in merges.items():
        assert merge.keys() == first.keys(), f"client {cid} merges other layers"
        for layer in merge:
            assert torch.equal(dense(merge[layer]), dense(first[layer])), (
                f"client {cid} merges a different update into {layer}"
            )


def global_dense(
    method: Method, state: ServerState, setup: Setup, base: Mapping[str, Tensor] | None = None
) -> dict[str, Tensor]:
    """Dense float64 global update on top of the original W0: merged offsets + global_delta."""
    delta = method.global_delta(state)
    out = {}
    for s in setup.layers:
        d = dense(delta[s.name])
        out[s.name] = d + base[s.name] if base else d
    return out


def trained_sum(
    result: RoundResult, setup: Setup, weights: Mapping[int, float] | None = None
) -> dict[str, Tensor]:
    """Dense float64 ``Σ p_k s_k B_k A_k`` of the trained adapters (p from n_samples)."""
    if weights is None:
        total = sum(u.n_samples for u in result.uploads)
        weights = {u.cid: u.n_samples / total for u in result.uploads}
    out = {}
    for s in setup.layers:
        acc = torch.zeros(s.out_features, s.in_features, dtype=torch.float64)
        for cid, p in weights.items():
            pair = result.trained[cid][s.name]
            acc += p * setup.client(cid).scaling * (pair.B.double() @ pair.A.double())
        out[s.name] = acc
    return out


def entry_kind(entry: Tensor | Sparse | SeededInit) -> str:
    """The wire kind a payload entry travels as (before the codec's dense fallback)."""
    if isinstance(entry, Sparse):
        return "sparse"
    return "seeded" if isinstance(entry, SeededInit) else "dense"


def conforms(payload: Payload, schema: Mapping[str, Any]) -> bool:
    """Whether ``payload`` holds exactly the schema's names, each of its shape and a kind
    the schema allows."""
    return payload.keys() == schema.keys() and all(
        tuple(entry.shape) == schema[name].shape and entry_kind(entry) in schema[name].kinds
        for name, entry in payload.items()
    )


def rel_err(x: Tensor, ref: Tensor) -> float:
    """``||x - ref||_F / ||ref||_F`` in float64."""
    return float(torch.linalg.norm(x.double() - ref.double()) / torch.linalg.norm(ref.double()))


def make_uploads(
    setup: Setup,
    gen: torch.Generator,
    dtype: torch.dtype = torch.float32,
    n_samples: Mapping[int, int] | None = None,
) -> list[Upload]:
    """One random trained adapter per client (its own rank) as an A/B upload."""
    out = []
    for c in setup.clients:
        adapter = random_lora(setup, c.rank, gen, dtype)
        payload: Payload = {}
        for layer, pair in adapter.items():
            payload[f"{layer}.A"] = pair.A
            payload[f"{layer}.B"] = pair.B
        n = n_samples[c.cid] if n_samples else 5 + 3 * c.cid
        out.append(Upload(c.cid, n, payload))
    return out


def upload_weights(uploads: Sequence[Upload], weighting: str = "samples") -> dict[int, float]:
    """Aggregation weights computed independently of the package."""
    if weighting == "uniform":
        return {u.cid: 1.0 / len(uploads) for u in uploads}
    total = sum(u.n_samples for u in uploads)
    return {u.cid: u.n_samples / total for u in uploads}


def reference_aggregate(uploads: Sequence[Upload], setup: Setup) -> dict[str, Tensor]:
    """Dense float64 ``Σ p_k s_k B_k A_k`` per layer."""
    weights = upload_weights(uploads, setup.weighting)
    out = {}
    for s in setup.layers:
        acc = torch.zeros(s.out_features, s.in_features, dtype=torch.float64)
        for u in uploads:
            a = u.payload[f"{s.name}.A"].double()
            b = u.payload[f"{s.name}.B"].double()
            acc += weights[u.cid] * setup.client(u.cid).scaling * (b @ a)
        out[s.name] = acc
    return out


def snapshot(obj: Any) -> Any:
    """A deep copy (tensors cloned) for later comparison with :func:`assert_same`."""
    return copy.deepcopy(obj)


def assert_same(a: Any, b: Any) -> None:
    """Nested dicts / sequences / dataclasses of tensors are bit-identical."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, Mapping):
        assert isinstance(b, Mapping) and set(a.keys()) == set(b.keys())
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, list | tuple):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    elif dataclasses.is_dataclass(a) and not isinstance(a, type):
        assert type(a) is type(b)
        for f in dataclasses.fields(a):
            assert_same(getattr(a, f.name), getattr(b, f.name))
    else:
        assert a == b


class MaxNumel(TorchDispatchMode):
    """Records the largest number of elements of any tensor an op returns while active."""

    def __init__(self) -> None:
        super().__init__()
        self.max_numel = 0
        self.op = ""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.numel() > self.max_numel:
                self.max_numel, self.op = t.numel(), str(func)
        return out
