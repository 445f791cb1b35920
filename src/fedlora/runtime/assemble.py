"""Build everything a run needs from its config: model, adapter slots, method, client data."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from peft import PeftModel

from fedlora.config import RunConfig
from fedlora.errors import ConfigError
from fedlora.eval.scores import ChoiceQuestion
from fedlora.methods.base import ClientSpec, Method, Setup
from fedlora.methods.registry import build
from fedlora.methods.uplink import with_uplink
from fedlora.models import resolve_model
from fedlora.runtime.client_data import client_split
from fedlora.train.adapters import attach_slots, layer_specs
from fedlora.train.batches import Encoded, encode_example, pad_id_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalSet:
    """A domain's held-out completions and (if it has one) its multiple-choice task."""

    loss_examples: list[Encoded]
    questions: list[ChoiceQuestion]


@dataclass
class Federation:
    """A run's long-lived parts; ``model`` is the one shared base model, wrapped with every
    client shape's LoRA slot."""

    cfg: RunConfig
    model: PeftModel
    tokenizer: Any
    method: Method
    setup: Setup
    train_sets: dict[int, list[Encoded]]
    eval_sets: dict[str, EvalSet]
    pad_id: int
    base_model_ref: str


def build_method(cfg: RunConfig) -> Method:
    """The configured method, wrapped in the uplink sparsifier when ``uplink.sparsify`` asks."""
    return with_uplink(
        build(cfg.method.name, cfg.method.options),
        sparsify=cfg.uplink.sparsify,
        rule=cfg.uplink.rule,
        rescale=cfg.uplink.rescale,
        wire_dtype=cfg.wire.value_dtype,
    )


def client_specs(cfg: RunConfig) -> tuple[ClientSpec, ...]:
    return tuple(
        ClientSpec(cid=i, rank=r, alpha=a)
        for i, (r, a) in enumerate(zip(cfg.client_ranks(), cfg.client_alphas(), strict=True))
    )


def assemble(cfg: RunConfig, report: Callable[[str, dict[str, Any]], None]) -> Federation:
    """Load the model, attach one LoRA slot per client shape, pick the method, load data."""
    torch.manual_seed(cfg.seed)
    report("status", {"text": f"loading model {cfg.model.name}"})
    model, tokenizer = resolve_model(cfg.model.name, seed=cfg.seed)
    clients = client_specs(cfg)
    try:
        peft_model = attach_slots(
            model, [(c.rank, c.alpha) for c in clients], cfg.lora.target_modules
        )
    except ValueError as exc:
        raise ConfigError(f"lora.target_modules {list(cfg.lora.target_modules)}: {exc}") from None
    layers = layer_specs(peft_model)
    if not layers:
        raise ConfigError(f"lora.target_modules {list(cfg.lora.target_modules)} match no layer")
    setup = Setup(layers=layers, clients=clients, seed=cfg.seed, weighting=cfg.federation.weighting)
    method = build_method(cfg)
    method.validate(setup)

    report("status", {"text": "preparing data"})
    split = client_split(cfg.data, seed=cfg.seed)
    seq_len = cfg.train.seq_len
    train_sets = {
        cid: [encode_example(tokenizer, ex.prompt, ex.completion, seq_len) for ex in examples]
        for cid, examples in enumerate(split.clients)
    }
    for cid, examples in train_sets.items():
        if not examples:
            raise ConfigError(
                f"client {cid} has no training examples (data.partition="
                f"{cfg.data.partition!r}); use fewer clients or more data"
            )
    eval_sets = {
        name: EvalSet(
            [encode_example(tokenizer, ex.prompt, ex.completion, seq_len) for ex in held.examples],
            [ChoiceQuestion(q.prompt, tuple(q.choices), q.answer) for q in held.questions],
        )
        for name, held in split.heldout.items()
    }
    return Federation(
        cfg=cfg,
        model=peft_model,
        tokenizer=tokenizer,
        method=method,
        setup=setup,
        train_sets=train_sets,
        eval_sets=eval_sets,
        pad_id=pad_id_of(tokenizer),
        base_model_ref=cfg.model.name,
    )
