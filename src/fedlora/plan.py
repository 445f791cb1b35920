"""A run's plan without training: ``fedlora data`` (the partition) and ``fedlora run
--dry-run`` (every path checked, the partition, the parameters adapted, an estimate of memory
per client and the bytes per round per client for the chosen method).

The model is built on the meta device from its ``config.json`` (no weights read), so a plan
of a 7B base takes seconds. Bytes per round are measured, not estimated: the method's real
encoders on synthetic payloads of the model's first block, scaled to all blocks (the same
machinery as ``fedlora comm``).
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from fedlora import config as config_mod
from fedlora.config import RunConfig
from fedlora.errors import ConfigError

DESCRIPTION = (
    "Print how a config splits its data among clients (examples and labels), without training."
)

MIB = 2**20
#: Bytes per base parameter as held on the device, by model.quantize (bitsandbytes NF4
#: stores 4 bits plus a scale per 64 weights; 8-bit one byte).
QUANT_BYTES = {"4bit": 0.5 + 4 / 64, "8bit": 1.0}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="TOML config file")
    p.add_argument("overrides", nargs="*", metavar="key=value")


def partition_lines(cfg: RunConfig) -> list[str]:
    """Examples (train / held out) and label counts per client, and the server's sets."""
    from fedlora.runtime.client_data import client_split, task_heldout

    split = client_split(cfg.data, seed=cfg.seed)
    source = cfg.data.dataset or ("files" if cfg.data.partition == "files" else "built-in")
    lines = [
        f"partition: {cfg.data.partition} over {source}, {cfg.data.clients} clients, "
        f"seed {cfg.seed}"
    ]
    for cid, examples in enumerate(split.clients):
        own = split.heldout.get(f"client{cid}")
        held = f", {len(own.examples)} held out" if own is not None else ""
        labels = split.labels[cid] if cid < len(split.labels) else {}
        unit = "rows"  # a dataset split counts rows; one row may hold several examples
        if not labels:
            labels = dict(sorted(Counter(e.label for e in examples if e.label is not None).items()))
            unit = "examples"
        shown = ", ".join(f"{k}: {v}" for k, v in labels.items()) if labels else "-"
        source = f" from {split.sources[cid]}" if cid < len(split.sources) else ""
        lines.append(
            f"  client {cid}: {len(examples)} training examples{held}{source}; "
            f"labels ({unit}) {shown}"
        )
        if not examples:
            raise ConfigError(f"client {cid} has no training examples; use fewer clients")
    public = {n: h for n, h in split.heldout.items() if h.owner is None}
    public.update(task_heldout(cfg.eval, cfg.data))
    for name, h in public.items():
        lines.append(
            f"  server set {name}: {len(h.examples)} completions, {len(h.questions)} questions"
        )
    return lines


@dataclass(frozen=True)
class ModelPlan:
    base_params: int
    hidden: int
    layers: int
    heads: int
    vocab: int
    adapted: dict[str, tuple[int, int]]  # layer name -> (out_features, in_features)


def model_plan(cfg: RunConfig) -> ModelPlan:
    """The base's size and the layers LoRA adapts, from a meta-device model (no weights)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from fedlora.models import model_folder, validate_model_folder
    from fedlora.models.tiny import tiny_config
    from fedlora.train.adapters import attach_slots, layer_specs

    name = cfg.model.name
    if name in ("tiny-llama", "tiny-qwen2"):
        hf_config = tiny_config(name.removeprefix("tiny-"))  # type: ignore[arg-type]
    else:
        folder = model_folder(name, seed=cfg.seed)
        validate_model_folder(folder)
        hf_config = AutoConfig.from_pretrained(folder, local_files_only=True)
    with torch.device("meta"):
        base = AutoModelForCausalLM.from_config(hf_config)
    count = sum(p.numel() for p in base.parameters())
    peft = attach_slots(base, [(cfg.lora.rank, cfg.lora.alpha)], cfg.lora.peft_targets)
    specs = layer_specs(peft)
    if not specs:
        raise ConfigError(f"lora.target_modules {cfg.lora.peft_targets!r} match no layer")
    return ModelPlan(
        base_params=count,
        hidden=int(hf_config.hidden_size),
        layers=int(hf_config.num_hidden_layers),
        heads=int(hf_config.num_attention_heads),
        vocab=int(hf_config.vocab_size),
        adapted={s.name: (s.out_features, s.in_features) for s in specs},
    )


def memory_lines(cfg: RunConfig, plan: ModelPlan) -> list[str]:
    """Estimated peak memory of one client's training, by part."""
    width = {"float32": 4, "bfloat16": 2, "float16": 2}[cfg.model.dtype]
    per_param = QUANT_BYTES.get(cfg.model.quantize, width)
    rank = max(cfg.client_ranks())
    lora = sum(rank * (m + n) for m, n in plan.adapted.values())
    t = cfg.train
    tokens = t.batch_size * t.seq_len
    # Korthikanti et al. (2022), activations of one transformer layer in 16-bit:
    # s·b·h·(34 + 5·a·s/h) bytes; ×2 in float32. Checkpointing keeps each layer's input
    # (2·s·b·h) plus one layer's full activations for the recomputation.
    scale = width / 2
    per_layer = tokens * plan.hidden * (34 + 5 * plan.heads * t.seq_len / plan.hidden) * scale
    if t.gradient_checkpointing:
        activations = plan.layers * 2 * tokens * plan.hidden * scale + per_layer
    else:
        activations = plan.layers * per_layer
    logits = 2 * tokens * plan.vocab * 4  # float32 logits and their softmax gradient
    parts = {
        "base weights": plan.base_params * per_param,
        "LoRA factors, gradients, AdamW state (float32)": lora * 4 * 4,
        "activations (estimate)": activations + logits,
    }
    total = sum(parts.values())
    out = [f"memory per client (estimate, batch {t.batch_size} × seq {t.seq_len}):"]
    out += [f"  {k}: {v / MIB:,.1f} MiB" for k, v in parts.items()]
    out.append(f"  total: {total / MIB:,.1f} MiB")
    return out


def _block(name: str) -> str:
    match = re.search(r"\.(\d+)\.", name)
    return match.group(1) if match else ""


def bytes_lines(cfg: RunConfig, plan: ModelPlan) -> list[str]:
    """Upload / download bytes per round per client of the configured method, measured on
    the first block's layers and scaled to every block."""
    from fedlora.comm import measure_method
    from fedlora.methods.base import LayerSpec, Setup
    from fedlora.runtime.assemble import build_method, client_specs

    first = _block(next(iter(plan.adapted)))
    chosen = {n: mn for n, mn in plan.adapted.items() if _block(n) == first}
    scale = len(plan.adapted) / len(chosen)
    setup = Setup(
        layers=tuple(LayerSpec(n, in_features=k, out_features=m) for n, (m, k) in chosen.items()),
        clients=client_specs(cfg),
        seed=cfg.seed,
        weighting=cfg.federation.weighting,
    )
    up, down, first_down = measure_method(
        build_method(cfg, setup), value_dtype=cfg.wire.value_dtype, rounds=2
    )
    return [
        f"bytes per round per client ({cfg.method.name}, wire {cfg.wire.value_dtype}; measured "
        f"on 1 block, scaled to {scale:g}×):",
        f"  upload {up.summary(scale)['mb']:.3f} MiB, download {down.summary(scale)['mb']:.3f}"
        f" MiB (first download {first_down.summary(scale)['mb']:.3f} MiB)",
    ]


def check_paths(cfg: RunConfig) -> list[str]:
    """Every path the config names exists (model folder, data files, tasks)."""
    paths = [("data.dataset", cfg.data.dataset)] if cfg.data.dataset else []
    paths += [("data.files", f) for f in cfg.data.files]
    paths += [("eval.tasks", f) for f in cfg.eval.tasks]
    for key, p in paths:
        if not Path(p).expanduser().exists():
            raise ConfigError(f"{key}: {p} does not exist")
    return [f"paths: {len(paths)} data path(s) found; model {cfg.model.name}"]


def dry_run_lines(cfg: RunConfig) -> list[str]:
    """What ``fedlora run --dry-run`` prints."""
    from fedlora.models.placement import placement

    place = placement(cfg.model, cfg.train.device)
    from fedlora.runtime.client_data import with_client_count

    out = check_paths(cfg)
    cfg = with_client_count(cfg)
    out.append(
        f"device {place.device}, base {cfg.model.dtype}"
        + (f" quantized {cfg.model.quantize}" if cfg.model.quantize != "none" else "")
    )
    out += partition_lines(cfg)
    plan = model_plan(cfg)
    kinds = sorted({n.rsplit(".", 1)[-1] for n in plan.adapted})
    rank = max(cfg.client_ranks())
    lora = sum(rank * (m + n) for m, n in plan.adapted.values())
    out.append(
        f"adapted: {len(plan.adapted)} layers ({', '.join(kinds)}), rank {rank}: "
        f"{lora:,} LoRA parameters on a {plan.base_params:,}-parameter base "
        f"({100 * lora / plan.base_params:.2f}%)"
    )
    out += memory_lines(cfg, plan)
    out += bytes_lines(cfg, plan)
    return out


def run(args: argparse.Namespace) -> int:
    """``fedlora data``: the partition a config gives."""
    from fedlora.runtime.client_data import with_client_count

    cfg = with_client_count(config_mod.load(args.config, args.overrides))
    print("\n".join(partition_lines(cfg)))
    return 0
