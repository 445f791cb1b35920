"""Client-level differential privacy (DP-FedAvg), with ε accounted by Opacus.

The mechanism, per round: every sampled client clips the change it uploads (its upload minus
what it would have uploaded untrained, in the method's own representation: factors, deltas,
sparse values) to L2 norm ``C`` over the whole upload; the server clips again (so a client
that did not cannot widen the sensitivity), sums the changes, adds Gaussian noise of standard
deviation ``σ·C`` to every coordinate, and divides by a denominator that does not depend on
the data (the expected number of participants: ``q·N`` under Poisson sampling, the fixed
count otherwise). The method's server step then runs on that one noisy mean, as on one upload
of uniform weight: everything after it, the broadcast's sparsification included, is
post-processing.

Accounting: the Rényi-DP accountant of Opacus (``opacus.accountants.analysis.rdp``) for the
sampled Gaussian mechanism, composed over the rounds. Poisson sampling (``federation.sampling
= "poisson"``) gets its amplification at rate ``q``; fixed-size sampling is accounted at
``q = 1``, no amplification, which bounds it from above. Adjacent datasets differ in one
client's whole data (client-level DP).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from fedlora.config import RunConfig
from fedlora.errors import ConfigError
from fedlora.methods.base import Method, Payload, Upload
from fedlora.methods.common import dense
from fedlora.ops.seeds import label_seed
from fedlora.runtime.guard import change_norms, scale_changes

ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [128, 256, 512]
"""Rényi orders the accountant minimises over (Opacus's default grid)."""


def default_delta(clients: int) -> float:
    """``1/N`` rounded down to a power of ten."""
    return 10.0 ** math.floor(math.log10(1.0 / clients))


def epsilon(noise_multiplier: float, sample_rate: float, rounds: int, delta: float) -> float:
    """ε after ``rounds`` rounds of the sampled Gaussian mechanism (Opacus RDP)."""
    from opacus.accountants.analysis import rdp

    if rounds == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    orders = ORDERS
    spent = rdp.compute_rdp(
        q=sample_rate, noise_multiplier=noise_multiplier, steps=rounds, orders=orders
    )
    eps, _ = rdp.get_privacy_spent(orders=orders, rdp=spent, delta=delta)
    return float(eps)


def calibrated_noise(target: float, sample_rate: float, rounds: int, delta: float) -> float:
    """The smallest noise multiplier (to Opacus's tolerance) whose ε after ``rounds`` is at most
    ``target``."""
    from opacus.accountants.utils import get_noise_multiplier

    return float(
        get_noise_multiplier(
            target_epsilon=target,
            target_delta=delta,
            sample_rate=sample_rate,
            steps=rounds,
            accountant="rdp",
            epsilon_tolerance=0.001,
        )
    )


def rounds_allowed(noise_multiplier: float, sample_rate: float, delta: float, target: float) -> int:
    """How many rounds stay within ``target`` (0 if not even one)."""
    rounds = 0
    while epsilon(noise_multiplier, sample_rate, rounds + 1, delta) <= target:
        rounds += 1
        if rounds >= 100_000:
            break
    return rounds


@dataclass(frozen=True)
class Plan:
    """What a DP run does, fixed at its start."""

    clip_norm: float
    noise_multiplier: float
    sample_rate: float
    """The ``q`` the accountant uses (1 under fixed-size sampling)."""
    denominator: float
    """The data-independent count the noisy sum is divided by."""
    delta: float
    noise_seed: int | None

    def spent(self, rounds: int) -> dict[str, float]:
        """The record's ``privacy`` entry after ``rounds`` rounds."""
        return {
            "epsilon": epsilon(self.noise_multiplier, self.sample_rate, rounds, self.delta),
            "delta": self.delta,
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": self.sample_rate,
            "clip_norm": self.clip_norm,
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
        want = fed.clients_per_round
        q, denominator = 1.0, float(max(1, round(want * n)) if want <= 1 else min(n, int(want)))
    delta = p.delta if p.delta is not None else default_delta(n)
    sigma = p.noise_multiplier
    if sigma is None:
        assert p.target_epsilon is not None
        sigma = calibrated_noise(p.target_epsilon, q, fed.rounds, delta)
    elif p.target_epsilon is not None:
        eps = epsilon(sigma, q, fed.rounds, delta)
        if eps > p.target_epsilon:
            allowed = rounds_allowed(sigma, q, delta, p.target_epsilon)
            raise ConfigError(
                f"privacy: ε after {fed.rounds} rounds would be {eps:.3g} > target "
                f"{p.target_epsilon:g} (δ = {delta:g}, σ = {sigma:g}, q = {q:g}); the budget "
                f"allows {allowed} rounds"
            )
    return Plan(p.clip_norm, sigma, q, denominator, delta, p.noise_seed)


def clip_upload(payload: Payload, reference: Mapping[str, torch.Tensor], bound: float) -> Payload:
    """``payload`` with its whole change from ``reference`` scaled into L2 norm ``bound``."""
    norm = math.sqrt(sum(x * x for x in change_norms(payload, reference).values()))
    if norm <= bound:
        return payload
    scale = bound / norm
    layers = change_norms(payload, reference)
    return scale_changes(payload, reference, dict.fromkeys(layers, scale))


def _noise_generator(plan: Plan, round_: int) -> torch.Generator:
    seed = (
        label_seed(plan.noise_seed, "dp-noise", round_)
        if plan.noise_seed is not None
        else secrets.randbits(63)
    )
    return torch.Generator().manual_seed(seed)


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
    gen = _noise_generator(plan, round_)
    total = {name: torch.zeros(shape, dtype=torch.float64) for name, shape in schema.items()}
    for up in uploads:
        mine = references.get(up.cid, {})
        clipped = clip_upload(up.payload, mine, plan.clip_norm)
        for name, entry in clipped.items():
            base = mine.get(name)
            change = dense(entry).double() - (base.double() if base is not None else 0.0)
            total[name] += change.reshape(total[name].shape)
    std = plan.noise_multiplier * plan.clip_norm
    out: Payload = {}
    for name, summed in total.items():
        noise = torch.randn(summed.shape, generator=gen, dtype=torch.float64) * std
        mean = (summed + noise) / plan.denominator
        base = reference.get(name)
        out[name] = (mean + (base.double() if base is not None else 0.0)).to(torch.float32)
    return out
