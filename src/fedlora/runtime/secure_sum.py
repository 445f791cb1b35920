"""Secure aggregation's values: a client's terms as one fixed-point vector, and their mean.

A client flattens its terms (:mod:`fedlora.methods.secure`, names in sorted order), bounds
their L2 norm under central DP, clips every value to ``±clipping_range`` and rounds it
stochastically to a multiple of ``1/scale`` (:func:`fedlora.runtime.masking.to_fixed`); the
masks of :mod:`fedlora.runtime.secagg` hide it. The server reads the unmasked sum back,
adds the DP noise where the run is private, and divides by the round's count (or DP's
data-independent denominator).

``scale`` is the largest power of two at which ``N`` clipped vectors (``N``: every client
of the federation) sum without wrapping around the modulus, so the sum is exact and the
mean's error from rounding is below ``1/scale`` per value (``2**-25`` for 4 clients at the
defaults: range 8, 32 bits).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from fedlora.config import RunConfig
from fedlora.errors import ConfigError, PayloadError
from fedlora.methods.base import Tensor
from fedlora.methods.secure import Shapes
from fedlora.runtime.masking import fits, from_fixed, to_fixed
from fedlora.runtime.privacy import Plan as PrivacyPlan
from fedlora.runtime.privacy import gaussian, noise_key

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Quantiser:
    """How values become integers modulo ``2**bits``: clipped to ``±clipping_range`` and
    scaled by :attr:`scale` so that ``clients`` of them sum exactly."""

    clipping_range: float
    bits: int
    clients: int

    @property
    def scale(self) -> float:
        room = (2.0 ** (self.bits - 1) / self.clients - 1) / self.clipping_range
        if room < 1:
            raise ConfigError(
                f"federation.secagg: {self.clients} clients' values of range "
                f"{self.clipping_range:g} do not fit {self.bits} bits; lower clipping_range "
                "or raise modulus_bits"
            )
        scale = 2.0 ** math.floor(math.log2(room))
        while not fits(self.clipping_range, scale, self.clients, self.bits):
            scale /= 2
        return scale


def quantiser(cfg: RunConfig) -> Quantiser:
    """The run's quantiser (every client of the federation may be in one sum)."""
    opts = cfg.federation.secagg
    return Quantiser(opts.clipping_range, opts.modulus_bits, max(cfg.data.clients, 1))


def size_of(shapes: Shapes) -> int:
    """How many values a vector of ``shapes`` holds."""
    return sum(math.prod(shape) for shape in shapes.values())


def flatten(terms: Mapping[str, Tensor], shapes: Shapes) -> np.ndarray:
    """The terms as one float64 vector, by sorted name (each must have its shape)."""
    parts = []
    for name in sorted(shapes):
        value = terms.get(name)
        if value is None or tuple(value.shape) != tuple(shapes[name]):
            got = None if value is None else tuple(value.shape)
            raise PayloadError(f"secure term {name}: shape {got}, expected {shapes[name]}")
        parts.append(value.detach().double().reshape(-1).cpu().numpy())
    return np.concatenate(parts) if parts else np.zeros(0)


def unflatten(vector: np.ndarray, shapes: Shapes) -> dict[str, Tensor]:
    """Inverse of :func:`flatten` (float64 tensors)."""
    if vector.size != size_of(shapes):
        raise PayloadError(f"secure vector of {vector.size} values, expected {size_of(shapes)}")
    out: dict[str, Tensor] = {}
    offset = 0
    for name in sorted(shapes):
        count = math.prod(shapes[name])
        out[name] = torch.from_numpy(vector[offset : offset + count].copy()).reshape(shapes[name])
        offset += count
    return out


def client_words(
    vector: np.ndarray, q: Quantiser, clip_norm: float | None, rng: np.random.Generator
) -> np.ndarray:
    """A client's vector as words modulo ``2**q.bits``: its L2 norm bounded by ``clip_norm``
    (central DP), every value clipped to ``±q.clipping_range``, rounded stochastically."""
    if not np.isfinite(vector).all():
        raise PayloadError("secure vector: values must be finite")
    if clip_norm is not None:
        norm = float(np.linalg.norm(vector))
        if norm > clip_norm:
            vector = vector * (clip_norm / norm)
    outside = int(np.count_nonzero(np.abs(vector) > q.clipping_range))
    if outside:
        log.warning(
            "secure aggregation: %d of %d values clipped to ±%g (raise "
            "federation.secagg.clipping_range if that is more than a rare outlier)",
            outside,
            vector.size,
            q.clipping_range,
        )
    clipped = np.clip(vector, -q.clipping_range, q.clipping_range)
    return to_fixed(clipped, q.scale, q.bits, rng)


def mean_terms(
    total: np.ndarray,
    q: Quantiser,
    shapes: Shapes,
    denominator: float,
    noise: tuple[PrivacyPlan, int] | None = None,
) -> dict[str, Tensor]:
    """The terms' mean from the unmasked sum of words: read back as fixed point, plus (a
    private run: ``noise`` is its plan and the round) Gaussian noise of standard deviation
    ``σ·C`` on every value, divided by ``denominator``."""
    summed = from_fixed(total, q.scale, q.bits)
    if noise is not None:
        plan, round_ = noise
        draws = gaussian(noise_key(plan, round_), summed.size)
        summed = summed + draws * (plan.noise_multiplier * plan.clip_norm)
    return unflatten(summed / denominator, shapes)
