"""What ``python -m benchmarks.server`` measures and reports: its settings, timings, per-method
results and target checks (plain data, shared by the benchmark and its report)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from benchmarks.common.memory import MemoryUse
from fedlora.errors import ConfigError

MB = 2**20
PAYLOAD_PARTS = ("A", "B", "dA", "dB", "R")
CHECK_OVERRIDES: Mapping[str, Any] = {"p_down": 0.0}
"""Options set for the accuracy check run when a method has them (random downlink off)."""


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark run; see ``main``'s ``--help`` for the meaning of each field."""

    shape: str = "llama-3.2-3b"
    targets: tuple[str, ...] | None = None
    ranks: tuple[int, ...] = (64, 64, 64, 64)
    blocks: int = 1
    model_blocks: int | None = None
    methods: tuple[str, ...] | None = None
    repeats: int = 3
    ref_repeats: int = 1
    seed: int = 0
    threads: int | None = None
    device: str = "cpu"
    """Where the whole-model step runs ("cpu", "cuda", "cuda:N"); the dense reference, the
    accuracy check and the wire stay on the CPU."""

    def __post_init__(self) -> None:
        if not self.ranks or any(r < 1 for r in self.ranks):
            raise ConfigError(f"client ranks must be positive integers, got {self.ranks}")
        if self.blocks < 1:
            raise ConfigError(f"--blocks must be >= 1, got {self.blocks}")
        if self.model_blocks is not None and self.model_blocks < 1:
            raise ConfigError(f"--model-blocks must be >= 1, got {self.model_blocks}")
        if self.repeats < 1 or self.ref_repeats < 1:
            raise ConfigError("--repeats and --ref-repeats must be >= 1")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {self.threads}")
        if self.device != "cpu" and not self.device.startswith("cuda"):
            raise ConfigError(f"--device must be cpu, cuda or cuda:N, got {self.device!r}")


@dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of ``runs`` repeats of one call."""

    best: float
    median: float
    runs: int


@dataclass
class MethodResult:
    """Everything measured for one method (see the module docstring for each figure)."""

    method: str
    ranks: tuple[int, ...]
    note: str = ""
    project_subset: Timing | None = None
    project_full: Timing | None = None
    reference: Timing | None = None
    rel_error: float | None = None
    memory: MemoryUse | None = None
    reference_memory: MemoryUse | None = None
    stacked_bytes: int = 0
    dense_layer_bytes: int = 0
    error_run: str = "timed run"
    wire: Timing | None = None
    """Encoding plus strict decoding of one client's upload of the whole model."""
    upload_bytes: int = 0
    flops: float = 0.0
    """Counted flops of one whole-model step (:mod:`benchmarks.common.flops`)."""
    gflop_per_s: float | None = None
    """``flops`` over the whole-model median time."""
    machine_gflop_per_s: dict[str, float] = field(default_factory=dict)
    """This machine's rate on the step's heaviest matmul and QR shapes."""
    whole_model_s: float | None = None
    roofline_s: float | None = None
    """The time the step's counted flops take at the kernel rates measured in the same run."""
    copy: Timing | None = None
    """Copying the upload's bytes out and back in: the floor the wire is measured against."""

    @property
    def roofline_ratio(self) -> float | None:
        """Whole-model step time over its roofline time (1: the step runs at the machine's
        kernel rates)."""
        if self.project_full is None or not self.roofline_s:
            return None
        return self.project_full.median / self.roofline_s

    @property
    def wire_over_copy(self) -> float | None:
        if self.wire is None or self.copy is None:
            return None
        return self.wire.median / max(self.copy.median, 1e-12)

    @property
    def ratio(self) -> float | None:
        """Reference median time / project median time on the same ``--blocks`` subset."""
        if self.reference is None or self.project_subset is None:
            return None
        return self.reference.median / max(self.project_subset.median, 1e-12)


@dataclass(frozen=True)
class TargetCheck:
    """One target of ``targets.toml``, evaluated from measurements (``passed is None``: n/a)."""

    name: str
    passed: bool | None
    measured: str
    note: str = ""


@dataclass
class BenchReport:
    config: BenchConfig
    machine: dict[str, Any]
    results: list[MethodResult] = field(default_factory=list)
    checks: list[TargetCheck] = field(default_factory=list)
