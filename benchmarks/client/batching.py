"""``python -m benchmarks.client --batching``: real tokens per second of a client's local
training under each ``train.batching`` mode, beside TRL's SFTTrainer in its fastest
configuration that runs here (best-fit-decreasing packing, padding-free).

Scenarios: client 0's training examples of the built-in domains at ``seq_len`` 512, batch 8,
on an iid mix of the four domains (as most users' data is) and on one domain, and the mix at
``seq_len`` 64. Every side trains the same model (one shared base, a LoRA of the run's rank on
every linear layer), in the same dtype, from a fresh adapter, for ``local_steps`` steps; TRL
gets about the same real-token budget per step (packed rows of ``seq_len``). Repeats rotate
the order of the sides; the figures are medians. Reported per side: real (non-padding)
tokens per second, the ratio to ``pad`` and to TRL, the share of computed token slots that
were padding, and the model-FLOP utilisation: the counted matrix-product flops of training on
the real tokens (forward and backward; attention's score products are not counted), per
second, over this machine's matmul rate measured in the same run.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from benchmarks.client.bare_loop import plan_batches
from benchmarks.client.trl_loop import trl_available, trl_packed_round
from benchmarks.common.flops import FlopCounter, machine_rates
from benchmarks.common.measure import load_average, table
from fedlora import config as config_mod
from fedlora.config import RunConfig
from fedlora.methods.base import ClientStart, Setup
from fedlora.methods.common import fresh_lora
from fedlora.runtime.assemble import adapted_model, client_specs
from fedlora.runtime.client_data import client_split
from fedlora.train.adapters import layer_specs, set_trainable, slot_name
from fedlora.train.batches import Encoded, encode, pad_id_of
from fedlora.train.batching import batch_of, sampler
from fedlora.train.lm_loss import completion_only_loss
from fedlora.train.local import LocalRun, train_local

MODES = ("pad", "group", "pack")
SCENARIOS = (("iid", 512), ("domain", 512), ("iid", 64))


@dataclass
class Side:
    """One side of a scenario: its timed repeats and what it computed."""

    name: str
    seconds: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    padding: float | None = None
    """Share of the computed token slots that were padding (None: not known, TRL)."""

    @property
    def tokens_per_s(self) -> float:
        return statistics.median(t / s for t, s in zip(self.tokens, self.seconds, strict=True))


@dataclass
class Scenario:
    data: str
    seq_len: int
    examples: int
    mean_length: float
    sides: dict[str, Side]
    flops_per_token: float
    matmul_gflops: float

    def mfu(self, side: Side) -> float:
        return self.flops_per_token * side.tokens_per_s / (self.matmul_gflops * 1e9)


def scenario_config(cfg: RunConfig, data: str, seq_len: int) -> RunConfig:
    partition = "iid" if data == "iid" else "domain"
    return config_mod.from_dict(
        config_mod.apply_overrides(
            config_mod.to_dict(cfg),
            [f'data.partition="{partition}"', f"train.seq_len={seq_len}", "train.batch_size=8"],
        )
    )


def _examples(cfg: RunConfig, tokenizer: Any) -> list[Encoded]:
    raw = client_split(cfg.data, seed=cfg.seed).clients[0]
    return [encode(tokenizer, e, cfg.train.seq_len, cfg.data.template) for e in raw]


def padding_share(examples: Sequence[Encoded], cfg: RunConfig, mode: str, pad_id: int) -> float:
    """Padding slots over computed slots of the batches ``mode`` draws in one local run."""
    train = dataclasses.replace(cfg.train, batching=mode)
    plan = plan_batches(examples, train, cfg.seed, pad_id)
    slots = sum(b["input_ids"].numel() for step in plan.batches for b in step)
    return 1.0 - plan.tokens / slots


def useful_flops_per_token(
    model: torch.nn.Module, slot: str, examples: Sequence[Encoded], cfg: RunConfig, pad_id: int
) -> tuple[float, FlopCounter]:
    """Counted flops of one packed micro-batch's forward and backward, per real token."""
    picked = [examples[i] for i in sampler(examples, "pack", cfg.train.batch_size, 0).take(8)]
    device = next(model.parameters()).device
    batch = batch_of(picked, "pack", pad_id, cfg.train.seq_len, device)
    model.set_adapter(slot)  # type: ignore[operator]
    params = set_trainable(model, slot, frozenset({"A", "B"}))
    model.train()
    with FlopCounter() as counter:
        completion_only_loss(model, batch).backward()
    model.eval()
    for p in params:
        p.grad = None
        p.requires_grad_(False)
    return counter.total / sum(len(e.input_ids) for e in picked), counter


def measure_scenario(
    cfg: RunConfig,
    data: str,
    seq_len: int,
    repeats: int,
    with_trl: bool,
    say: Callable[[str], None],
) -> Scenario:
    cfg = scenario_config(cfg, data, seq_len)
    clients = client_specs(cfg)
    model, tokenizer = adapted_model(cfg, clients)
    client = clients[0]
    slot = slot_name(client.rank, client.alpha)
    setup = Setup(layers=layer_specs(model), clients=clients, seed=cfg.seed)
    examples = _examples(cfg, tokenizer)
    pad_id = pad_id_of(tokenizer)
    per_token, counter = useful_flops_per_token(model, slot, examples, cfg, pad_id)
    # the rate of the device and precision the model trains in (bf16 on a GPU, say)
    weights = max(model.parameters(), key=lambda p: p.numel())
    rate = machine_rates(counter, weights.device, weights.dtype).get("matmul", float("nan"))
    sides = {m: Side(m, padding=padding_share(examples, cfg, m, pad_id)) for m in MODES}
    trl_model = None
    if with_trl and trl_available():
        from benchmarks.client.bare_loop import bare_peft_model

        trl_model = bare_peft_model(cfg, client)
        sides["trl"] = Side("trl (packing, padding-free)")
    mean_len = statistics.fmean(len(e.input_ids) for e in examples)

    def run(name: str, turn: int) -> tuple[float, int]:
        if name == "trl":
            assert trl_model is not None
            got = trl_packed_round(cfg, trl_model, tokenizer, examples, mean_len, seed=turn)
            return got.seconds, got.tokens
        train = dataclasses.replace(cfg.train, batching=name)
        start = ClientStart(adapter=fresh_lora(setup, client.rank, cfg.seed + turn))
        result = train_local(model, slot, start, examples, train, pad_id, LocalRun(cfg.seed + turn))
        return result.seconds, result.tokens

    names = list(sides)
    for name in names:  # untimed warm-up
        run(name, 0)
    for i in range(repeats):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            seconds, tokens = run(name, i + 1)
            sides[name].seconds.append(seconds)
            sides[name].tokens.append(tokens)
        say(f"{data}@{seq_len}: repeat {i + 1}/{repeats} (load {load_average()[0]:.1f})")
    return Scenario(data, seq_len, len(examples), mean_len, sides, per_token, rate)


def report_lines(scenarios: Sequence[Scenario]) -> list[str]:
    header = ["scenario", "side", "real tok/s", "x pad", "x trl", "padding", "MFU"]
    rows: list[list[str]] = []
    for sc in scenarios:
        pad = sc.sides["pad"].tokens_per_s
        trl = sc.sides["trl"].tokens_per_s if "trl" in sc.sides else None
        for side in sc.sides.values():
            tps = side.tokens_per_s
            rows.append(
                [
                    f"{sc.data}@{sc.seq_len} (mean {sc.mean_length:.0f} tok)",
                    side.name,
                    f"{tps:.0f}",
                    f"{tps / pad:.2f}",
                    "-" if trl is None else f"{tps / trl:.2f}",
                    "-" if side.padding is None else f"{side.padding:.1%}",
                    f"{sc.mfu(side):.1%}",
                ]
            )
    return table(header, rows)


def to_json(scenarios: Sequence[Scenario]) -> list[dict[str, Any]]:
    out = []
    for sc in scenarios:
        entry = dataclasses.asdict(sc)
        entry["tokens_per_s"] = {k: s.tokens_per_s for k, s in sc.sides.items()}
        entry["mfu"] = {k: sc.mfu(s) for k, s in sc.sides.items()}
        out.append(entry)
    return out


def run_batching(
    cfg: RunConfig, repeats: int, with_trl: bool, say: Callable[[str], None]
) -> list[Scenario]:
    return [
        measure_scenario(cfg, data, seq_len, repeats, with_trl, say) for data, seq_len in SCENARIOS
    ]


def print_report(scenarios: Sequence[Scenario], as_json: bool) -> None:
    if as_json:
        print(json.dumps(to_json(scenarios), indent=1))
    else:
        print("\n".join(report_lines(scenarios)))
