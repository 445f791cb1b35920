"""The sections of a run's configuration: frozen dataclasses, checked on construction.

Every section of the TOML file is a dataclass below (``[model]`` is :class:`ModelConfig`, …;
``[federation]`` and ``[privacy]`` are in :mod:`fedlora.config.federation`),
and :class:`RunConfig` is the whole run; a bad value raises :class:`ConfigError` naming the
dotted key. Loading and overrides: :mod:`fedlora.config.loading`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fedlora.config.federation import FederationConfig, PrivacyConfig
from fedlora.data.dataset_split import DATASET_PARTITIONS
from fedlora.data.formats import FORMATS, TEMPLATES, Columns
from fedlora.errors import ConfigError
from fedlora.ops.ratio import SPARSIFIERS, RatioRule
from fedlora.ops.schedule import SCHEDULES
from fedlora.validate import check as _check
from fedlora.validate import one_of

ALL_LINEAR = "all-linear"


MODEL_DTYPES = ("float32", "bfloat16", "float16")
QUANTIZE = ("none", "8bit", "4bit")


@dataclass(frozen=True)
class ModelConfig:
    """Which causal LM: a built-in name (``smollm2-135m``, ``tiny-llama``, ``tiny-qwen2``)
    or a local Hugging Face folder. ``dtype`` is the frozen base's precision (LoRA factors,
    optimiser state, payloads and the server stay float32); ``quantize`` loads the base in
    8 or 4 bits through bitsandbytes (CUDA only)."""

    name: str = "smollm2-135m"
    dtype: str = "float32"
    quantize: str = "none"

    def __post_init__(self) -> None:
        _check(bool(self.name), "model.name", "must not be empty")
        one_of("model.dtype", self.dtype, MODEL_DTYPES)
        one_of("model.quantize", self.quantize, QUANTIZE)


@dataclass(frozen=True)
class LoraConfig:
    """Adapter shape. ``ranks`` (one per client) overrides ``rank`` for heterogeneous
    federations; ``alphas`` likewise, defaulting to ``alpha_ratio · rank`` per client.
    ``target_modules = "all-linear"`` (the default) is PEFT's meaning: every linear layer
    but the output head; a list names module suffixes (``["q_proj", "v_proj"]``)."""

    rank: int = 8
    alpha: float = 16.0
    ranks: tuple[int, ...] = ()
    alphas: tuple[float, ...] = ()
    target_modules: tuple[str, ...] = (ALL_LINEAR,)
    dropout: float = 0.05

    def __post_init__(self) -> None:
        _check(self.rank >= 1, "lora.rank", f"must be at least 1, got {self.rank}")
        _check(self.alpha > 0, "lora.alpha", f"must be positive, got {self.alpha}")
        for r in self.ranks:
            _check(int(r) >= 1, "lora.ranks", f"every rank must be at least 1, got {r}")
        for a in self.alphas:
            _check(a > 0, "lora.alphas", f"every alpha must be positive, got {a}")
        _check(bool(self.target_modules), "lora.target_modules", "must name at least one module")
        _check(
            ALL_LINEAR not in self.target_modules or len(self.target_modules) == 1,
            "lora.target_modules",
            f"{ALL_LINEAR!r} stands alone (write it as a string, not in a list with others)",
        )
        _check(0 <= self.dropout < 1, "lora.dropout", f"must be in [0, 1), got {self.dropout}")

    @property
    def peft_targets(self) -> str | list[str]:
        """``target_modules`` as PEFT's ``LoraConfig`` takes it."""
        if self.target_modules == (ALL_LINEAR,):
            return ALL_LINEAR
        return list(self.target_modules)


BUILTIN_PARTITIONS = ("domain", "dirichlet", "iid", "files")


@dataclass(frozen=True)
class DataConfig:
    """Where client data comes from and how it is split among clients.

    Built-in domains (``partition = "domain" | "dirichlet" | "iid"``), one file per client
    (``partition = "files"``, ``files``), or one local dataset split across clients
    (``dataset = PATH`` with ``partition = "iid" | "dirichlet" | "column"`` and
    ``label_column``). Files and datasets are JSON, JSONL, Parquet, CSV or a
    ``save_to_disk`` folder in ``format`` (or renamed by ``columns``); ``template`` renders
    the prompt."""

    clients: int = 0
    """0: from the data: one client per file, one per value of ``label_column`` for a column
    split (counted when the run starts, :func:`fedlora.runtime.client_data.with_client_count`),
    else 4."""
    partition: str = "domain"  # domain | dirichlet | iid | files | column
    domains: tuple[str, ...] = ("code", "literature", "email", "dictionary")
    dirichlet_alpha: float = 0.5
    files: tuple[str, ...] = ()
    max_train_per_client: int = 0  # 0 = all
    max_eval_per_domain: int = 32
    max_choice_per_domain: int = 0
    """Questions of a domain's multiple-choice task scored (0: ``max_eval_per_domain``)."""
    dataset: str = ""
    format: str = "prompt-completion"  # prompt-completion | alpaca | dolly | messages
    columns: Columns = field(default_factory=Columns)
    template: str = "chat"  # chat | chatml | alpaca | vicuna
    label_column: str = ""
    heldout_fraction: float = 0.1
    pool: int = 0
    """0: no pooling. N >= 2: the centralised reference: the data is split as for N clients
    and the union of their training examples goes to the one client (``data.clients = 1``);
    the held-out sets stay as for N clients."""
    eval_split: str = "test"  # test | validation
    """``validation`` (built-in domains, ``files``): score a slice of each domain's (file's)
    training records, removed from training and disjoint from the test held-out set, instead
    of the test set (no choice tasks): for choosing settings without seeing a test score."""

    def __post_init__(self) -> None:
        _check(self.clients >= 0, "data.clients", f"must be at least 1, got {self.clients}")
        _check(self.pool == 0 or self.pool >= 2, "data.pool", f"must be 0 or >= 2, got {self.pool}")
        _check(
            self.pool == 0 or self.clients == 1,
            "data.clients",
            f"must be 1 with data.pool = {self.pool} (one client holds the pooled data)",
        )
        _check(
            self.eval_split in ("test", "validation"),
            "data.eval_split",
            f"must be 'test' or 'validation', got {self.eval_split!r}",
        )
        _check(
            self.eval_split == "test" or not self.dataset,
            "data.eval_split",
            "'validation' is for the built-in domains and data.files, not data.dataset",
        )
        if self.clients == 0 and not (self.dataset and self.partition == "column"):
            # Only a column split needs the data itself to count its clients.
            object.__setattr__(self, "clients", len(self.files) if self.files else 4)
        key = "data.partition with data.dataset" if self.dataset else "data.partition"
        one_of(key, self.partition, DATASET_PARTITIONS if self.dataset else BUILTIN_PARTITIONS)
        _check(self.dirichlet_alpha > 0, "data.dirichlet_alpha", "must be positive")
        _check(self.max_train_per_client >= 0, "data.max_train_per_client", "must be >= 0")
        _check(self.max_eval_per_domain >= 1, "data.max_eval_per_domain", "must be >= 1")
        _check(self.max_choice_per_domain >= 0, "data.max_choice_per_domain", "must be >= 0")
        one_of("data.format", self.format, FORMATS)
        one_of("data.template", self.template, TEMPLATES)
        _check(
            0 < self.heldout_fraction <= 0.5,
            "data.heldout_fraction",
            f"must be in (0, 0.5], got {self.heldout_fraction}",
        )
        if self.dataset:
            _check(
                not self.files, "data.files", "is for one file per client; not with data.dataset"
            )
            _check(
                self.partition == "iid" or bool(self.label_column),
                "data.label_column",
                f"data.partition = {self.partition!r} splits by a column: name it",
            )
        elif self.partition == "files":
            _check(
                len(self.files) == (self.pool or self.clients),
                "data.files",
                f"needs one file per client ({self.pool or self.clients}), got {len(self.files)}",
            )
        else:
            _check(bool(self.domains), "data.domains", "must name at least one domain")

    @property
    def choice_items(self) -> int:
        """How many questions of each multiple-choice task are scored."""
        return self.max_choice_per_domain or self.max_eval_per_domain

    @property
    def own_heldout(self) -> bool:
        """Whether clients hold held-out sets cut from their own data (a file or their part
        of a dataset), scored on each client (federated evaluation)."""
        return bool(self.dataset) or self.partition == "files"


@dataclass(frozen=True)
class TrainConfig:
    """Local training of one client per round. ``device = "auto"`` trains on CUDA when
    there is one; ``gradient_checkpointing`` trades compute for activation memory."""

    local_steps: int = 10
    batch_size: int = 4
    batching: str = "pack"  # pad | group | pack (fedlora.train.batching)
    grad_accum_steps: int = 1
    seq_len: int = 64
    lr: float = 3e-4
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    lr_schedule: str = "constant"  # constant | cosine (over the federation) | linear (per run)
    warmup_steps: int = 0
    min_lr: float = 0.0  # where cosine ends
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    gradient_checkpointing: bool = False
    threads: int = 0
    """Torch threads of each training client; 0: the cores this process may use, divided
    among the clients that train at once in it (resolved at start and written to the run's
    config.json; :mod:`fedlora.train.threads`)."""

    def __post_init__(self) -> None:
        _check(self.threads >= 0, "train.threads", f"must be >= 0 (0 = auto), got {self.threads}")
        _check(
            re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device) is not None,
            "train.device",
            f"must be auto, cpu, cuda or cuda:N; got {self.device!r}",
        )
        for k in ("local_steps", "batch_size", "grad_accum_steps", "seq_len"):
            v = getattr(self, k)
            _check(v >= 1, f"train.{k}", f"must be at least 1, got {v}")
        _check(self.lr > 0, "train.lr", f"must be positive, got {self.lr}")
        _check(self.weight_decay >= 0, "train.weight_decay", "must be >= 0")
        _check(self.max_grad_norm >= 0, "train.max_grad_norm", "must be >= 0 (0 = off)")
        one_of("train.batching", self.batching, BATCHINGS)
        one_of("train.lr_schedule", self.lr_schedule, SCHEDULES)
        _check(self.warmup_steps >= 0, "train.warmup_steps", "must be >= 0")
        _check(0 <= self.min_lr <= self.lr, "train.min_lr", f"must be in [0, train.lr = {self.lr}]")


BATCHINGS = ("pad", "group", "pack")
"""How a client's examples become micro-batches (:mod:`fedlora.train.batching`)."""


@dataclass(frozen=True)
class EvalConfig:
    """Held-out evaluation of the global model."""

    every: int = 1  # rounds; the last round is always evaluated
    batch_size: int = 8
    tasks: tuple[str, ...] = ()
    """The user's own evaluation files (multiple-choice or completion, see
    :mod:`fedlora.data.user_tasks`), scored by the server on the global model."""
    at_start: bool = True
    """Score the base model before round 1 (round 0's record). Off where the base scores
    are known already: the quality benchmark scores the base once per seed for all runs."""

    def __post_init__(self) -> None:
        _check(self.every >= 1, "eval.every", "must be at least 1")
        _check(self.batch_size >= 1, "eval.batch_size", "must be at least 1")
        _check(isinstance(self.at_start, bool), "eval.at_start", "must be true or false")


@dataclass(frozen=True)
class WireConfig:
    """How payloads are encoded."""

    value_dtype: str = "float32"  # float32 | bfloat16 | float16
    max_payload_mb: float = 2048.0

    def __post_init__(self) -> None:
        _check(
            self.value_dtype in ("float32", "bfloat16", "float16"),
            "wire.value_dtype",
            f"must be float32, bfloat16 or float16; got {self.value_dtype!r}",
        )
        _check(self.max_payload_mb > 0, "wire.max_payload_mb", "must be positive")


@dataclass(frozen=True)
class LogConfig:
    """What a run shows and writes besides ``metrics.jsonl``: ``progress = "auto"`` draws
    progress bars only on a terminal (never in logs or CI); ``tensorboard`` also writes the
    metrics' scalars as TensorBoard event files under ``RUN/tensorboard``."""

    progress: str = "auto"  # auto | on | off
    tensorboard: bool = False

    def __post_init__(self) -> None:
        _check(
            self.progress in ("auto", "on", "off"),
            "log.progress",
            f"must be auto, on or off; got {self.progress!r}",
        )


UPLINK_SPARSIFIERS = ("none", *SPARSIFIERS)


@dataclass(frozen=True)
class UplinkConfig(RatioRule):
    """FedSRD's upload sparsification as a plug-in for methods that send LoRA factors
    (``fedlora.methods.uplink``): ``sparsify`` = none | importance | magnitude | random, with
    FedSRD's ratio rule (:class:`~fedlora.ops.sparsify.RatioRule`: ``base``, ``coeff``,
    ``upper`` or ``fixed_rho``, and ``rescale``)."""

    sparsify: str = "none"

    def __post_init__(self) -> None:
        try:
            super().__post_init__()
        except ValueError as exc:
            raise ConfigError(f"uplink.{exc}") from None
        one_of("uplink.sparsify", self.sparsify, UPLINK_SPARSIFIERS)


@dataclass(frozen=True)
class MethodChoice:
    """``name`` selects a registered method; ``options`` are ``[method.<name>]``."""

    name: str = "fedavg"
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunConfig:
    """A whole run."""

    seed: int = 0
    out_dir: str = "runs/latest"
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    wire: WireConfig = field(default_factory=WireConfig)
    uplink: UplinkConfig = field(default_factory=UplinkConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    log: LogConfig = field(default_factory=LogConfig)
    method: MethodChoice = field(default_factory=MethodChoice)

    def client_ranks(self) -> list[int]:
        if self.lora.ranks:
            return [int(r) for r in self.lora.ranks]
        return [self.lora.rank] * self.data.clients

    def client_alphas(self) -> list[float]:
        if self.lora.alphas:
            return [float(a) for a in self.lora.alphas]
        ratio = self.lora.alpha / self.lora.rank
        return [ratio * r for r in self.client_ranks()]

    def _check_counts(self, n: int) -> None:
        """The checks that need the number of clients ``n``."""
        _check(
            not self.lora.ranks or len(self.lora.ranks) == n,
            "lora.ranks",
            f"needs one rank per client ({n}), got {len(self.lora.ranks)}",
        )
        _check(
            not self.lora.alphas or len(self.lora.alphas) == n,
            "lora.alphas",
            f"needs one alpha per client ({n}), got {len(self.lora.alphas)}",
        )
        _check(
            self.federation.min_clients <= n,
            "federation.min_clients",
            f"is {self.federation.min_clients} but there are only {n} clients",
        )
        _check(
            not self.federation.node_keys or len(self.federation.node_keys) == n,
            "federation.node_keys",
            f"needs one key per client ({n}), got {len(self.federation.node_keys)}",
        )

    def __post_init__(self) -> None:
        n = self.data.clients
        if n:  # 0: a column split not counted yet; checked again once it is
            self._check_counts(n)
        _check(
            not self.privacy.on or self.federation.weighting == "uniform",
            "federation.weighting",
            "privacy.mode = central weighs every client alike (weights may not depend on the "
            "data): set federation.weighting = uniform",
        )
        _check(
            not self.federation.secure or self.federation.weighting == "uniform",
            "federation.weighting",
            "federation.secure_aggregation weighs every client alike (the server sees no "
            "client's count, so it could not cap one): set federation.weighting = uniform",
        )
        _check(
            not self.federation.secure or not self.lora.ranks or len(set(self.lora.ranks)) == 1,
            "lora.ranks",
            "federation.secure_aggregation needs every client at one rank (the masked vectors "
            "are summed in one shared space)",
        )
        _check(
            not self.privacy.on or not self.lora.ranks or len(set(self.lora.ranks)) == 1,
            "lora.ranks",
            "privacy.mode = central needs every client at one rank (noise is added to one "
            "shared vector space)",
        )
