"""``fedlora bench server``: time and measure every method's server step against a dense reference.

For each registered method, on synthetic client updates of a named model shape
(:mod:`fedlora.bench.synthetic`, produced through the method's real hooks):

1. The project's server step (``method.aggregate``) is timed on the first ``--blocks``
   transformer blocks and on the whole model: ``time.perf_counter``, best and median of
   ``--repeats`` runs, torch using every core.
2. Its peak extra memory on the whole model is measured in a separate, untimed run
   (:mod:`fedlora.bench.memory`) and shown next to the size of the stacked client factors
   ``Σ_k r_k (m+n) · 4`` bytes and the largest layer's ``m·n · 4`` bytes.
3. The dense reference (:mod:`fedlora.bench.dense_reference`) computes the same round the way
   the authors' code does, on the ``--blocks`` subset only (it is slow by design), and is
   timed the same way; the ratio reference / project compares like with like (same layers).
4. The relative Frobenius error between the project's global update (``global_delta``,
   multiplied out in float64 on the subset only) and the reference's. Methods with a random
   downlink (an option named ``p_down``: FedSRD, FedSRD-e) are compared in a separate run with
   ``p_down = 0`` on the same synthetic inputs, because a random DARE mask has no dense
   counterpart; the timed runs use the method's defaults.

Methods that refuse mixed client ranks (``validate`` raises) run with every client at the
largest requested rank; the table says so. Target checks (the issue's item 2) are evaluated
from the measured numbers only; a check whose configuration was not run is reported as
``n/a`` with the command that would evaluate it.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import torch

from fedlora.bench.dense_reference import LayerInputs, references, relative_error, stacked_bytes
from fedlora.bench.memory import MemoryUse, measure, warm_up
from fedlora.bench.synthetic import RoundInputs, make_setup, synthetic_round
from fedlora.errors import ConfigError, FedloraError
from fedlora.methods import registry
from fedlora.methods.base import LayerSpec, Method, ServerState, Setup
from fedlora.methods.common import dense, key

log = logging.getLogger(__name__)

MB = 2**20
PAYLOAD_PARTS = ("A", "B", "dA", "dB")
CHECK_OVERRIDES: Mapping[str, Any] = {"p_down": 0.0}
"""Options set for the accuracy check run when a method has them (random downlink off)."""
ERROR_LIMIT = 1e-4
MEMORY_MULTIPLE = 4.0
"""A factored method's peak extra memory must stay within this multiple of the stacked factors."""


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

    @property
    def ratio(self) -> float | None:
        """Reference median time / project median time on the same ``--blocks`` subset."""
        if self.reference is None or self.project_subset is None:
            return None
        return self.reference.median / max(self.project_subset.median, 1e-12)


@dataclass(frozen=True)
class TargetCheck:
    """One target of the issue, evaluated from measurements (``passed is None``: n/a)."""

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


# -- measuring -------------------------------------------------------------------------------


def time_call(fn: Callable[[], Any], repeats: int) -> tuple[Timing, Any]:
    """Best and median wall time of ``repeats`` calls; returns the last call's value."""
    times: list[float] = []
    value: Any = None
    for _ in range(repeats):
        value = None  # free the previous result before the next run allocates its own
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return Timing(min(times), statistics.median(times), len(times)), value


def layer_inputs(
    inputs: RoundInputs, setup: Setup, layer: str, options: Mapping[str, Any]
) -> LayerInputs:
    """One layer's round as dense tensors, for the dense reference."""
    uploads = sorted(inputs.uploads, key=lambda u: u.cid)
    # Not strict: ``starts`` is empty when the round was built without keep_starts.
    starts = {
        s_cid: start
        for s_cid, start in zip((c.cid for c in setup.clients), inputs.starts, strict=False)
    }
    clients = [setup.client(u.cid) for u in uploads]
    return LayerInputs(
        uploads=tuple(
            {
                part: dense(u.payload[key(layer, part)])
                for part in PAYLOAD_PARTS
                if key(layer, part) in u.payload
            }
            for u in uploads
        ),
        starts=tuple(
            (starts[c.cid].adapter[layer].A, starts[c.cid].adapter[layer].B) for c in clients
        ),
        n_samples=tuple(u.n_samples for u in uploads),
        ranks=tuple(c.rank for c in clients),
        alphas=tuple(c.alpha for c in clients),
        round=inputs.state.round + 1,
        weighting=setup.weighting,
        options=options,
    )


def global_dense(method: Method, state: ServerState, setup: Setup) -> dict[str, torch.Tensor]:
    """The project's global update per layer, multiplied out in float64 (small subsets only)."""
    return {
        layer: left.double() @ right.double()
        for layer, (left, right) in method.global_delta(state, setup).items()
    }


def _options(method: Method) -> dict[str, Any]:
    config = getattr(method, "config", None)
    if config is not None and dataclasses.is_dataclass(config):
        return dataclasses.asdict(config)  # type: ignore[arg-type]
    return {}


def _check_overrides(name: str) -> dict[str, Any]:
    _, config_cls = registry.entry(name)
    fields = {f.name for f in dataclasses.fields(config_cls)}
    return {k: v for k, v in CHECK_OVERRIDES.items() if k in fields}


def _method_setup(
    method: Method, layers: tuple[LayerSpec, ...], ranks: tuple[int, ...], seed: int
) -> tuple[Setup, str]:
    """The federation ``method`` runs on: the requested ranks, or all at the largest rank
    when the method refuses mixed ranks."""
    setup = make_setup(layers, ranks, seed)
    try:
        method.validate(setup)
    except ConfigError:
        uniform = (max(ranks),) * len(ranks)
        return make_setup(layers, uniform, seed), f"refuses mixed ranks: {len(ranks)}×r{max(ranks)}"
    return setup, ""


def _watch(layers: Sequence[LayerSpec]) -> set[tuple[int, int]]:
    """Every layer's m×n and n×m: a tensor of that shape is a dense update."""
    out: set[tuple[int, int]] = set()
    for spec in layers:
        out.add((spec.out_features, spec.in_features))
        out.add((spec.in_features, spec.out_features))
    return out


def bench_method(
    name: str,
    config: BenchConfig,
    subset: tuple[LayerSpec, ...],
    full: tuple[LayerSpec, ...],
    progress: Callable[[str], None],
) -> MethodResult:
    """Measure one method (see the module docstring)."""
    method = registry.build(name)
    setup_sub, note = _method_setup(method, subset, config.ranks, config.seed)
    result = MethodResult(method=name, ranks=tuple(c.rank for c in setup_sub.clients), note=note)

    # Project on the --blocks subset: timing, and the state used for the accuracy check.
    progress(f"{name}: project step on {config.blocks} block(s)")
    sub = synthetic_round(method, setup_sub, config.seed, keep_starts=True)
    # partial, not a lambda: the arguments are bound now, so ``del sub`` below leaves no
    # closure referring to a deleted name.
    result.project_subset, new_state = time_call(
        functools.partial(method.aggregate, sub.state, sub.uploads, setup_sub), config.repeats
    )
    check_method, check_inputs, check_state = method, sub, new_state
    overrides = _check_overrides(name)
    if overrides:
        check_method = registry.build(name, overrides)
        check_inputs = synthetic_round(check_method, setup_sub, config.seed, keep_starts=True)
        check_state = check_method.aggregate(check_inputs.state, check_inputs.uploads, setup_sub)
        result.error_run = "run with " + ", ".join(f"{k}={v}" for k, v in overrides.items())
    del sub, new_state

    reference = references().get(name)
    if reference is not None:
        progress(f"{name}: dense reference on {config.blocks} block(s)")
        opts = _options(check_method)
        inputs = {s.name: layer_inputs(check_inputs, setup_sub, s.name, opts) for s in subset}

        def run_reference() -> dict[str, torch.Tensor]:
            return {layer: reference(inp) for layer, inp in inputs.items()}

        # The dense reference is a few large ops, so the memory probe's per-op cost is
        # negligible next to it: its first timed run is also its measured run.
        watch = _watch(subset)
        probe: list[MemoryUse] = []

        def first_measured() -> dict[str, torch.Tensor]:
            if probe:
                return run_reference()
            measured = measure(run_reference, watch)
            probe.append(measured.use)
            return measured.value

        result.reference, ref_out = time_call(first_measured, config.ref_repeats)
        result.reference_memory = probe[0]
        ours = global_dense(check_method, check_state, setup_sub)
        result.rel_error = max(relative_error(ours[layer], ref_out[layer]) for layer in ref_out)
        del inputs, ref_out, ours
    del check_inputs, check_state

    # Project on the whole model: timing and memory.
    progress(f"{name}: project step on the whole model ({len(full)} layers)")
    setup_full, _ = _method_setup(method, full, config.ranks, config.seed)
    whole = synthetic_round(method, setup_full, config.seed)
    aggregate_full = functools.partial(method.aggregate, whole.state, whole.uploads, setup_full)
    result.project_full, _ = time_call(aggregate_full, config.repeats)
    result.memory = measure(aggregate_full, _watch(full)).use
    del aggregate_full
    ranks = [c.rank for c in setup_full.clients]
    result.stacked_bytes = sum(stacked_bytes(ranks, s.out_features, s.in_features) for s in full)
    result.dense_layer_bytes = max(s.out_features * s.in_features * 4 for s in full)
    del whole
    return result


# -- targets ---------------------------------------------------------------------------------

PAPER_RANKS = (64, 64, 64, 64)
FLORIST_RANKS = (64, 32, 16, 16, 8, 8, 4, 4, 4, 4)


def _by_name(results: Sequence[MethodResult]) -> dict[str, MethodResult]:
    return {r.method: r for r in results}


def _seconds(t: Timing | None) -> str:
    return "-" if t is None else f"{t.median:.3g} s"


def check_targets(config: BenchConfig, results: Sequence[MethodResult]) -> list[TargetCheck]:
    """The issue's item-2 targets, from measured medians only."""
    res = _by_name(results)
    checks: list[TargetCheck] = []
    llama = config.shape == "llama-3.2-3b" and config.ranks == PAPER_RANKS
    all_linear = config.targets is None and config.model_blocks is None
    srd, srd_e, avg, florist = (res.get(n) for n in ("fedsrd", "fedsrd-e", "fedavg", "florist"))

    if (
        llama
        and config.targets is None
        and config.blocks == 1
        and srd is not None
        and srd.ratio is not None
    ):
        checks.append(
            TargetCheck(
                "fedsrd >= 50x faster than dense reference (llama-3.2-3b, 1 block, r=64, K=4)",
                srd.ratio >= 50.0,
                f"{srd.ratio:.0f}x",
            )
        )
    else:
        checks.append(
            TargetCheck(
                "fedsrd >= 50x faster than dense reference (llama-3.2-3b, 1 block, r=64, K=4)",
                None,
                "-",
                "run: --shape llama-3.2-3b --rank 64 --clients 4 --blocks 1",
            )
        )
    if llama and all_linear and srd is not None and srd.project_full is not None:
        checks.append(
            TargetCheck(
                "fedsrd whole llama-3.2-3b server step < 30 s",
                srd.project_full.median < 30.0,
                _seconds(srd.project_full),
            )
        )
    else:
        checks.append(
            TargetCheck(
                "fedsrd whole llama-3.2-3b server step < 30 s",
                None,
                "-",
                "run: --shape llama-3.2-3b --rank 64 --clients 4 (all linear layers)",
            )
        )
    for other, limit in ((srd_e, 2.0), (avg, 3.0)):
        label = f"fedsrd server time <= {limit:g}x {other.method if other else '?'}'s"
        if srd is not None and other is not None and srd.project_full and other.project_full:
            factor = srd.project_full.median / max(other.project_full.median, 1e-12)
            checks.append(TargetCheck(label, factor <= limit, f"{factor:.2f}x"))
        else:
            checks.append(TargetCheck(label, None, "-", "needs both methods in --methods"))
    florist_cfg = (
        config.shape == "tinyllama-1.1b"
        and config.ranks == FLORIST_RANKS
        and set(config.targets or ()) == {"q_proj", "v_proj"}
        and config.model_blocks is None
    )
    if florist_cfg and florist is not None and florist.project_full is not None:
        checks.append(
            TargetCheck(
                "florist tinyllama-1.1b, 10 clients r=64..4: server step < 2 s",
                florist.project_full.median < 2.0,
                _seconds(florist.project_full),
            )
        )
    else:
        checks.append(
            TargetCheck(
                "florist tinyllama-1.1b, 10 clients r=64..4: server step < 2 s",
                None,
                "-",
                "run: --shape tinyllama-1.1b --targets q_proj,v_proj "
                "--ranks 64,32,16,16,8,8,4,4,4,4",
            )
        )
    for r in results:
        if r.memory is None:
            continue
        multiple = r.memory.peak_tensor_bytes / max(r.stacked_bytes, 1)
        ok = multiple <= MEMORY_MULTIPLE and not r.memory.dense_shapes
        formed = f", forms m×n {list(r.memory.dense_shapes)}" if r.memory.dense_shapes else ""
        checks.append(
            TargetCheck(
                f"{r.method}: peak <= {MEMORY_MULTIPLE:g}x stacked factors, no m×n matrix",
                ok,
                f"{multiple:.2f}x{formed}",
            )
        )
    for r in results:
        if r.rel_error is not None:
            checks.append(
                TargetCheck(
                    f"{r.method}: rel. error vs dense reference < {ERROR_LIMIT:g} (float32)",
                    r.rel_error < ERROR_LIMIT,
                    f"{r.rel_error:.1e}",
                    r.error_run,
                )
            )
    return checks


# -- running and reporting -------------------------------------------------------------------


def run_bench(config: BenchConfig, progress: Callable[[str], None] | None = None) -> BenchReport:
    """Benchmark every selected method; torch uses every core for the duration."""
    from fedlora.shapes import layer_specs  # the named model shapes

    say = progress or (lambda text: log.info("%s", text))
    names = list(config.methods) if config.methods else registry.names()
    for n in names:
        registry.entry(n)  # unknown names fail before any work
    targets = list(config.targets) if config.targets else None
    subset = tuple(layer_specs(config.shape, targets, config.blocks))
    full = tuple(layer_specs(config.shape, targets, config.model_blocks))
    warm_up()
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads or os.cpu_count() or threads)
    try:
        report = BenchReport(
            config=config,
            machine={
                "cpus": os.cpu_count(),
                "torch_threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "load_average_1min": _load_average(),
                "subset_layers": len(subset),
                "layers": len(full),
            },
        )
        for n in names:
            result = bench_method(n, config, subset, full, say)
            report.results.append(result)
            say(_summary(result))
    finally:
        torch.set_num_threads(threads)
    report.checks = check_targets(config, report.results)
    return report


def _summary(r: MethodResult) -> str:
    """One progress line with a method's figures, so a run cut short still tells something."""
    err = "-" if r.rel_error is None else f"{r.rel_error:.1e}"
    ratio = "-" if r.ratio is None else f"{r.ratio:.0f}x"
    peak = "-" if r.memory is None else _mb(r.memory.peak_tensor_bytes)
    return (
        f"{r.method}: proj {_secs(r.project_subset)} s / ref {_secs(r.reference)} s "
        f"({ratio}) on the subset, rel.err {err}; whole model {_secs(r.project_full)} s, "
        f"peak {peak} MB, stacked {_mb(r.stacked_bytes)} MB"
    )


def _load_average() -> float | None:
    """The 1-minute load average: timings on a busy 2-core machine are not worth much."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _mb(nbytes: int | None) -> str:
    return "-" if nbytes is None else f"{nbytes / MB:.1f}"


def _secs(t: Timing | None) -> str:
    return "-" if t is None else f"{t.median:.3g}"


def format_table(report: BenchReport) -> str:
    """The human-readable report: one row per method, then the target checks."""
    cfg = report.config
    blocks = f"{cfg.blocks} blk"
    header = [
        "method",
        "clients",
        f"proj s ({blocks})",
        f"ref s ({blocks})",
        "ref/proj",
        "rel.err",
        "proj s (all)",
        "peak MB",
        "stacked MB",
        "peak/stacked",
        "rss MB",
        "m×n formed",
        f"ref peak MB ({blocks})",
    ]
    rows = [header]
    for r in report.results:
        mem = r.memory
        rows.append(
            [
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
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        f"fedlora bench server: shape {cfg.shape}, targets {','.join(cfg.targets) if cfg.targets else 'all linear'}, "
        f"{report.machine['layers']} layers ({report.machine['subset_layers']} in {cfg.blocks} block(s)), "
        f"ranks {','.join(map(str, cfg.ranks))}, torch threads {report.machine['torch_threads']}, "
        f"times = median of {cfg.repeats} (reference: {cfg.ref_repeats}), "
        f"load average at start {report.machine['load_average_1min']}",
    ]
    for i, row in enumerate(rows):
        lines.append(
            "  ".join(
                cell.ljust(w) if j < 2 else cell.rjust(w)
                for j, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
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


def _csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _ranks(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in _csv(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"ranks must be integers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fedlora bench server",
        description="Server aggregation time and peak extra memory of every method on a named "
        "model shape, against a dense reference computed the authors' way on --blocks blocks.",
    )
    p.add_argument(
        "--shape", default="llama-3.2-3b", help="named model shape (default: %(default)s)"
    )
    p.add_argument(
        "--targets",
        type=_csv,
        default=None,
        help="comma-separated module names to adapt (default: every linear layer)",
    )
    p.add_argument(
        "--rank", type=int, default=64, help="LoRA rank of every client (default: %(default)s)"
    )
    p.add_argument(
        "--clients", type=int, default=4, help="number of clients (default: %(default)s)"
    )
    p.add_argument(
        "--ranks",
        type=_ranks,
        default=None,
        help="comma-separated per-client ranks (overrides --rank/--clients); methods "
        "that refuse mixed ranks run with every client at the largest",
    )
    p.add_argument(
        "--blocks",
        type=int,
        default=1,
        help="transformer blocks the dense reference covers (default: %(default)s)",
    )
    p.add_argument(
        "--model-blocks",
        type=int,
        default=None,
        help="blocks of the 'whole model' project run (default: all)",
    )
    p.add_argument("--methods", type=_csv, default=None, help="comma-separated subset of methods")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of the project step")
    p.add_argument("--ref-repeats", type=int, default=1, help="timed runs of the dense reference")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: every core)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument(
        "--json-out", default=None, metavar="PATH", help="also write the JSON report to PATH"
    )
    p.add_argument("--strict", action="store_true", help="exit 1 when a target check fails")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    """Entry point of ``fedlora bench server``; returns the process exit status.

    0 on success (target failures included, unless ``--strict``: then 1); 2 on a bad
    configuration, with a one-line message on stderr.
    """
    out = out or sys.stdout
    args = build_parser().parse_args(argv)
    ranks = args.ranks if args.ranks else (args.rank,) * args.clients
    try:
        config = BenchConfig(
            shape=args.shape,
            targets=args.targets,
            ranks=ranks,
            blocks=args.blocks,
            model_blocks=args.model_blocks,
            methods=args.methods,
            repeats=args.repeats,
            ref_repeats=args.ref_repeats,
            seed=args.seed,
            threads=args.threads,
        )

        def progress(text: str) -> None:
            if not args.quiet:
                print(f"· {text}", file=sys.stderr, flush=True)

        report = run_bench(config, progress)
    except FedloraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as fh:
            json.dump(report_json(report), fh, indent=2)
    if args.json:
        json.dump(report_json(report), out, indent=2)
        out.write("\n")
    else:
        out.write(format_table(report) + "\n")
    failed = any(c.passed is False for c in report.checks)
    return 1 if args.strict and failed else 0
