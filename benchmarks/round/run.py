"""``python -m benchmarks.round``: what a whole round costs, FedSRD against FedAvg, in two settings
printed side by side.

1. **The demo's budget, measured.** The demo federation (``configs/demo.toml`` or
   ``--config``) is played for ``--rounds`` rounds of each method in this process, with
   evaluation cut to one item per set; the last round, which also evaluates, is played but
   not counted. From each round's own record: local training (summed over the clients, who
   take turns on this one machine), the clients' other work (applying the broadcast, adapter
   copies, sparsification, upload encoding), the server's step, and the rest of the round
   (broadcast build, encode and decode, base merge, bookkeeping).
2. **The FedSRD paper's setting, extrapolated from measurements.** The model shape
   (``--shape``, Llama-3.2-3B), the adapter and the tokens per client round come from the
   paper's config (``--paper-config``: local steps × accumulation × batch sequences of
   ``seq_len`` tokens). Per sequence, a client's training step is *measured here*: a
   random-weight model of that architecture (PEFT LoRA of the config's rank on all linear
   layers, gradient checkpointing, fedlora's loss over the second half of each sequence, as
   a completion) is trained at depth 1 and 2; the difference is one decoder layer's cost and
   the rest is the embedding and head, so depth ``L`` costs ``T(1) + (L − 1)·(T(2) − T(1))``.
   The server's step and one upload's encode + strict decode are ``python -m benchmarks.server``'s
   whole-model figures for that shape. Clients train in parallel there (a GPU each), so a
   round is one client's training, two wire round trips (its upload, and a broadcast taken to
   cost as much) and the server's step.

Last, the paper's own FedAvg round (minutes on A800 GPUs, :data:`PAPER_MINUTES`) is taken as
everything but the server and the wire, and this machine's server and wire figures are put
on top of it for each method: an upper bound for fedlora's FedSRD round on the paper's
hardware, since a GPU runs the server step faster than these CPUs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch
from transformers import PreTrainedModel

from benchmarks.common.measure import load_average, table
from fedlora import config as config_mod
from fedlora.config import MethodChoice, RunConfig
from fedlora.errors import ConfigError, FedloraError
from fedlora.shapes import ModelShape, model_shape

PAPER_MINUTES = {"fedavg": 1.92, "fedsrd": 7.92}
"""Minutes per round the FedSRD paper reports on A800 GPUs (Llama-3.2-3B, 4 clients)."""
VOCAB = {"llama-3.2-3b": 128256, "tinyllama-1.1b": 32000, "qwen2-7b": 152064, "smollm2-135m": 49152}
"""Vocabulary sizes from each model's config.json (the shapes table has only the decoder's)."""
TIED = {"llama-3.2-3b": True, "tinyllama-1.1b": False, "qwen2-7b": False, "smollm2-135m": True}
"""Whether the model ties its head to its embedding."""


@dataclass(frozen=True)
class DemoRound:
    """Medians over the counted rounds of one method at the demo's budget (seconds)."""

    method: str
    rounds: list[int]
    round_s: float
    train_s: float
    client_other_s: float
    server_s: float

    @property
    def rest_s(self) -> float:
        return self.round_s - self.train_s - self.client_other_s - self.server_s


@dataclass(frozen=True)
class PaperRound:
    """One method's round in the paper's setting (seconds; see the module docstring)."""

    method: str
    client_train_s: float
    wire_s: float
    server_s: float

    @property
    def round_s(self) -> float:
        return self.client_train_s + 2 * self.wire_s + self.server_s


@dataclass
class RoundCostReport:
    settings: dict[str, Any]
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float] = (float("nan"),) * 3
    demo: list[DemoRound] = field(default_factory=list)
    step_s: dict[int, float] = field(default_factory=dict)
    """Measured seconds of one training step on one sequence, by model depth."""
    paper: list[PaperRound] = field(default_factory=list)


# --------------------------------------------------------------------------- the demo's rounds


def demo_round(cfg: RunConfig, method: str, rounds: int) -> DemoRound:
    """Play ``rounds`` + 1 rounds of ``method`` on ``cfg``'s federation; figures of the first
    ``rounds`` (the last one evaluates)."""
    from fedlora.runtime.simulation import run

    with tempfile.TemporaryDirectory(prefix="fedlora-round-") as tmp:
        out = Path(tmp) / "run"
        mine = dataclasses.replace(
            cfg,
            out_dir=str(out),
            method=MethodChoice(name=method, options={}),
            federation=dataclasses.replace(cfg.federation, rounds=rounds + 1),
            eval=dataclasses.replace(cfg.eval, every=10**9),
            data=dataclasses.replace(cfg.data, max_eval_per_domain=1),
        )
        run(mine)
        lines = (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    records = [r for r in map(json.loads, lines) if "round_seconds" in r][:rounds]
    if not records:
        raise FedloraError(f"{method}: the demo run wrote no round records")
    return DemoRound(
        method=method,
        rounds=[r["round"] for r in records],
        round_s=statistics.median(r["round_seconds"] for r in records),
        train_s=statistics.median(sum(r["train_seconds"].values()) for r in records),
        client_other_s=statistics.median(
            sum(r["client_overhead_seconds"].values()) for r in records
        ),
        server_s=statistics.median(r["server_seconds"] for r in records),
    )


# ----------------------------------------------------------- one training step of an architecture


def _decoder(shape: ModelShape, depth: int) -> PreTrainedModel:
    """A random-weight Llama-style decoder of ``shape`` cut to ``depth`` layers (float32)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if shape.name not in VOCAB:
        raise ConfigError(f"no vocabulary size known for shape {shape.name!r}")
    cfg = LlamaConfig(
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=depth,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        head_dim=shape.head_dim,
        vocab_size=VOCAB[shape.name],
        tie_word_embeddings=TIED[shape.name],
        max_position_embeddings=4096,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg)


def train_step_seconds(
    shape: ModelShape, depth: int, rank: int, alpha: float, seq_len: int, repeats: int
) -> float:
    """Median seconds of one LoRA training step (forward, loss, backward) on one sequence of
    ``seq_len`` tokens, its second half labelled, on a ``depth``-layer model of ``shape``."""
    from fedlora.train.adapters import attach_slots, set_trainable, slot_name
    from fedlora.train.batches import IGNORE
    from fedlora.train.lm_loss import completion_only_loss

    base = _decoder(shape, depth)
    base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model = attach_slots(base, [(rank, alpha)], "all-linear", dropout=0.05)
    model.set_adapter(slot_name(rank, alpha))
    params = set_trainable(model, slot_name(rank, alpha), frozenset({"A", "B"}))
    model.train()
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB[shape.name], (1, seq_len), generator=gen)
    labels = ids.clone()
    labels[:, : seq_len // 2] = IGNORE
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}

    def step() -> None:
        completion_only_loss(model, batch).backward()
        for p in params:
            p.grad = None

    step()  # warm-up
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        step()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


# --------------------------------------------------------------------------------- the report


def run_bench(
    demo_cfg: RunConfig,
    paper_cfg: RunConfig,
    shape_name: str,
    methods: Sequence[str],
    rounds: int,
    repeats: int,
    progress: Callable[[str], None] = lambda text: None,
) -> RoundCostReport:
    """Measure both settings (see the module docstring)."""
    from benchmarks.server import run as server_bench
    from benchmarks.server.spec import BenchConfig

    shape = model_shape(shape_name)
    t, lora = paper_cfg.train, paper_cfg.lora
    sequences = t.local_steps * t.grad_accum_steps * t.batch_size
    report = RoundCostReport(
        settings={
            "demo": {
                "model": demo_cfg.model.name,
                "clients": demo_cfg.data.clients,
                "rank": demo_cfg.lora.rank,
                "target_modules": list(demo_cfg.lora.target_modules),
                "local_steps": demo_cfg.train.local_steps,
                "batch_size": demo_cfg.train.batch_size,
                "seq_len": demo_cfg.train.seq_len,
                "rounds_counted": rounds,
            },
            "paper": {
                "shape": shape.name,
                "layers": shape.layers,
                "clients": paper_cfg.data.clients,
                "rank": lora.rank,
                "alpha": lora.alpha,
                "sequences_per_client_round": sequences,
                "seq_len": t.seq_len,
                "paper_minutes": PAPER_MINUTES,
            },
            "threads": torch.get_num_threads(),
        },
        load_before=load_average(),
    )
    for method in methods:
        progress(f"demo budget: {method}, {rounds} + 1 rounds")
        report.demo.append(demo_round(demo_cfg, method, rounds))
    for depth in (1, 2):
        progress(f"paper setting: one {t.seq_len}-token step of a {depth}-layer {shape.name}")
        report.step_s[depth] = train_step_seconds(
            shape, depth, lora.rank, lora.alpha, t.seq_len, repeats
        )
    per_layer = report.step_s[2] - report.step_s[1]
    step = report.step_s[1] + (shape.layers - 1) * per_layer
    progress(f"paper setting: server step and wire of {shape.name} (python -m benchmarks.server)")
    server = server_bench.run_bench(
        BenchConfig(
            shape=shape.name,
            ranks=(lora.rank,) * paper_cfg.data.clients,
            blocks=1,
            methods=tuple(methods),
            repeats=repeats,
            ref_repeats=1,
        ),
        progress,
    )
    for r in server.results:
        if r.whole_model_s is None or r.wire is None:
            raise FedloraError(f"{r.method}: the server benchmark measured no whole-model step")
        report.paper.append(PaperRound(r.method, sequences * step, r.wire.median, r.whole_model_s))
    report.load_after = load_average()
    return report


def ratio(rows: Sequence[Any], attr: str, num: str = "fedsrd", den: str = "fedavg") -> float | None:
    """``attr`` of method ``num`` over that of ``den`` (None unless both were measured)."""
    by = {r.method: getattr(r, attr) for r in rows}
    return by[num] / by[den] if num in by and den in by else None


def on_paper_hardware(report: RoundCostReport) -> dict[str, float]:
    """Minutes per round: the paper's FedAvg round as everything but server and wire, plus
    this machine's server and wire seconds for each method (FedAvg's own included)."""
    base = PAPER_MINUTES["fedavg"] * 60
    return {p.method: (base + p.server_s + 2 * p.wire_s) / 60 for p in report.paper}


def report_json(report: RoundCostReport) -> dict[str, Any]:
    out = dataclasses.asdict(report)
    for row, d in zip(out["demo"], report.demo, strict=True):
        row["rest_s"] = d.rest_s
    for row, p in zip(out["paper"], report.paper, strict=True):
        row["round_s"] = p.round_s
    out["demo_round_ratio"] = ratio(report.demo, "round_s")
    out["paper_round_ratio"] = ratio(report.paper, "round_s")
    out["on_paper_hardware_minutes"] = on_paper_hardware(report)
    return out


def _load(v: Sequence[float]) -> str:
    return "/".join(f"{x:.2f}" for x in v)


def format_table(report: RoundCostReport) -> str:
    d, p = report.settings["demo"], report.settings["paper"]
    counted = report.demo[0].rounds if report.demo else []
    out = [
        f"python -m benchmarks.round: torch threads {report.settings['threads']}, load average "
        f"before {_load(report.load_before)}, after {_load(report.load_after)}",
        "",
        f"Demo budget, measured: {d['model']}, {d['clients']} clients taking turns, rank "
        f"{d['rank']} on {','.join(d['target_modules'])}, {d['local_steps']} steps x batch "
        f"{d['batch_size']} x seq {d['seq_len']}; medians of rounds "
        + ", ".join(str(x) for x in counted),
    ]
    out += table(
        ["method", "round s", "training s", "client other s", "server s", "rest s"],
        [
            [
                r.method,
                f"{r.round_s:.2f}",
                f"{r.train_s:.2f}",
                f"{r.client_other_s:.3f}",
                f"{r.server_s:.3f}",
                f"{r.rest_s:.3f}",
            ]
            for r in report.demo
        ],
    )
    demo_ratio = ratio(report.demo, "round_s")
    if demo_ratio is not None:
        out.append(f"  FedSRD / FedAvg round time: {demo_ratio:.3f}")
    steps = ", ".join(f"depth {k}: {v:.2f} s" for k, v in sorted(report.step_s.items()))
    out += [
        "",
        f"Paper setting, extrapolated: {p['shape']} ({p['layers']} layers), {p['clients']} "
        f"clients in parallel, r={p['rank']} all-linear, {p['sequences_per_client_round']} "
        f"sequences of {p['seq_len']} tokens per client round",
        f"  one training step on one sequence, measured: {steps}",
    ]
    out += table(
        ["method", "client training h", "wire s (x2)", "server s", "round h"],
        [
            [
                r.method,
                f"{r.client_train_s / 3600:.2f}",
                f"{r.wire_s:.3f}",
                f"{r.server_s:.3f}",
                f"{r.round_s / 3600:.4f}",
            ]
            for r in report.paper
        ],
    )
    paper_ratio = ratio(report.paper, "round_s")
    if paper_ratio is not None:
        out.append(f"  FedSRD / FedAvg round time on this machine: {paper_ratio:.5f}")
    hw = on_paper_hardware(report)
    if hw:
        reported = p["paper_minutes"]
        out += [
            "",
            "On the paper's hardware: its FedAvg round "
            f"({reported['fedavg']:g} min) plus this machine's server and wire seconds",
        ]
        out += table(
            ["method", "fedlora min (upper bound)", "paper min"],
            [[m, f"{v:.3f}", f"{reported.get(m, float('nan')):g}"] for m, v in hw.items()],
        )
        if "fedsrd" in hw and "fedavg" in hw:
            out.append(
                f"  FedSRD / FedAvg: fedlora {hw['fedsrd'] / hw['fedavg']:.3f}, paper "
                f"{reported['fedsrd'] / reported['fedavg']:.3f}"
            )
    return "\n".join(out)


DESCRIPTION = (
    "Whole-round cost of FedSRD against FedAvg: measured at the demo's budget, and "
    "extrapolated to the FedSRD paper's Llama-3.2-3B setting from measured per-sequence "
    "training steps and measured server and wire times."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="configs/demo.toml", help="the demo budget's run config")
    p.add_argument(
        "--paper-config",
        default="configs/paper/fedsrd-llama3.2-3b.toml",
        help="the paper setting's run config (its adapter, clients and tokens per round)",
    )
    p.add_argument("--shape", default="llama-3.2-3b", help="model shape of the paper setting")
    p.add_argument("--methods", default="fedavg,fedsrd", help="comma-separated methods")
    p.add_argument("--rounds", type=int, default=2, help="demo rounds counted (default 2)")
    p.add_argument("--repeats", type=int, default=2, help="timed repeats of each step")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--json-out", metavar="PATH", help="also write the JSON report to PATH")


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        if args.rounds < 1 or args.repeats < 1:
            raise ConfigError("--rounds and --repeats must be at least 1")
        for path in (args.config, args.paper_config):
            if not Path(path).is_file():
                raise ConfigError(f"config file {path} not found")
        demo_cfg = config_mod.load(Path(args.config), list(args.overrides))
        paper_cfg = config_mod.load(Path(args.paper_config), [])
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        report = run_bench(
            demo_cfg,
            paper_cfg,
            args.shape,
            methods,
            args.rounds,
            args.repeats,
            lambda text: print(f"· {text}", file=sys.stderr, flush=True),
        )
    except (FedloraError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    data = report_json(report)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    if args.json:
        json.dump(data, out, indent=2)
        out.write("\n")
    else:
        out.write(format_table(report) + "\n")
    return 0


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.round", description=DESCRIPTION)
    add_arguments(p)
    return run(p.parse_args(argv), out)


if __name__ == "__main__":
    sys.exit(main())
