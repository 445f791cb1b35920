"""Client-level differential privacy (DP-FedAvg): the mechanism and the run's plan.

The mechanism, per round: every sampled client clips the change it uploads (its upload minus
what it would have uploaded untrained, in the method's own representation: factors, deltas,
sparse values) to L2 norm ``C`` over the whole upload; the server clips again (so a client
that did not cannot widen the sensitivity), sums the changes, adds Gaussian noise of standard
deviation ``σ·C`` to every coordinate, and divides by a denominator that does not depend on
the data (the expected number of participants: ``q·N`` under Poisson sampling, the fixed
count otherwise). The method's server step then runs on that one noisy mean, as on one upload
of uniform weight: everything after it, the broadcast's sparsification included, is
post-processing. ε is accounted in :mod:`fedlora.runtime.accounting` (replace-one adjacency).

**The noise.** Each round's noise comes from a fresh 256-bit key drawn from the operating
system's cryptographic source (``secrets``), expanded by the ChaCha20 stream cipher into
uniforms of 53 bits, turned into normals by Box–Muller in float64; each coordinate's noise is
the sum of four such normals times ``σC/2`` (Opacus's ``secure_mode`` recipe, after Holohan
and Braghin, against floating-point attacks on a single sample). Nothing about the noise is
sent to a node. A fixed ``privacy.noise_seed`` derives the keys from it instead, and is only
accepted in a run that declares itself not private (``privacy.not_private``): its ε is then
void, in every record and on the console.
"""

from __future__ import annotations

import hashlib
import logging
import math
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedlora.config import RunConfig
from fedlora.errors import ConfigError
from fedlora.methods.base import Method, Payload, Upload
from fedlora.methods.common import dense
from fedlora.runtime import accounting
from fedlora.runtime.accounting import Release
from fedlora.runtime.guard import change_norms, scale_changes

log = logging.getLogger(__name__)

VOID = (
    "privacy.not_private = true: this run declares itself not private (its noise and its "
    "sample of clients may be seeded, and then undone by anyone who knows the seeds); it has no ε"
)
CHUNK = 1 << 20
"""Noise coordinates drawn per keystream chunk (bounds the transient memory to ~64 MiB)."""


def default_delta(clients: int) -> float:
    """``1/N`` rounded down to a power of ten."""
    return 10.0 ** math.floor(math.log10(1.0 / clients))


def round_size(cfg: RunConfig) -> int:
    """How many clients fixed-size sampling draws each round (``clients_per_round`` of N)."""
    n, want = cfg.data.clients, cfg.federation.clients_per_round
    return min(n, max(1, round(want * n)) if want <= 1 else int(want))


@dataclass(frozen=True)
class Plan:
    """What a DP run does, fixed at its start."""

    clip_norm: float
    noise_multiplier: float
    sampling: str
    """``fixed`` or ``poisson`` (:mod:`fedlora.runtime.accounting`)."""
    sample_rate: float
    """``m/N`` under fixed-size sampling, ``q`` under Poisson sampling."""
    denominator: float
    """The data-independent count the noisy sum is divided by."""
    delta: float
    private: bool = True
    """False for a run declared not private (``privacy.not_private``): no ε is reported."""
    noise_seed: int | None = None
    """Only in a run declared not private: its noise keys derive from this seed."""

    def release(self, round_: int) -> Release:
        """The release one aggregated round makes."""
        return Release(round_, self.sampling, self.sample_rate, self.noise_multiplier)

    def spent(self, releases: Sequence[Release]) -> dict[str, Any]:
        """The record's ``privacy`` entry after ``releases``."""
        out: dict[str, Any] = {
            "delta": self.delta,
            "noise_multiplier": self.noise_multiplier,
            "sampling": self.sampling,
            "sample_rate": self.sample_rate,
            "clip_norm": self.clip_norm,
            "releases": len(releases),
            "adjacency": accounting.ADJACENCY,
        }
        if not self.private:
            return {**out, "epsilon": None, "epsilon_rdp": None, "void": VOID}
        return {
            **out,
            "epsilon": accounting.epsilon(releases, self.delta),
            "epsilon_rdp": accounting.epsilon_rdp(releases, self.delta),
        }


def plan(cfg: RunConfig, method: Method) -> Plan | None:
    """The run's DP plan (None without DP); refuses, naming why, a method whose server step
    is not a weighted sum of uploads, and a budget the planned rounds would exceed."""
    p, fed = cfg.privacy, cfg.federation
    if not p.on:
        return None
    refusal = method.dp_refusal
    if refusal is not None:
        raise ConfigError(f"privacy.mode = central does not compose with {method.name}: {refusal}")
    n = cfg.data.clients
    if fed.sampling == "poisson":
        q, denominator = fed.sample_rate, fed.sample_rate * n
    else:
        count = round_size(cfg)
        q, denominator = count / n, float(count)
    delta = p.delta if p.delta is not None else default_delta(n)
    sigma = p.noise_multiplier
    if sigma is None:
        assert p.target_epsilon is not None
        sigma = accounting.calibrate(p.target_epsilon, fed.sampling, q, fed.rounds, delta)
    elif p.target_epsilon is not None:
        eps = accounting.epsilon(accounting.planned(fed.sampling, q, sigma, fed.rounds), delta)
        if eps > p.target_epsilon:
            allowed = accounting.rounds_allowed(fed.sampling, q, sigma, delta, p.target_epsilon)
            raise ConfigError(
                f"privacy: ε after {fed.rounds} rounds would be {eps:.3g} > target "
                f"{p.target_epsilon:g} (δ = {delta:g}, σ = {sigma:g}, {fed.sampling} sampling "
                f"at rate {q:g}); the budget allows {allowed} rounds"
            )
    if p.not_private:
        log.warning("%s", VOID)
    return Plan(
        p.clip_norm, sigma, fed.sampling, q, denominator, delta, not p.not_private, p.noise_seed
    )


def clip_upload(payload: Payload, reference: Mapping[str, torch.Tensor], bound: float) -> Payload:
    """``payload`` with its whole change from ``reference`` scaled into L2 norm ``bound``."""
    layers = change_norms(payload, reference)
    norm = math.sqrt(sum(x * x for x in layers.values()))
    if norm <= bound:
        return payload
    return scale_changes(payload, reference, dict.fromkeys(layers, bound / norm))


def noise_key(plan: Plan, round_: int) -> bytes:
    """The round's 256-bit noise key: from the OS's cryptographic source, or (a run declared
    not private) derived from ``noise_seed``."""
    if plan.noise_seed is None:
        return secrets.token_bytes(32)
    return hashlib.sha256(f"fedlora-dp-noise\x1f{plan.noise_seed}\x1f{round_}".encode()).digest()


def gaussian(key: bytes, count: int) -> np.ndarray:
    """``count`` standard normals (float64) from the ChaCha20 keystream of ``key``: each the
    sum of four Box–Muller normals, halved."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

    stream = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()
    out = np.empty(count, dtype=np.float64)
    for begin in range(0, count, CHUNK):
        size = min(CHUNK, count - begin)
        # four normals per coordinate from four uniforms (two Box–Muller pairs)
        raw = np.frombuffer(stream.update(bytes(32 * size)), dtype="<u8").reshape(2, 2, size)
        u = ((raw >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53  # in (0, 1)
        radius = np.sqrt(-2.0 * np.log(u[:, 0]))
        angle = 2.0 * math.pi * u[:, 1]
        out[begin : begin + size] = (radius * (np.cos(angle) + np.sin(angle))).sum(axis=0) / 2
    return out


def noisy_mean(
    uploads: Sequence[Upload],
    references: Mapping[int, Mapping[str, torch.Tensor]],
    schema: Mapping[str, tuple[int, ...]],
    reference: Mapping[str, torch.Tensor],
    plan: Plan,
    round_: int,
) -> Payload:
    """The one upload the method aggregates under DP: ``reference`` plus the noisy mean of
    the clipped changes (``schema``: every entry's shape; the noise covers all of it)."""
    total = {name: torch.zeros(shape, dtype=torch.float64) for name, shape in schema.items()}
    for up in uploads:
        mine = references.get(up.cid, {})
        clipped = clip_upload(up.payload, mine, plan.clip_norm)
        for name, entry in clipped.items():
            base = mine.get(name)
            change = dense(entry).double() - (base.double() if base is not None else 0.0)
            total[name] += change.reshape(total[name].shape)
    std = plan.noise_multiplier * plan.clip_norm
    names = sorted(total)
    draws = gaussian(noise_key(plan, round_), sum(total[n].numel() for n in names))
    out: Payload = {}
    offset = 0
    for name in names:
        summed = total[name]
        noise = torch.from_numpy(draws[offset : offset + summed.numel()]).reshape(summed.shape)
        offset += summed.numel()
        mean = (summed + noise * std) / plan.denominator
        base = reference.get(name)
        out[name] = (mean + (base.double() if base is not None else 0.0)).to(torch.float32)
    return out
