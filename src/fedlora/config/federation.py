"""The ``[federation]`` and ``[privacy]`` sections: rounds, sampling, weighting, what the
server trusts of a client's reply, and client-level differential privacy."""

from __future__ import annotations

from dataclasses import dataclass, field

from fedlora.validate import check as _check
from fedlora.validate import number, one_of

SAMPLINGS = ("fixed", "poisson")
WEIGHTINGS = ("samples", "uniform")
CLIP_ACTIONS = ("clip", "refuse")
PRIVACY_MODES = ("none", "central")
SECURE_AGGREGATIONS = ("none", "secagg+")


@dataclass(frozen=True)
class SecAggConfig:
    """Options of secure aggregation (``federation.secure_aggregation = "secagg+"``).

    ``num_shares``: how many clients (itself included) each client shares its secrets with,
    on a ring in a random order: SecAgg+ (0, the default: every client of the round, which
    is SecAgg). ``reconstruction_threshold``: how many of those shares rebuild a secret (0,
    the default: more than half of each neighbourhood, the least that keeps a server from
    collecting both a client's mask seed and its key); a round where fewer survive is
    skipped. ``clipping_range``: every value a client sends is clipped to
    ``[-clipping_range, clipping_range]`` first. ``modulus_bits``: values travel as integers
    modulo ``2**modulus_bits`` (words of 32 bits up to 32, of 64 above); the fixed-point
    scale is the largest power of two at which the sum of every client's clipped values
    fits, so the mean's rounding error is at most ``1/scale`` per value. See
    docs/threat-model.md."""

    num_shares: int = 0
    reconstruction_threshold: int = 0
    clipping_range: float = 8.0
    modulus_bits: int = 32

    def __post_init__(self) -> None:
        number("federation.secagg.num_shares", self.num_shares, at_least=0, integer=True)
        _check(
            self.num_shares == 0 or self.num_shares >= 3,
            "federation.secagg.num_shares",
            f"must be 0 (every client) or at least 3; got {self.num_shares}",
        )
        number(
            "federation.secagg.reconstruction_threshold",
            self.reconstruction_threshold,
            at_least=0,
            integer=True,
        )
        _check(
            self.reconstruction_threshold == 0
            or self.num_shares == 0
            or 2 * self.reconstruction_threshold > self.num_shares | 1,
            "federation.secagg.reconstruction_threshold",
            f"must be more than half of num_shares ({self.num_shares}, rounded up to odd), or "
            "a server could rebuild both a client's mask seed and its key",
        )
        number("federation.secagg.clipping_range", self.clipping_range, above=0.0)
        number(
            "federation.secagg.modulus_bits",
            self.modulus_bits,
            at_least=16,
            at_most=64,
            integer=True,
        )


@dataclass(frozen=True)
class PrivacyConfig:
    """Client-level differential privacy (DP-FedAvg). ``mode = "central"``: each client clips
    the change it uploads to L2 norm ``clip_norm``, the server adds Gaussian noise of standard
    deviation ``noise_multiplier · clip_norm`` to their sum and averages it with weights that
    do not depend on the data. Give ``noise_multiplier`` (ε is then reported) or
    ``target_epsilon`` (the noise is calibrated to it over the planned rounds), or both (a run
    that would exceed the target stops at start). ``delta`` defaults to 1/N clients rounded
    down to a power of ten. The noise and the sample of clients come from the operating
    system's cryptographic source. ``noise_seed`` derives the noise from a seed and the sample
    from the run's seed instead, which anyone who knows them can undo: it is refused unless
    ``not_private = true`` declares the run not private (its ε is then void). See
    docs/privacy.md and docs/threat-model.md."""

    mode: str = "none"
    clip_norm: float = 1.0
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    delta: float | None = None
    noise_seed: int | None = None
    not_private: bool = False

    def __post_init__(self) -> None:
        one_of("privacy.mode", self.mode, PRIVACY_MODES)
        _check(self.clip_norm > 0, "privacy.clip_norm", f"must be positive, got {self.clip_norm}")
        _check(
            self.noise_multiplier is None or self.noise_multiplier >= 0,
            "privacy.noise_multiplier",
            "must be >= 0",
        )
        _check(
            self.target_epsilon is None or self.target_epsilon > 0,
            "privacy.target_epsilon",
            "must be positive",
        )
        _check(self.delta is None or 0 < self.delta < 1, "privacy.delta", "must be in (0, 1)")
        _check(
            self.mode == "none"
            or self.noise_multiplier is not None
            or self.target_epsilon is not None,
            "privacy",
            "mode = central needs privacy.noise_multiplier or privacy.target_epsilon",
        )
        _check(
            self.noise_seed is None or self.not_private,
            "privacy.noise_seed",
            "a fixed noise seed lets anyone who knows it remove the noise; set "
            "privacy.not_private = true to run without privacy (its ε is void), or leave "
            "the noise to the operating system",
        )

    @property
    def on(self) -> bool:
        return self.mode != "none"

    @property
    def secret(self) -> bool:
        """Whether noise and sample must be unpredictable (DP on and the run private)."""
        return self.on and not self.not_private


@dataclass(frozen=True)
class FederationConfig:
    """Rounds, sampling, weighting, and what the server trusts of a client's reply.

    ``max_weight_ratio`` caps a reported training-sample count at that multiple of the
    round's (lower) median report. ``clip_ratio`` / ``clip_norm`` bound each upload's change
    per layer (a multiple of the round's lower median change of that layer / an absolute
    norm); ``clip_action`` scales a change back onto the bound or refuses the upload. On
    Flower, ``max_reply_mb`` refuses larger replies before parsing them, ``node_keys`` binds
    each client id to a SuperNode key (OpenSSH public keys, one per client; a deployment
    whose SuperLink is not on loopback needs them unless ``allow_unauthenticated``), and a method
    whose broadcast carries clients' own updates, or a round with one valid upload, is
    refused unless ``allow_individual_updates``. ``secure_aggregation = "secagg+"`` has the
    server learn only the sum of each round's uploads (options in ``[federation.secagg]``,
    :class:`SecAggConfig`). See docs/threat-model.md."""

    rounds: int = 3
    clients_per_round: float = 1.0  # fraction in (0, 1] or a count > 1
    sampling: str = "fixed"  # fixed: clients_per_round each round | poisson: each at sample_rate
    sample_rate: float = 1.0
    weighting: str = "samples"  # samples | uniform
    min_clients: int = 1
    client_timeout_s: float = 0.0  # a client training longer is dropped; 0 = no limit
    max_weight_ratio: float = 4.0  # 0 = reported counts are taken as they are
    clip_ratio: float = 10.0  # 0 = no bound relative to the round's changes
    clip_norm: float = 0.0  # 0 = no absolute bound
    clip_action: str = "clip"  # clip | refuse
    max_reply_mb: float = 2048.0
    node_keys: tuple[str, ...] = ()
    allow_individual_updates: bool = False
    allow_unauthenticated: bool = False
    secure_aggregation: str = "none"  # none | secagg+
    secagg: SecAggConfig = field(default_factory=SecAggConfig)

    def __post_init__(self) -> None:
        _check(self.rounds >= 1, "federation.rounds", f"must be at least 1, got {self.rounds}")
        _check(self.clients_per_round > 0, "federation.clients_per_round", "must be positive")
        one_of("federation.sampling", self.sampling, SAMPLINGS)
        _check(0 < self.sample_rate <= 1, "federation.sample_rate", "must be in (0, 1]")
        one_of("federation.weighting", self.weighting, WEIGHTINGS)
        _check(self.min_clients >= 1, "federation.min_clients", "must be at least 1")
        _check(self.client_timeout_s >= 0, "federation.client_timeout_s", "must be >= 0")
        _check(
            self.max_weight_ratio == 0 or self.max_weight_ratio >= 1,
            "federation.max_weight_ratio",
            f"must be 0 (off) or at least 1, got {self.max_weight_ratio}",
        )
        _check(
            self.clip_ratio == 0 or self.clip_ratio >= 1,
            "federation.clip_ratio",
            f"must be 0 (off) or at least 1, got {self.clip_ratio}",
        )
        _check(self.clip_norm >= 0, "federation.clip_norm", "must be >= 0 (0 = off)")
        one_of("federation.clip_action", self.clip_action, CLIP_ACTIONS)
        _check(self.max_reply_mb > 0, "federation.max_reply_mb", "must be positive")
        _check(
            all(isinstance(k, str) and k.strip() for k in self.node_keys),
            "federation.node_keys",
            "must be OpenSSH public keys (one line each), one per client",
        )
        one_of("federation.secure_aggregation", self.secure_aggregation, SECURE_AGGREGATIONS)

    @property
    def secure(self) -> bool:
        """Whether the server sees only the sum of the round's uploads."""
        return self.secure_aggregation != "none"
