"""``python -m benchmarks.client``: local training throughput and the cost of everything around it.

What is measured, in one process (so machine noise hits both sides alike):

1. **Bare loop**: a PEFT LoRA model built straight from the same base model (same device,
   dtype, rank, alpha, target modules, LoRA dropout, gradient checkpointing), AdamW over
   the same LoRA factors the method trains, gradient clipping and accumulation as configured, on exactly the token tensors
   fedlora's client will see in that round (same sampler seed, same collation, computed
   before the clock starts). The timed region holds only PyTorch/PEFT calls.
2. **fedlora's client round** for each method, played by the round driver itself
   (:func:`fedlora.runtime.driver.run_round` over the in-process transport) with the timed
   client alone in its federation (client 0's data and rank, :func:`alone`), so one round
   is one client's round: the server builds, encodes and decodes its broadcast, the base
   merge is added, :func:`fedlora.runtime.steps.client_step` (``client_start`` →
   ``train_local`` → ``upload`` → wire encode) runs, and the server's step decodes the upload
   strictly and aggregates (untimed; ``python -m benchmarks.server`` covers it), so that every repeat
   is a genuine next round (FedSRD alternates B- and A-rounds).

   The time is split into *training* (``train_local`` minus the adapter copies it makes)
   and *everything else*: broadcast build+encode, broadcast decode, base merge,
   ``client_start``, adapter copies into and out of the PEFT slot (``set_lora``,
   ``set_adapter``, ``set_trainable``, ``get_lora``), ``upload`` (sparsification), upload
   encode and upload decode. The pieces inside the client step are timed through its explicit
   timing hook (:mod:`fedlora.train.timing`; nothing is patched). Two costs inside fedlora's
   loop that the bare loop does not pay are timed as well and stay counted as training:
   collation of each batch and the ``live_lora`` view handed to the method's regulariser.

Repeats are interleaved: the order of bare, fedlora (and TRL) rotates from repeat to repeat,
with every method in each repeat, after one untimed warm-up round of each; the figures are medians over repeats, and
the throughput ratio is the median of the per-repeat paired ratios.

With ``--rss`` the peak resident set of short federations (1 round, 1 local step, small
eval) is read from subprocesses for each ``--rss-clients`` count, next to a subprocess that
only loads the model and the model's parameter bytes: since every simulated client shares
one base model, adding clients should add far less than one model copy each.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, TypeVar

import torch

from benchmarks.client.bare_loop import (
    bare_params,
    bare_peft_model,
    bare_train,
    plan_batches,
)
from benchmarks.client.fedlora_round import MethodRun, alone, fedlora_round
from benchmarks.client.report import (
    ClientBenchReport,
    MethodResult,
    Sample,
    format_table,
    report_json,
    summarise,
)
from benchmarks.client.scale import measure_scale, scale_checks, scale_plan
from benchmarks.client.trl_loop import trl_available, trl_round
from benchmarks.common.data import beside
from benchmarks.common.measure import choose_threads, load_average
from benchmarks.common.rss import measure_rss
from fedlora import config as config_mod
from fedlora.config import RunConfig
from fedlora.errors import ConfigError, FedloraError
from fedlora.methods.registry import build
from fedlora.models.placement import device_of, resolve_device
from fedlora.ops.seeds import Stream, client_seed
from fedlora.runtime.assemble import assemble

log = logging.getLogger(__name__)

DEFAULT_METHODS = ("fedavg", "fedsrd")
BENCH_OVERRIDES: tuple[str, ...] = (
    "data.max_train_per_client=64",  # only a few batches are drawn; encoding more is waste
    "data.max_eval_per_domain=1",  # nothing is evaluated
)
"""Applied before the user's ``--set`` overrides; they do not change what is timed."""


# ----------------------------------------------------------------------------- running


@dataclass(frozen=True)
class ClientBenchConfig:
    """One benchmark run; see ``main``'s ``--help`` for the meaning of each field."""

    model: str = "smollm2-135m"
    methods: tuple[str, ...] = DEFAULT_METHODS
    repeats: int = 5
    overrides: tuple[str, ...] = ()
    threads: int | None = None
    rss: bool = False
    rss_clients: tuple[int, ...] = (4, 16)
    rss_dtypes: tuple[str, ...] = ("float32", "bfloat16")
    skip_timing: bool = False
    trl: bool = True
    scale_clients: tuple[int, ...] = ()
    """Registered client counts of the scale runs (:mod:`benchmarks.client.scale`); () = none."""
    scale_sampled: tuple[int, ...] = (10,)

    def __post_init__(self) -> None:
        if self.repeats < 1:
            raise ConfigError(f"--repeats must be >= 1, got {self.repeats}")
        if not self.methods:
            raise ConfigError("--methods must name at least one method")
        if any(k < 1 for k in self.rss_clients):
            raise ConfigError(f"--rss-clients must be positive, got {self.rss_clients}")
        if self.scale_clients:
            scale_plan(self.scale_clients, self.scale_sampled)  # refuses bad counts now

    def run_config(self) -> RunConfig:
        return config_mod.load(
            None, [f"model.name={json.dumps(self.model)}", *BENCH_OVERRIDES, *self.overrides]
        )


def time_methods(
    cfg: RunConfig,
    methods: Sequence[str],
    repeats: int,
    progress: Callable[[str], None] = lambda text: None,
    with_trl: bool = False,
) -> list[MethodResult]:
    """Interleaved bare-vs-fedlora repeats for every method on one shared federation (and,
    ``with_trl``, TRL's SFTTrainer after each pair)."""
    progress(f"assembling {cfg.model.name} federation (the timed client alone)")
    fed = assemble(alone(cfg), lambda kind, info: None)
    client = fed.setup.clients[0]
    runs: dict[str, MethodRun] = {}
    for name in methods:
        options = cfg.method.options if name == cfg.method.name else {}
        runs[name] = MethodRun.start(fed, build(name, options, setup=fed.setup))
    progress("loading the bare PEFT model")
    bare = bare_peft_model(cfg, client)
    examples = fed.train_sets[client.cid]
    trl = None
    if with_trl:
        progress("loading a third copy for TRL's SFTTrainer")
        trl = bare_peft_model(cfg, client)

    def pair(run: MethodRun, turn: int) -> Sample:
        """One repeat: the bare loop, fedlora's round and (if asked) TRL, in an order that
        rotates with ``turn`` so no side always runs first or last."""
        t = run.rs.round + 1
        device = device_of(bare)
        plan = plan_batches(
            examples,
            cfg.train,
            client_seed(fed.setup.seed, Stream.TRAIN, t, client.cid),
            fed.pad_id,
            device,
        )
        got: dict[str, Any] = {}
        peaks: dict[str, int] = {}

        def side(name: str) -> Any:
            if name == "bare":
                params = bare_params(bare, run.trainable)
                return bare_train(bare, params, plan.batches, cfg.train)
            if name == "fedlora":
                return fedlora_round(run)
            assert trl is not None
            return trl_round(cfg, trl, fed.tokenizer, examples, seed=t)

        sides = ["bare", "fedlora"] + (["trl"] if trl is not None else [])
        k = turn % len(sides)
        for name in sides[k:] + sides[:k]:
            got[name], peaks[name] = gpu_peak(device, functools.partial(side, name))
        sample: Sample = got["fedlora"]
        sample.bare_seconds, sample.bare_tokens = got["bare"], plan.tokens
        if "trl" in got:
            sample.trl_seconds, sample.trl_tokens = got["trl"].seconds, got["trl"].tokens
        if device.type == "cuda":
            sample.peak_gpu_bytes = peaks
        if sample.bare_tokens != sample.tokens:
            raise FedloraError(
                f"{run.fed.method.name} round {t}: the bare loop saw "
                f"{sample.bare_tokens} tokens, fedlora {sample.tokens}"
            )
        return sample

    for name, run in runs.items():
        progress(f"warm-up: {name}")
        pair(run, turn=0)
    samples: dict[str, list[Sample]] = {name: [] for name in runs}
    for i in range(repeats):
        for name, run in runs.items():
            progress(f"repeat {i + 1}/{repeats}: {name} (load {load_average()[0]:.1f})")
            samples[name].append(pair(run, turn=i))
    return [summarise(name, samples[name]) for name in runs]


T = TypeVar("T")


def gpu_peak(device: torch.device, work: Callable[[], T]) -> tuple[T, int]:
    """``work()`` and, on CUDA, the peak GPU memory it allocated (0 elsewhere)."""
    if device.type != "cuda":
        return work(), 0
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    out = work()
    torch.cuda.synchronize(device)
    return out, int(torch.cuda.max_memory_allocated(device))


def check_targets(results: Sequence[MethodResult], model: str) -> list[dict[str, Any]]:
    """The targets (``targets.toml``), evaluated from the measured numbers only."""
    limits = beside(__file__, "targets.toml")["training"]
    checks: list[dict[str, Any]] = []
    for r in results:
        if r.trl_ratio is not None:
            checks.append(
                {
                    "check": f"{r.method}: training tok/s >= {limits['over_trl_min']:g} x "
                    "TRL SFTTrainer's",
                    "value": r.trl_ratio,
                    "passed": r.trl_ratio >= limits["over_trl_min"],
                }
            )
        checks.append(
            {
                "check": f"{r.method}: training throughput >= "
                f"{limits['throughput_over_bare_min']:g} x bare",
                "value": r.train_ratio,
                "passed": r.train_ratio >= limits["throughput_over_bare_min"],
            }
        )
        checks.append(
            {
                "check": f"{r.method}: non-training share < "
                f"{limits['non_training_share_max']:.0%} ({model})",
                "value": r.non_training_share,
                "passed": r.non_training_share < limits["non_training_share_max"],
            }
        )
    return checks


def run_bench(
    config: ClientBenchConfig, progress: Callable[[str], None] = lambda text: None
) -> ClientBenchReport:
    """Run the benchmark described by ``config``."""
    threads, why = choose_threads(config.threads)
    progress(f"torch threads: {threads} ({why})")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _run_bench(config, threads, why, progress)
    finally:
        torch.set_num_threads(previous)


def _run_bench(
    config: ClientBenchConfig, threads: int, why: str, progress: Callable[[str], None]
) -> ClientBenchReport:
    cfg = config.run_config()
    load_before = load_average()
    with_trl = config.trl and trl_available()
    results = (
        []
        if config.skip_timing
        else time_methods(cfg, config.methods, config.repeats, progress, with_trl)
    )
    rss = (
        measure_rss(
            cfg.model.name,
            config.rss_clients,
            config.overrides,
            dtypes=config.rss_dtypes,
            threads=threads,
            progress=progress,
        )
        if config.rss
        else None
    )
    scale = [
        run
        for method in (config.methods if config.scale_clients else ())
        for run in measure_scale(
            cfg.model.name,
            method,
            scale_plan(config.scale_clients, config.scale_sampled),
            config.overrides,
            threads=threads,
            progress=progress,
        )
    ]
    t = cfg.train
    settings = {
        "clients": cfg.data.clients,
        "timed_client": 0,
        "rank": cfg.lora.rank,
        "alpha": cfg.lora.alpha,
        "target_modules": list(cfg.lora.target_modules),
        "lora_dropout": cfg.lora.dropout,
        "model_dtype": cfg.model.dtype,
        "quantize": cfg.model.quantize,
        "device": str(resolve_device(t.device)),
        "gradient_checkpointing": t.gradient_checkpointing,
        "batch_size": t.batch_size,
        "seq_len": t.seq_len,
        "local_steps": t.local_steps,
        "grad_accum_steps": t.grad_accum_steps,
        "wire_value_dtype": cfg.wire.value_dtype,
        "repeats": config.repeats,
        "overrides": list(config.overrides),
        "trl": (
            "measured"
            if with_trl
            else "not installed (pip install 'fedlora[bench]')"
            if config.trl
            else "skipped (--no-trl)"
        ),
    }
    return ClientBenchReport(
        model=cfg.model.name,
        settings=settings,
        threads=threads,
        threads_why=why,
        load_before=load_before,
        load_after=load_average(),
        methods=results,
        rss=rss,
        scale=scale,
        checks=check_targets(results, cfg.model.name) + scale_checks(scale),
    )


DESCRIPTION = (
    "Local training throughput of fedlora's client step against a bare "
    "PyTorch + PEFT loop, the share of a round outside training, and "
    "(--rss) peak memory of federations with different client counts, and (--clients) "
    "peak memory and round time against the number of registered clients."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``python -m benchmarks.client`` (own parser or ``fedlora``'s)."""
    p.add_argument(
        "--model",
        default="smollm2-135m",
        help="built-in model name or local folder (default smollm2-135m)",
    )
    p.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        help="comma-separated methods to time (default fedavg,fedsrd)",
    )
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per method (default 5)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="run-config override (repeatable), e.g. --set train.local_steps=5",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: all cores, or 1 when the load average already fills them)",
    )
    p.add_argument(
        "--rss",
        action="store_true",
        help="also measure peak RSS of short federations in subprocesses",
    )
    p.add_argument(
        "--rss-clients", default="4,16", help="client counts of the RSS runs (default 4,16)"
    )
    p.add_argument(
        "--rss-dtypes",
        default="float32,bfloat16",
        help="base dtypes of the RSS runs (default float32,bfloat16)",
    )
    p.add_argument("--rss-only", action="store_true", help="--rss and --no-timing")
    p.add_argument(
        "--clients",
        default="",
        metavar="N,N,...",
        help="also run short federations with these many registered clients (e.g. "
        "10,100,1000), in subprocesses, for peak RSS and round time against the count",
    )
    p.add_argument(
        "--sampled",
        default="10",
        metavar="S,S,...",
        help="clients sampled per round in the --clients runs (default 10; further counts "
        "run at the largest --clients, for server time against the number sampled)",
    )
    p.add_argument("--no-timing", action="store_true", help="skip the throughput timing")
    p.add_argument(
        "--batching",
        action="store_true",
        help="instead: real tokens/s of each train.batching mode and of TRL's packed "
        "SFTTrainer at seq_len 512 (iid mix, one domain) and 64, batch 8",
    )
    p.add_argument(
        "--no-trl", action="store_true", help="do not time TRL's SFTTrainer beside fedlora"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--json-out", metavar="PATH", help="also write the JSON report to PATH")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.client", description=DESCRIPTION)
    add_arguments(p)
    return p


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"{what} must be comma-separated integers, got {text!r}") from None


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    """Entry point of ``python -m benchmarks.client``; returns the process exit status.

    0 on success (target failures included: they are reported, not fatal); 2 on a bad
    configuration or a failed run, with a one-line message on stderr.
    """
    return run(build_parser().parse_args(argv), out)


def batching_main(args: argparse.Namespace, progress: Callable[[str], None]) -> int:
    """``--batching``: the batching modes against each other and TRL (:mod:`.batching`)."""
    from benchmarks.client.batching import print_report, run_batching, to_json

    cfg = config_mod.load(
        None, [f"model.name={json.dumps(args.model)}", *BENCH_OVERRIDES, *args.overrides]
    )
    threads, why = choose_threads(args.threads)
    torch.set_num_threads(threads)
    progress(f"torch threads: {threads} ({why}); load {load_average()}")
    scenarios = run_batching(cfg, args.repeats, not args.no_trl, progress)
    progress(f"load at the end {load_average()}")
    print_report(scenarios, args.json)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(to_json(scenarios), indent=1) + "\n")
    return 0


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """``python -m benchmarks.client`` on parsed options (:func:`add_arguments`)."""
    out = out or sys.stdout

    def progress(text: str) -> None:
        if not args.quiet:
            print(f"· {text}", file=sys.stderr, flush=True)

    if args.batching:
        return batching_main(args, progress)
    try:
        config = ClientBenchConfig(
            model=args.model,
            methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()),
            repeats=args.repeats,
            overrides=tuple(args.overrides),
            threads=args.threads,
            rss=args.rss or args.rss_only,
            rss_clients=_ints(args.rss_clients, "--rss-clients"),
            rss_dtypes=tuple(d.strip() for d in args.rss_dtypes.split(",") if d.strip()),
            skip_timing=args.rss_only or args.no_timing,
            trl=not args.no_trl,
            scale_clients=_ints(args.clients, "--clients"),
            scale_sampled=_ints(args.sampled, "--sampled"),
        )
        report = run_bench(config, progress)
    except (FedloraError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json_out:
        Path(args.json_out).write_text(
            json.dumps(report_json(report), indent=2) + "\n", encoding="utf-8"
        )
    if args.json:
        json.dump(report_json(report), out, indent=2)
        out.write("\n")
    else:
        out.write(format_table(report) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
