"""``fedlora merge``: aggregate existing PEFT adapter folders offline with a method's own
server step (fedavg, florist, flexlora, flora), and write the result as a PEFT folder."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from fedlora.errors import ConfigError
from fedlora.methods.base import ClientSpec, Factored, LayerSpec, LoraPair, Setup, Upload
from fedlora.methods.common import lora_payload
from fedlora.methods.registry import build
from fedlora.ops.factored import truncated_factors
from fedlora.train.peft_io import PeftAdapter, read_adapter, write_adapter

MERGEABLE = ("fedavg", "florist", "flexlora", "flora")


def parse_weights(text: str | None, count: int) -> list[float]:
    """Comma-separated non-negative weights, normalised to sum 1 (uniform if ``text`` is None)."""
    if text is None:
        return [1.0 / count] * count
    try:
        values = [float(w) for w in text.split(",")]
    except ValueError:
        raise ConfigError(f"--weights {text!r} must be comma-separated numbers") from None
    if len(values) != count:
        raise ConfigError(f"--weights has {len(values)} values for {count} adapters")
    if any(v < 0 for v in values) or sum(values) <= 0:
        raise ConfigError(f"--weights {text!r} must be non-negative with a positive sum")
    total = sum(values)
    return [v / total for v in values]


def uniform_shape(ad: PeftAdapter) -> PeftAdapter:
    """The same adapter with one rank and alpha on every layer: layers are zero-padded to the
    largest rank and each layer's scaling is folded into B (alpha = rank, scaling 1), so every
    product ``s·B·A`` is unchanged. Adapters that already have one shape are returned as is."""
    if len(set(ad.rank.values())) == 1 and len(set(ad.scaling.values())) == 1:
        return ad
    top = max(ad.rank.values())
    lora = {}
    for name, pair in ad.lora.items():
        a = torch.zeros(top, pair.A.shape[1], dtype=pair.A.dtype)
        b = torch.zeros(pair.B.shape[0], top, dtype=pair.B.dtype)
        r = pair.A.shape[0]
        a[:r] = pair.A
        b[:, :r] = ad.scaling[name] * pair.B
        lora[name] = LoraPair(a, b)
    names = list(ad.lora)
    return PeftAdapter(
        ad.path,
        lora,
        dict.fromkeys(names, 1.0),
        dict.fromkeys(names, top),
        dict.fromkeys(names, float(top)),
        ad.target_modules,
        ad.base_model,
    )


def setup_from_adapters(adapters: Sequence[PeftAdapter]) -> Setup:
    """A Setup whose clients are the adapters; refuses mismatched layers or shapes."""
    first = adapters[0]
    layers = []
    for name, pair in first.lora.items():
        layers.append(LayerSpec(name, int(pair.A.shape[1]), int(pair.B.shape[0])))
    clients = []
    for k, ad in enumerate(adapters):
        if set(ad.lora) != set(first.lora):
            extra = sorted(set(ad.lora) ^ set(first.lora))
            raise ConfigError(
                f"{ad.path} adapts different layers than {first.path} "
                f"(e.g. {extra[0]}): target modules differ"
            )
        for spec in layers:
            pair = ad.lora[spec.name]
            if (pair.A.shape[1], pair.B.shape[0]) != (spec.in_features, spec.out_features):
                raise ConfigError(
                    f"{ad.path}: layer {spec.name} is {tuple(pair.B.shape[:1])}x"
                    f"{tuple(pair.A.shape[1:])}, unlike {first.path}"
                )
        ranks, alphas = set(ad.rank.values()), set(ad.alpha.values())
        if len(ranks) != 1 or len(alphas) != 1:
            raise ConfigError(
                f"{ad.path} has per-layer ranks or alphas ({sorted(ranks)}, "
                f"{sorted(alphas)}); merge needs one rank and alpha per adapter"
            )
        clients.append(ClientSpec(cid=k, rank=ranks.pop(), alpha=alphas.pop()))
    return Setup(layers=tuple(layers), clients=tuple(clients), seed=0, weighting="samples")


def merge_adapters(
    adapters: Sequence[PeftAdapter],
    method_name: str,
    weights: Sequence[float],
    *,
    threshold: float | None = None,
    rank: int | None = None,
) -> tuple[dict[str, Factored], dict[str, int]]:
    """Run ``method_name``'s server step on the adapters; return the global update per
    layer (scaling folded in) and the rank kept per layer."""
    if method_name not in MERGEABLE:
        raise ConfigError(f"merge supports {', '.join(MERGEABLE)}; got {method_name!r}")
    if threshold is not None and method_name != "florist":
        raise ConfigError("--threshold applies to florist only")
    options = {"tau": threshold} if threshold is not None else {}
    method = build(method_name, options, setup=setup_from_adapters(adapters))
    uploads = [
        Upload(cid=k, n_samples=w, payload=lora_payload(ad.lora))  # type: ignore[arg-type]
        for k, (ad, w) in enumerate(zip(adapters, weights, strict=True))
    ]
    state = method.aggregate(method.init_server(), uploads)
    update = method.global_delta(state)
    if rank is not None:
        if rank < 1:
            raise ConfigError(f"--rank must be at least 1, got {rank}")
        update = {n: truncated_factors(left, right, rank) for n, (left, right) in update.items()}
    return update, {n: int(left.shape[1]) for n, (left, _) in update.items()}


def merge_main(args: argparse.Namespace) -> int:
    """Entry point of ``fedlora merge`` (arguments parsed by the CLI)."""
    adapters = [uniform_shape(read_adapter(p)) for p in args.adapters]
    weights = parse_weights(args.weights, len(adapters))
    update, ranks = merge_adapters(
        adapters, args.method, weights, threshold=args.threshold, rank=args.rank
    )
    targets = sorted({t for ad in adapters for t in ad.target_modules})
    out = write_adapter(args.out, update, base_model=adapters[0].base_model, target_modules=targets)
    report = {
        "method": args.method,
        "threshold": args.threshold,
        "rank": args.rank,
        "weights": weights,
        "adapters": [str(a) for a in args.adapters],
        "ranks": ranks,
    }
    (Path(out) / "merge_report.json").write_text(json.dumps(report, indent=2) + "\n")
    width = max(len(n) for n in ranks)
    for name, r in ranks.items():
        print(f"{name:<{width}}  rank {r}")
    print(
        f"merged {len(adapters)} adapters with {args.method} -> {out} "
        f"(ranks: min {min(ranks.values())}, max {max(ranks.values())})"
    )
    return 0
