"""A ``python -m benchmarks.client`` report: its per-round samples, per-method medians, and its
text and JSON forms."""

from __future__ import annotations

import dataclasses
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from benchmarks.client.scale import ScaleRun
from benchmarks.common.measure import MIB, mib, ms, table
from benchmarks.common.rss import RssResult, RssRun

OVERHEAD_PHASES = (
    "broadcast_encode",
    "broadcast_decode",
    "base_merge",
    "client_start",
    "swap_in",
    "swap_out",
    "upload",
    "upload_encode",
    "upload_decode",
    "other",
)
"""Parts of a client round outside training (``other``: client_step's own bookkeeping)."""
IN_LOOP_PROBES = ("collate", "live_lora")
"""Costs inside fedlora's training loop that the bare loop does not pay (counted as training)."""


@dataclass
class Sample:
    """One timed repeat of one method: the bare loop and fedlora's round on the same batches."""

    round: int
    tokens: int
    bare_tokens: int
    bare_seconds: float
    train_seconds: float
    overhead: dict[str, float]
    in_loop: dict[str, float]
    trl_seconds: float | None = None
    trl_tokens: int | None = None
    """TRL's SFTTrainer on the same client round (None: not measured)."""
    peak_gpu_bytes: dict[str, int] = field(default_factory=dict)
    """On CUDA: peak allocated GPU memory of each side (bare, fedlora, trl)."""

    @property
    def overhead_seconds(self) -> float:
        return sum(self.overhead.values())

    @property
    def round_seconds(self) -> float:
        return self.train_seconds + self.overhead_seconds


@dataclass(frozen=True)
class MethodResult:
    """Medians over repeats for one method (seconds per round, tokens per second)."""

    method: str
    repeats: int
    tokens_per_round: int
    bare_tokens_per_s: float
    train_tokens_per_s: float
    round_tokens_per_s: float
    train_ratio: float
    round_ratio: float
    non_training_share: float
    bare_seconds: float
    train_seconds: float
    round_seconds: float
    overhead_seconds: dict[str, float]
    in_loop_seconds: dict[str, float]
    samples: list[dict[str, Any]] = field(default_factory=list)
    trl_tokens_per_s: float | None = None
    trl_ratio: float | None = None
    """Median of per-repeat (fedlora training tok/s) / (TRL SFTTrainer tok/s)."""
    peak_gpu_bytes: dict[str, int] = field(default_factory=dict)


def summarise(method: str, samples: Sequence[Sample]) -> MethodResult:
    """Medians of a method's samples; ratios are medians of the per-repeat paired ratios."""
    med = statistics.median
    trl = [s for s in samples if s.trl_seconds and s.trl_tokens]
    sides = sorted({k for s in samples for k in s.peak_gpu_bytes})
    return MethodResult(
        method=method,
        repeats=len(samples),
        tokens_per_round=int(med(s.tokens for s in samples)),
        bare_tokens_per_s=med(s.tokens / s.bare_seconds for s in samples),
        train_tokens_per_s=med(s.tokens / s.train_seconds for s in samples),
        round_tokens_per_s=med(s.tokens / s.round_seconds for s in samples),
        train_ratio=med(s.bare_seconds / s.train_seconds for s in samples),
        round_ratio=med(s.bare_seconds / s.round_seconds for s in samples),
        non_training_share=med(s.overhead_seconds / s.round_seconds for s in samples),
        bare_seconds=med(s.bare_seconds for s in samples),
        train_seconds=med(s.train_seconds for s in samples),
        round_seconds=med(s.round_seconds for s in samples),
        overhead_seconds={k: med(s.overhead[k] for s in samples) for k in OVERHEAD_PHASES},
        in_loop_seconds={k: med(s.in_loop[k] for s in samples) for k in IN_LOOP_PROBES},
        samples=[dataclasses.asdict(s) for s in samples],
        trl_tokens_per_s=med(_trl_rate(s) for s in trl) if trl else None,
        trl_ratio=med(s.tokens / s.train_seconds / _trl_rate(s) for s in trl) if trl else None,
        peak_gpu_bytes={k: max(s.peak_gpu_bytes.get(k, 0) for s in samples) for k in sides},
    )


def _trl_rate(s: Sample) -> float:
    assert s.trl_seconds is not None and s.trl_tokens is not None
    return s.trl_tokens / s.trl_seconds


@dataclass(frozen=True)
class ClientBenchReport:
    model: str
    settings: dict[str, Any]
    threads: int
    threads_why: str
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    methods: list[MethodResult]
    rss: RssResult | None
    checks: list[dict[str, Any]]
    scale: list[ScaleRun] = field(default_factory=list)


SHORT_PHASES = {
    "broadcast_encode": "bc enc",
    "broadcast_decode": "bc dec",
    "base_merge": "merge",
    "client_start": "start",
    "swap_in": "swap in",
    "swap_out": "swap out",
    "upload": "upload",
    "upload_encode": "up enc",
    "upload_decode": "up dec",
    "other": "other",
}


def _load(v: Sequence[float]) -> str:
    return "/".join(f"{x:.2f}" for x in v)


def header_lines(report: ClientBenchReport) -> list[str]:
    """What was run, on how many threads, under which load."""
    s = report.settings
    load = (
        f"  load average before {_load(report.load_before)}, after {_load(report.load_after)} "
        "(1/5/15 min; a shared machine makes every figure noisy)"
    )
    if not report.methods:  # no timing part: its client, batch and steps were not used
        return [
            f"python -m benchmarks.client: {report.model}, rank {s['rank']} on "
            f"{','.join(s['target_modules'])}; torch threads {report.threads} of "
            f"{os.cpu_count()} cores ({report.threads_why})",
            load,
        ]
    return [
        f"python -m benchmarks.client: {report.model}, client 0 of {s['clients']}, rank {s['rank']} "
        f"(alpha {s['alpha']:g}) on {','.join(s['target_modules'])}",
        f"  batch {s['batch_size']} x seq_len {s['seq_len']}, {s['local_steps']} local steps, "
        f"grad_accum_steps {s['grad_accum_steps']}, wire {s['wire_value_dtype']}; torch threads "
        f"{report.threads} of {os.cpu_count()} cores ({report.threads_why})",
        load,
    ]


def throughput_lines(report: ClientBenchReport) -> list[str]:
    """Tokens per second, bare against fedlora, per method."""
    rows = [
        [
            r.method,
            str(r.tokens_per_round),
            f"{r.bare_tokens_per_s:.0f}",
            f"{r.train_tokens_per_s:.0f}",
            f"{r.train_ratio:.3f}",
            f"{r.round_tokens_per_s:.0f}",
            f"{r.round_ratio:.3f}",
            f"{r.non_training_share:.2%}",
            f"{r.round_seconds:.2f}",
        ]
        for r in report.methods
    ]
    head = ["method", "tokens", "bare tok/s", "train tok/s", "ratio", "round tok/s"]
    out = [
        "",
        f"Throughput (median of {report.settings['repeats']} interleaved repeats; ratio = "
        "median of paired per-repeat ratios)",
        *table([*head, "round ratio", "non-train", "round s"], rows),
    ]
    trl = [r for r in report.methods if r.trl_ratio is not None]
    if trl:
        out += [
            "",
            "Against TRL's SFTTrainer (same model, adapter, batch, sequence length; ratio = "
            "fedlora training tok/s over TRL's, paired per repeat)",
            *table(
                ["method", "TRL tok/s", "fedlora train tok/s", "fedlora / TRL"],
                [
                    [
                        r.method,
                        f"{r.trl_tokens_per_s:.0f}",
                        f"{r.train_tokens_per_s:.0f}",
                        f"{r.trl_ratio:.3f}",
                    ]
                    for r in trl
                ],
            ),
        ]
    elif report.settings.get("trl") is not None:
        out += ["", f"TRL's SFTTrainer: {report.settings['trl']}"]
    gpu = [r for r in report.methods if r.peak_gpu_bytes]
    for r in gpu:
        shown = ", ".join(f"{k} {mib(v)} MiB" for k, v in r.peak_gpu_bytes.items())
        out.append(f"  peak GPU memory ({r.method}): {shown}")
    return out


def overhead_lines(report: ClientBenchReport) -> list[str]:
    """Where the time outside training goes, per phase."""
    rows = [
        [
            r.method,
            *(ms(r.overhead_seconds[k]) for k in OVERHEAD_PHASES),
            ms(sum(r.overhead_seconds.values())),
            *(ms(r.in_loop_seconds[k]) for k in IN_LOOP_PROBES),
        ]
        for r in report.methods
    ]
    head = ["method", *(SHORT_PHASES[k] for k in OVERHEAD_PHASES), "sum", "collate*", "live_lora*"]
    return [
        "",
        "Non-training time per client round (median ms)",
        *table(head, rows),
        "  * inside the training loop, counted as training (the bare loop has its "
        "batches collated before the clock starts)",
    ]


def rss_lines(rss: RssResult) -> list[str]:
    """Peak RSS per process, what each extra client costs, and each dtype against float32."""
    out = [
        "",
        f"Peak RSS ({rss.model}, one process each; float32 parameters {mib(rss.param_bytes)} MiB)",
    ]
    rows = []
    by_dtype: dict[str, list[RssRun]] = {}
    for r in rss.runs:
        by_dtype.setdefault(r.dtype, []).append(r)
    for dtype, runs in by_dtype.items():
        base = runs[0].peak_rss_bytes
        rows += [
            [
                dtype,
                "model only" if r.clients is None else f"{r.clients} clients",
                mib(r.peak_rss_bytes),
                mib(r.peak_rss_bytes - base),
                f"{(r.peak_rss_bytes - base) / rss.param_bytes:.2f}",
                f"{r.seconds:.0f}",
            ]
            for r in runs
        ]
    out += table(["base", "run", "peak MiB", "over model-only MiB", "x fp32 params", "s"], rows)
    for dtype, runs in by_dtype.items():
        feds = [r for r in runs if r.clients is not None]
        if len(feds) >= 2:
            lo, hi = feds[0], feds[-1]
            assert lo.clients is not None and hi.clients is not None
            extra = hi.peak_rss_bytes - lo.peak_rss_bytes
            per = extra / max(1, hi.clients - lo.clients)
            out.append(
                f"  {dtype}: {hi.clients} vs {lo.clients} clients: {extra / MIB:+.0f} MiB, "
                f"{per / MIB:+.1f} MiB per extra client = "
                f"{per / rss.param_bytes:.3f} fp32 model copies per client"
            )
    reference = {(r.clients): r.peak_rss_bytes for r in by_dtype.get("float32", [])}
    for dtype, runs in by_dtype.items():
        if dtype == "float32" or not reference:
            continue
        pairs = [
            f"{'model only' if r.clients is None else f'{r.clients} clients'} "
            f"{r.peak_rss_bytes / reference[r.clients]:.2f}x"
            for r in runs
            if r.clients in reference
        ]
        out.append(f"  peak RSS, {dtype} base over float32: " + ", ".join(pairs))
    return out


def scale_lines(runs: Sequence[ScaleRun]) -> list[str]:
    """Peak RSS and round time against registered and sampled client counts."""
    out = [
        "",
        "Registered clients (one process each; medians over the rounds between the first "
        "and the last)",
    ]
    rows = []
    for r in runs:
        first = next(x for x in runs if x.method == r.method)
        rows.append(
            [
                r.method,
                str(r.registered),
                str(r.sampled),
                mib(r.peak_rss_bytes),
                f"{r.peak_rss_bytes / first.peak_rss_bytes - 1:+.2%}",
                f"{r.round_s:.3f}",
                f"{r.round_s_per_ktok:.3f}",
                f"{r.non_train_s:.3f}",
                f"{r.server_s:.4f}",
                f"{1000 * r.server_s / r.sampled:.2f}",
                f"{r.wall_s:.1f}",
            ]
        )
    out += table(
        [
            "method",
            "registered",
            "sampled",
            "peak MiB",
            "vs first",
            "round s",
            "s per 1k tok",
            "non-train s",
            "server s",
            "server ms/sampled",
            "process s",
        ],
        rows,
    )
    return out


def target_lines(checks: Sequence[dict[str, Any]]) -> list[str]:
    """PASS / FAIL per target, from the measured numbers."""
    out = ["", "Targets"]
    for c in checks:
        verdict = "PASS" if c["passed"] else "FAIL"
        value = c["value"]
        percent = "share" in c["check"] or "growth" in c["check"]
        shown = f"{value:.2%}" if percent else f"{value:.3f}"
        out.append(f"  {verdict}  {c['check']}: {shown}")
    return out


def format_table(report: ClientBenchReport) -> str:
    """A readable multi-table summary of ``report``."""
    out = header_lines(report)
    if report.methods:
        out += throughput_lines(report) + overhead_lines(report)
    if report.rss is not None:
        out += rss_lines(report.rss)
    if report.scale:
        out += scale_lines(report.scale)
    if report.checks:
        out += target_lines(report.checks)
    return "\n".join(out)


def report_json(report: ClientBenchReport) -> dict[str, Any]:
    out = dataclasses.asdict(report)
    for run, row in zip(report.scale, out["scale"], strict=True):
        row["non_train_s"] = run.non_train_s
    return out
