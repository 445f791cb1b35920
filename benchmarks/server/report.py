"""``python -m benchmarks.server``'s report: its text and JSON forms (targets: ``targets.py``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from benchmarks.server.spec import (
    MB,
    BenchReport,
    MethodResult,
    Timing,
)


def summary_line(r: MethodResult) -> str:
    """One progress line with a method's figures, so a run cut short still tells something."""
    err = "-" if r.rel_error is None else f"{r.rel_error:.1e}"
    ratio = "-" if r.ratio is None else f"{r.ratio:.0f}x"
    peak = "-" if r.memory is None else _mb(r.memory.peak_tensor_bytes)
    return (
        f"{r.method}: proj {_secs(r.project_subset)} s / ref {_secs(r.reference)} s "
        f"({ratio}) on the subset, rel.err {err}; whole model {_secs(r.project_full)} s, "
        f"peak {peak} MB, stacked {_mb(r.stacked_bytes)} MB"
    )


def _mb(nbytes: int | None) -> str:
    return "-" if nbytes is None else f"{nbytes / MB:.1f}"


def _secs(t: Timing | None) -> str:
    return "-" if t is None else f"{t.median:.3g}"


HEADER = (
    "method",
    "clients",
    "proj s ({blocks})",
    "ref s ({blocks})",
    "ref/proj",
    "rel.err",
    "proj s (all)",
    "peak MB",
    "stacked MB",
    "peak/stacked",
    "rss MB",
    "m×n formed",
    "ref peak MB ({blocks})",
    "upload MB",
    "wire s",
    "GFLOP",
    "GFLOP/s",
    "machine mm/mm64/qr",
    "x roofline",
    "wire/copy",
)


def _row(r: MethodResult) -> list[str]:
    mem = r.memory
    measured = r.machine_gflop_per_s
    cells = (f"{measured[k]:.0f}" if k in measured else "-" for k in ("matmul", "matmul-f64", "qr"))
    rates = "/".join(cells) if measured else ""
    return [
        r.method,
        _clients(r.ranks),
        _secs(r.project_subset),
        _secs(r.reference),
        "-" if r.ratio is None else f"{r.ratio:.0f}x",
        "-" if r.rel_error is None else f"{r.rel_error:.1e}",
        _secs(r.project_full),
        _mb(mem.peak_tensor_bytes if mem else None),
        _mb(r.stacked_bytes),
        "-" if mem is None else f"{mem.peak_tensor_bytes / max(r.stacked_bytes, 1):.2f}",
        _mb(mem.peak_rss_bytes if mem else None),
        "-" if mem is None else ("yes" if mem.dense_shapes else "no"),
        _mb(r.reference_memory.peak_tensor_bytes if r.reference_memory else None),
        _mb(r.upload_bytes or None),
        _secs(r.wire),
        f"{r.flops / 1e9:.1f}" if r.flops else "-",
        "-" if r.gflop_per_s is None else f"{r.gflop_per_s:.1f}",
        rates or "-",
        "-" if r.roofline_ratio is None else f"{r.roofline_ratio:.2f}",
        "-" if r.wire_over_copy is None else f"{r.wire_over_copy:.1f}",
    ]


def _title(report: BenchReport) -> str:
    cfg, machine = report.config, report.machine
    targets = ",".join(cfg.targets) if cfg.targets else "all linear"
    return (
        f"python -m benchmarks.server: shape {cfg.shape}, targets {targets}, "
        f"{machine['layers']} layers ({machine['subset_layers']} in {cfg.blocks} block(s)), "
        f"ranks {','.join(map(str, cfg.ranks))}, torch threads {machine['torch_threads']}, "
        f"whole-model step on {cfg.device}, times = median of {cfg.repeats} (reference: "
        f"{cfg.ref_repeats}), load average at start {machine['load_average_1min']}"
    )


def format_table(report: BenchReport) -> str:
    """The human-readable report: one row per method, then the target checks."""
    header = [h.format(blocks=f"{report.config.blocks} blk") for h in HEADER]
    rows = [header, *(_row(r) for r in report.results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [_title(report)]
    for i, row in enumerate(rows):
        cells = zip(row, widths, strict=True)
        lines.append(
            "  ".join(c.ljust(w) if j < 2 else c.rjust(w) for j, (c, w) in enumerate(cells))
        )
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    notes = [f"  {r.method}: {r.note}" for r in report.results if r.note]
    notes += [
        f"  {r.method}: rel. error from a {r.error_run}"
        for r in report.results
        if r.rel_error is not None and r.error_run != "timed run"
    ]
    if notes:
        lines += ["notes:", *notes]
    lines.append("targets:")
    for c in report.checks:
        status = "n/a " if c.passed is None else ("PASS" if c.passed else "FAIL")
        extra = f"  ({c.note})" if c.note else ""
        lines.append(f"  {status}  {c.name}: {c.measured}{extra}")
    return "\n".join(lines)


def _clients(ranks: Sequence[int]) -> str:
    if len(set(ranks)) == 1:
        return f"{len(ranks)}×r{ranks[0]}"
    return "r" + ",".join(map(str, ranks))


def report_json(report: BenchReport) -> dict[str, Any]:
    """The report as plain JSON-able data."""
    methods = []
    for r in report.results:
        entry = dataclasses.asdict(r)
        entry["ratio"] = r.ratio
        methods.append(entry)
    return {
        "config": dataclasses.asdict(report.config),
        "machine": report.machine,
        "methods": methods,
        "targets": [dataclasses.asdict(c) for c in report.checks],
    }
