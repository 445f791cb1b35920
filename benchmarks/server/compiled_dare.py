"""Experiment (#39, option c): FedSRD-e's downlink DARE as one kernel compiled by torch's own
compiler (inductor, C++ on the CPU), against the code on main, side by side in one run.

``python -m benchmarks.server.compiled_dare`` builds the seeded SplitMix64 mask, DARE's
rescale and fill (and, in the kernel-alone part, the add to B) as one fused loop, checks it
bit for bit against ``fedlora.ops.masks.dare_dense_`` on every B factor of Llama-3.2-3B at
r = 64, then times, interleaved, (1) the kernel alone over those 196 factors and (2) the
whole FedSRD-e B-round step with ``dare_dense_`` replaced by the compiled kernel. It needs a
C++ compiler at run time; the first call compiles (seconds; cached on disk afterwards).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

import fedlora.shapes
from benchmarks.common.measure import load_average
from benchmarks.common.synthetic import synthetic_round
from benchmarks.server.run import _built
from fedlora.methods import fedsrd
from fedlora.ops.masks import dare_dense_

GOLDEN, M1, M2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def signed(x: int) -> int:
    """``x`` mod 2^64 as a signed 64-bit integer (torch has no full uint64 arithmetic)."""
    x &= (1 << 64) - 1
    return x - (1 << 64) if x >= 1 << 63 else x


def shifted(z: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 bits."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def fused(delta: torch.Tensor, seed: torch.Tensor, limit: int, keep: torch.Tensor) -> torch.Tensor:
    """DARE of ``delta`` in place, the mask of :mod:`fedlora.ops.prng` computed in the loop."""
    i = torch.arange(1, delta.numel() + 1, dtype=torch.int64).view(delta.shape)
    z = seed + i * signed(GOLDEN)
    z = (z ^ shifted(z, 30)) * signed(M1)
    z = (z ^ shifted(z, 27)) * signed(M2)
    z = z ^ shifted(z, 31)
    return delta.copy_(torch.where(shifted(z, 11) < limit, delta / keep, 0.0))


def fused_added(
    delta: torch.Tensor, b: torch.Tensor, seed: torch.Tensor, limit: int, keep: torch.Tensor
) -> torch.Tensor:
    """The same, also returning ``b + delta`` from the same loop."""
    return b + fused(delta, seed, limit, keep)


COMPILED = torch.compile(fused, dynamic=False)
COMPILED_ADDED = torch.compile(fused_added, dynamic=False)
CURRENT_DARE = dare_dense_


def use_dare(dare: Callable[[torch.Tensor, float, int], torch.Tensor]) -> None:
    """Make FedSRD's step call ``dare`` for its downlink DARE."""
    vars(fedsrd)["dare_dense_"] = dare


def arguments(drop: float, seed: int) -> tuple[torch.Tensor, int, torch.Tensor]:
    keep = 1.0 - drop
    return torch.tensor(signed(seed)), int(keep * (1 << 53)), torch.tensor(keep)


def compiled_dare_(delta: torch.Tensor, drop: float, seed: int) -> torch.Tensor:
    return COMPILED(delta, *arguments(drop, seed)) if drop else delta


def kernel_alone(factors: list[torch.Tensor], repeats: int) -> None:
    bs = [torch.randn_like(f) for f in factors]
    began = time.perf_counter()
    for k, (f, b) in enumerate(zip(factors, bs, strict=True)):
        want = CURRENT_DARE(f.clone(), 0.8, k)
        got = f.clone()
        added = COMPILED_ADDED(got, b, *arguments(0.8, k))
        assert torch.equal(want.view(torch.int32), got.view(torch.int32)), f"factor {k} differs"
        assert torch.equal((b + want).view(torch.int32), added.view(torch.int32)), k
    values, seconds = sum(map(torch.numel, factors)), time.perf_counter() - began
    print(f"kernel: bit for bit on {len(factors)} factors ({values:,} values) in {seconds:.1f} s,")
    print("  compiling the kernel for each shape or reading it from inductor's cache")

    def current(fs: list[torch.Tensor]) -> None:
        for k, (f, b) in enumerate(zip(fs, bs, strict=True)):
            b + CURRENT_DARE(f, 0.8, k)

    def compiled(fs: list[torch.Tensor]) -> None:
        for k, (f, b) in enumerate(zip(fs, bs, strict=True)):
            COMPILED_ADDED(f, b, *arguments(0.8, k))

    def copy(fs: list[torch.Tensor]) -> None:
        for f, b in zip(fs, bs, strict=True):
            b + f

    timed(
        "DARE + add to B, all factors",
        {"main": current, "compiled": compiled, "b + f only": copy},
        lambda: [f.clone() for f in factors],
        repeats,
    )


def timed(
    what: str, variants: dict[str, Callable[[Any], None]], fresh: Callable[[], Any], repeats: int
) -> None:
    """Each variant ``repeats`` times, interleaved, on fresh inputs; medians and ratios."""
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            inputs = fresh()
            began = time.perf_counter()
            run(inputs)
            seconds[name].append(time.perf_counter() - began)
    medians = {name: statistics.median(s) for name, s in seconds.items()}
    for name, m in medians.items():
        print(f"{what}: {name} median of {repeats} {m:.3f} s ({m / medians['main']:.2f}x main)")


def whole_step(repeats: int) -> None:
    specs = tuple(fedlora.shapes.layer_specs("llama-3.2-3b", None, None))
    method, _ = _built("fedsrd-e", specs, (64,) * 4, 0)
    inputs = synthetic_round(method, 0)
    use_dare(CURRENT_DARE)
    want = method.aggregate(inputs.state, inputs.uploads)
    use_dare(compiled_dare_)
    got = method.aggregate(inputs.state, inputs.uploads)
    assert want.meta == got.meta and want.tensors.keys() == got.tensors.keys()
    for k, t in want.tensors.items():
        assert torch.equal(t.view(torch.int32), got.tensors[k].view(torch.int32)), k
    print(f"step: {want.meta['updated']}-round states bit for bit ({len(want.tensors)} tensors)")

    def with_dare(
        dare: Callable[[torch.Tensor, float, int], torch.Tensor],
    ) -> Callable[[Any], None]:
        def run(_: None) -> None:
            use_dare(dare)
            method.aggregate(inputs.state, inputs.uploads)

        return run

    variants = {"main": with_dare(CURRENT_DARE), "compiled": with_dare(compiled_dare_)}
    timed("whole FedSRD-e step", variants, lambda: None, repeats)
    use_dare(CURRENT_DARE)


def main() -> None:
    torch.set_num_threads(2)
    print(f"load before {load_average()[0]:.2f}, torch {torch.__version__}, 2 threads")
    specs = fedlora.shapes.layer_specs("llama-3.2-3b", None, None)
    gen = torch.Generator().manual_seed(0)
    factors = [torch.randn(s.out_features, 64, generator=gen) for s in specs]
    began = time.perf_counter()
    kernel_alone(factors, repeats=7)
    whole_step(repeats=7)
    print(f"load after {load_average()[0]:.2f}; {time.perf_counter() - began:.0f} s in all")


if __name__ == "__main__":
    main()
