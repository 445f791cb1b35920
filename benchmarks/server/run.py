"""``python -m benchmarks.server``: time and measure every method's server step against a dense reference.

For each registered method, on synthetic client updates of a named model shape
(:mod:`benchmarks.common.synthetic`, produced through the method's real hooks):

1. The project's server step (``method.aggregate``) is timed on the first ``--blocks``
   transformer blocks and on the whole model: ``time.perf_counter``, best and median of
   ``--repeats`` runs, torch using every core.
2. Its peak extra memory on the whole model is measured in a separate, untimed run
   (:mod:`benchmarks.common.memory`) and shown next to the size of the stacked client factors
   ``Σ_k r_k (m+n) · 4`` bytes and the largest layer's ``m·n · 4`` bytes.
3. The dense reference (:mod:`benchmarks.server.dense_reference`) computes the same round the way
   the authors' code does, on the ``--blocks`` subset only (it is slow by design), and is
   timed the same way; the ratio reference / project compares like with like (same layers).
4. The relative Frobenius error between the project's global update (``global_delta``,
   multiplied out in float64 on the subset only) and the reference's. Methods with a random
   downlink (an option named ``p_down``: FedSRD, FedSRD-e) are compared in a separate run with
   ``p_down = 0`` on the same synthetic inputs, because a random DARE mask has no dense
   counterpart; the timed runs use the method's defaults.

Methods that refuse mixed client ranks (``validate`` raises) run with every client at the
largest requested rank; the table says so. Target checks (``targets.toml``) are evaluated
from the measured numbers only; a check whose configuration was not run is reported as
``n/a`` with the command that would evaluate it.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

import torch

from benchmarks.common.flops import count_flops, machine_rates, roofline_seconds
from benchmarks.common.measure import load_average
from benchmarks.common.memory import MemoryUse, measure, warm_up
from benchmarks.common.synthetic import RoundInputs, make_setup, synthetic_round
from benchmarks.server.dense_reference import LayerInputs, references, relative_error, stacked_bytes
from benchmarks.server.report import format_table, report_json, summary_line
from benchmarks.server.spec import (
    CHECK_OVERRIDES,
    PAYLOAD_PARTS,
    BenchConfig,
    BenchReport,
    MethodResult,
    Timing,
)
from benchmarks.server.targets import check_targets
from fedlora.errors import ConfigError, FedloraError
from fedlora.methods import registry
from fedlora.methods.base import LayerSpec, Method, ServerState, Setup
from fedlora.methods.common import dense, key

log = logging.getLogger(__name__)

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


def on_device(obj: Any, device: torch.device) -> Any:
    """``obj`` (a state, uploads, payloads, nested in lists, dicts and dataclasses) with
    every tensor moved to ``device``; seeds and shapes stay as they are."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: on_device(v, device) for k, v in obj.items()}
    if isinstance(obj, list | tuple) and not hasattr(obj, "_fields"):
        return type(obj)(on_device(v, device) for v in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        moved = {f.name: on_device(getattr(obj, f.name), device) for f in dataclasses.fields(obj)}
        return dataclasses.replace(obj, **moved)  # type: ignore[type-var]
    return obj


def run_on(device: torch.device, fn: Callable[[], Any]) -> Callable[[], Any]:
    """``fn`` run with ``device`` as torch's default device, finished before it returns (a
    CUDA call only queues work, so a timer must wait for it)."""

    def call() -> Any:
        with device:
            value = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return value

    return call


def resolve(device: str) -> torch.device:
    """``--device`` as a torch device, refused clearly where it does not exist."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device} needs a CUDA GPU; this machine has none")
    return dev


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
        b_basis=starts[clients[0].cid].b_basis.get(layer) if starts else None,
        n_samples=tuple(u.n_samples for u in uploads),
        ranks=tuple(c.rank for c in clients),
        alphas=tuple(c.alpha for c in clients),
        round=inputs.state.round + 1,
        weighting=setup.weighting,
        options=options,
    )


def global_dense(method: Method, state: ServerState) -> dict[str, torch.Tensor]:
    """The project's global update per layer, multiplied out in float64 (small subsets only)."""
    return {
        layer: left.double() @ right.double()
        for layer, (left, right) in method.global_delta(state).items()
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


def _built(
    name: str, layers: tuple[LayerSpec, ...], ranks: tuple[int, ...], seed: int
) -> tuple[Method, str]:
    """Method ``name`` built for the requested ranks, or for all at the largest rank when
    it refuses mixed ranks (then with a note saying so)."""
    try:
        return registry.build(name, setup=make_setup(layers, ranks, seed)), ""
    except ConfigError:
        uniform = make_setup(layers, (max(ranks),) * len(ranks), seed)
        note = f"refuses mixed ranks: {len(ranks)}×r{max(ranks)}"
        return registry.build(name, setup=uniform), note


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
    method, note = _built(name, subset, config.ranks, config.seed)
    setup_sub = method.setup
    result = MethodResult(method=name, ranks=tuple(c.rank for c in setup_sub.clients), note=note)

    # Project on the --blocks subset: timing, and the state used for the accuracy check.
    progress(f"{name}: project step on {config.blocks} block(s)")
    sub = synthetic_round(method, config.seed, keep_starts=True)
    # partial, not a lambda: the arguments are bound now, so ``del sub`` below leaves no
    # closure referring to a deleted name.
    result.project_subset, new_state = time_call(
        functools.partial(method.aggregate, sub.state, sub.uploads), config.repeats
    )
    check_method, check_inputs, check_state = method, sub, new_state
    overrides = _check_overrides(name)
    if overrides:
        check_method = registry.build(name, overrides, setup=setup_sub)
        check_inputs = synthetic_round(check_method, config.seed, keep_starts=True)
        check_state = check_method.aggregate(check_inputs.state, check_inputs.uploads)
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
        ours = global_dense(check_method, check_state)
        result.rel_error = max(relative_error(ours[layer], ref_out[layer]) for layer in ref_out)
        del inputs, ref_out, ours
    del check_inputs, check_state
    progress(f"{name}: project step on the whole model ({len(full)} layers)")
    _bench_whole(name, config, full, result)
    return result


def _bench_whole(
    name: str, config: BenchConfig, full: tuple[LayerSpec, ...], result: MethodResult
) -> None:
    """The whole-model part of :func:`bench_method`: the step's time, memory, flops and
    roofline, and the wire's time against a copy, written into ``result``."""
    method, _ = _built(name, full, config.ranks, config.seed)
    setup_full = method.setup
    whole = synthetic_round(method, config.seed)
    device = resolve(config.device)
    state, uploads = on_device(whole.state, device), on_device(whole.uploads, device)
    aggregate_full = run_on(device, functools.partial(method.aggregate, state, uploads))
    result.project_full, _ = time_call(aggregate_full, config.repeats)
    result.memory = measure(aggregate_full, _watch(full)).use
    counter = count_flops(aggregate_full)
    result.flops = counter.total
    result.whole_model_s = result.project_full.median
    result.gflop_per_s = counter.total / max(result.project_full.median, 1e-12) / 1e9
    result.machine_gflop_per_s = machine_rates(counter, device)
    result.roofline_s = roofline_seconds(counter, result.machine_gflop_per_s)
    del aggregate_full, state, uploads
    ranks = [c.rank for c in setup_full.clients]
    result.stacked_bytes = sum(stacked_bytes(ranks, s.out_features, s.in_features) for s in full)
    result.dense_layer_bytes = max(s.out_features * s.in_features * 4 for s in full)
    result.wire, result.copy, result.upload_bytes = time_wire(
        whole.uploads[0].payload, max(config.repeats, WIRE_REPEATS)
    )


WIRE_REPEATS = 15
"""Round trips timed for the wire (each beside a copy): both take milliseconds, and their times
swing several-fold with the machine's other tenants, so they get more repeats than the steps."""


def time_wire(payload: Mapping[str, Any], repeats: int) -> tuple[Timing, Timing, int]:
    """Encode one upload (float32 values, the positions' smallest code) and decode it
    strictly, as a client and the server do, each time right after copying the encoded
    bytes out and back (the wire's floor: two copies into fresh buffers). Alternating the
    two puts both under the same load; returns the round trip's and the copy's best and
    median of ``repeats``, and the upload's size."""
    from fedlora.wire import decode, encode_with_stats

    data, _ = encode_with_stats(dict(payload), value_dtype="float32")
    source = torch.frombuffer(bytearray(data), dtype=torch.uint8)

    def copies() -> None:
        torch.empty_like(source).copy_(source.clone())

    def round_trip() -> None:
        encoded, _ = encode_with_stats(dict(payload), value_dtype="float32")
        decode(encoded, expected=None, max_bytes=len(encoded))

    wire: list[Timing] = []
    copy: list[Timing] = []
    for _ in range(repeats):
        copy.append(time_call(copies, 1)[0])
        wire.append(time_call(round_trip, 1)[0])
    return _merged(wire), _merged(copy), len(data)


def _merged(runs: list[Timing]) -> Timing:
    times = [run.median for run in runs]
    return Timing(min(times), statistics.median(times), len(times))


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
                "device": config.device,
                "torch": torch.__version__,
                "load_average_1min": _one_minute_load(),
                "subset_layers": len(subset),
                "layers": len(full),
            },
        )
        for n in names:
            result = bench_method(n, config, subset, full, say)
            report.results.append(result)
            say(summary_line(result))
    finally:
        torch.set_num_threads(threads)
    report.checks = check_targets(config, report.results)
    return report


def _one_minute_load() -> float | None:
    load = load_average()[0]
    return None if math.isnan(load) else round(load, 2)


def _csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _ranks(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in _csv(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"ranks must be integers, got {text!r}") from None


DESCRIPTION = (
    "Server aggregation time and peak extra memory of every method on a named "
    "model shape, against a dense reference computed the authors' way on --blocks blocks."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``python -m benchmarks.server`` (own parser or ``fedlora``'s)."""
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
    p.add_argument(
        "--device",
        default="cpu",
        help="where the whole-model step runs: cpu (default), cuda or cuda:N",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument(
        "--json-out", default=None, metavar="PATH", help="also write the JSON report to PATH"
    )
    p.add_argument("--strict", action="store_true", help="exit 1 when a target check fails")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.server", description=DESCRIPTION)
    add_arguments(p)
    return p


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    """Entry point of ``python -m benchmarks.server``; returns the process exit status.

    0 on success (target failures included, unless ``--strict``: then 1); 2 on a bad
    configuration, with a one-line message on stderr.
    """
    return run(build_parser().parse_args(argv), out)


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """``python -m benchmarks.server`` on parsed options (:func:`add_arguments`)."""
    out = out or sys.stdout
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
            device=args.device,
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
