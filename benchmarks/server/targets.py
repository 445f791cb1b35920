"""The server benchmark's targets (``targets.toml``) decided from measured figures."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from benchmarks.common.data import beside
from benchmarks.server.spec import BenchConfig, MethodResult, TargetCheck


def _ratio(r: MethodResult) -> tuple[float, str] | None:
    return None if r.ratio is None else (r.ratio, f"{r.ratio:.0f}x")


def _whole(r: MethodResult) -> tuple[float, str] | None:
    t = r.project_full
    return None if t is None else (t.median, f"{t.median:.3g} s")


def _wire(r: MethodResult) -> tuple[float, str] | None:
    return None if r.wire is None else (r.wire.median, f"{r.wire.median:.3f} s")


def _roofline(r: MethodResult) -> tuple[float, str] | None:
    x, t = r.roofline_ratio, r.project_full
    if x is None or t is None or r.roofline_s is None:
        return None
    return x, f"{x:.2f}x ({t.median:.3g} s / roofline {r.roofline_s:.3g} s)"


def _wire_copy(r: MethodResult) -> tuple[float, str] | None:
    x, wire, copy = r.wire_over_copy, r.wire, r.copy
    if x is None or wire is None or copy is None:
        return None
    return x, f"{x:.1f}x ({wire.median:.3f} s / copy {copy.median:.4f} s)"


METRICS: Mapping[str, Callable[[MethodResult], tuple[float, str] | None]] = {
    "reference_over_project": _ratio,
    "whole_model_seconds": _whole,
    "wire_seconds": _wire,
    "roofline_ratio": _roofline,
    "wire_over_copy": _wire_copy,
}
"""A measured figure of one method (value, as shown), or None when the run has none."""


def _applies(when: Mapping[str, Any], config: BenchConfig) -> bool:
    settings: dict[str, Any] = {
        "device": "cuda" if config.device.startswith("cuda") else "cpu",
        "shape": config.shape,
        "ranks": list(config.ranks),
        "blocks": config.blocks,
        "targets": sorted(config.targets) if config.targets else "all-linear",
        "whole_model": config.model_blocks is None,
    }
    want = {k: sorted(v) if k == "targets" and isinstance(v, list) else v for k, v in when.items()}
    return all(settings[k] == v for k, v in want.items())


def _target(
    spec: Mapping[str, Any], config: BenchConfig, res: Mapping[str, MethodResult]
) -> TargetCheck:
    r = res.get(spec["method"])
    got = METRICS[spec["metric"]](r) if r is not None else None
    if not _applies(spec["when"], config) or got is None:
        return TargetCheck(spec["name"], None, "-", f"run: {spec['run']}")
    value, shown = got
    passed = value <= spec["max"] if "max" in spec else value >= spec["min"]
    return TargetCheck(spec["name"], passed, shown)


def _every_method(
    limits: Mapping[str, float], results: Sequence[MethodResult]
) -> list[TargetCheck]:
    checks = []
    most = limits["peak_over_stacked_max"]
    for r in results:
        if r.memory is None:
            continue
        multiple = r.memory.peak_tensor_bytes / max(r.stacked_bytes, 1)
        formed = f", forms m×n {list(r.memory.dense_shapes)}" if r.memory.dense_shapes else ""
        checks.append(
            TargetCheck(
                f"{r.method}: peak <= {most:g}x stacked factors, no m×n matrix",
                multiple <= most and not r.memory.dense_shapes,
                f"{multiple:.2f}x{formed}",
            )
        )
    limit = limits["relative_error_max"]
    for r in results:
        if r.rel_error is not None:
            checks.append(
                TargetCheck(
                    f"{r.method}: rel. error vs dense reference < {limit:g} (float32)",
                    r.rel_error < limit,
                    f"{r.rel_error:.1e}",
                    r.error_run,
                )
            )
    return checks


def check_targets(
    config: BenchConfig, results: Sequence[MethodResult], targets: Mapping[str, Any] | None = None
) -> list[TargetCheck]:
    """Every target of ``targets`` (default: ``targets.toml``) for this run's results."""
    spec = targets if targets is not None else beside(__file__, "targets.toml")
    res = {r.method: r for r in results}
    speed = [_target(t, config, res) for t in spec["target"]]
    return speed + _every_method(spec["every_method"], results)
