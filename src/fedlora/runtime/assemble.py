"""Build everything a run needs from its config: model, adapter slots, method, client data."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from peft import PeftModel

from fedlora.config import RunConfig
from fedlora.errors import ConfigError
from fedlora.eval.scores import ChoiceQuestion
from fedlora.methods.base import ClientSpec, Factored, Method, Setup
from fedlora.methods.registry import build, entry, make_config
from fedlora.methods.secure import secure_form
from fedlora.methods.uplink import with_uplink
from fedlora.models import model_folder
from fedlora.models.placement import load_base, placement
from fedlora.runtime.client_data import Heldout, client_split, server_heldout, task_heldout
from fedlora.runtime.privacy import Plan as PrivacyPlan
from fedlora.runtime.privacy import plan as privacy_plan
from fedlora.train.adapters import add_into_base, attach_slots, layer_specs
from fedlora.train.batches import Encoded, PackedExamples, encode, pad_id_of, truncated_count

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
    train_sets: dict[int, Sequence[Encoded]]
    """Each client's training examples (packed: :class:`PackedExamples`)."""
    eval_sets: dict[str, EvalSet]
    """Held-out sets the server owns and scores (public data)."""
    pad_id: int
    base_model_ref: str
    client_eval_sets: dict[int, dict[str, EvalSet]] = field(default_factory=dict)
    """Held-out sets of each client's own data, scored on that client (in-process only: a
    server in a deployment holds none)."""
    privacy: PrivacyPlan | None = None
    """The run's differential-privacy plan (None without DP)."""
    clients_info: list[dict[str, Any]] = field(default_factory=list)
    """Per client: where its data comes from (``source``), its training examples and how many
    ``train.seq_len`` cuts (empty on a deployment's server, which reads no client data)."""

    def merge_into_base(self, merge: Mapping[str, Factored]) -> None:
        """Add a round's base merge into the server's model (shared with in-process clients)."""
        add_into_base(self.model, dict(merge))

    def score(self, update: Mapping[str, Factored]) -> dict[str, dict[str, float]]:
        """Scores of the held-out sets the server owns, for its model plus ``update``."""
        from fedlora.runtime.evaluate import evaluate  # evaluate names this class

        return evaluate(self, update)


def encode_heldout(tokenizer: Any, held: Heldout, cfg: RunConfig) -> EvalSet:
    """A held-out set tokenised for scoring (``train.seq_len``, ``data.template``)."""
    return EvalSet(
        [encode(tokenizer, ex, cfg.train.seq_len, cfg.data.template) for ex in held.examples],
        [ChoiceQuestion(q.prompt, tuple(q.choices), q.answer) for q in held.questions],
    )


def build_method(cfg: RunConfig, setup: Setup) -> Method:
    """The configured method built for ``setup`` (ConfigError where it cannot run it),
    wrapped in the uplink sparsifier when ``uplink.sparsify`` asks."""
    return with_uplink(
        build(cfg.method.name, cfg.method.options, setup=setup),
        sparsify=cfg.uplink.sparsify,
        rule=cfg.uplink,
        wire_dtype=cfg.wire.value_dtype,
    )


def keeps_own_parts(cfg: RunConfig) -> bool:
    """Whether the configured method keeps a part on each client (a fact of its class)."""
    cls, _ = entry(cfg.method.name)
    return bool(getattr(cls, "keeps_own_parts", False))


def client_specs(cfg: RunConfig) -> tuple[ClientSpec, ...]:
    return tuple(
        ClientSpec(cid=i, rank=r, alpha=a)
        for i, (r, a) in enumerate(zip(cfg.client_ranks(), cfg.client_alphas(), strict=True))
    )


def adapted_model(cfg: RunConfig, clients: tuple[ClientSpec, ...]) -> tuple[PeftModel, Any]:
    """The base model where and in what precision ``cfg`` asks, with one LoRA slot per client
    shape, and its tokenizer."""
    place = placement(cfg.model, cfg.train.device)
    model, tokenizer = load_base(
        cfg.model, place, seed=cfg.seed, gradient_checkpointing=cfg.train.gradient_checkpointing
    )
    targets = cfg.lora.peft_targets
    try:
        peft_model = attach_slots(
            model, [(c.rank, c.alpha) for c in clients], targets, cfg.lora.dropout
        )
    except ValueError as exc:
        raise ConfigError(f"lora.target_modules {targets!r}: {exc}") from None
    if not layer_specs(peft_model):
        raise ConfigError(f"lora.target_modules {targets!r} match no layer")
    return peft_model, tokenizer


def assemble(
    cfg: RunConfig,
    report: Callable[[str, dict[str, Any]], None],
    *,
    with_client_data: bool = True,
) -> Federation:
    """Load the model, attach one LoRA slot per client shape, pick the method, load data.

    ``with_client_data = False`` builds a deployment's server: no client's training data or
    own held-out set is read (none may even exist on its machine); only the public held-out
    sets the server owns are loaded.
    """
    make_config(cfg.method.name, cfg.method.options)  # a bad option stops here, before loading
    torch.manual_seed(cfg.seed)
    report("status", {"text": f"loading model {cfg.model.name}"})
    clients = client_specs(cfg)
    peft_model, tokenizer = adapted_model(cfg, clients)
    layers = layer_specs(peft_model)
    setup = Setup(layers=layers, clients=clients, seed=cfg.seed, weighting=cfg.federation.weighting)
    method = build_method(cfg, setup)
    dp = privacy_plan(cfg, method)  # a method DP does not compose with stops here
    if cfg.federation.secure:
        secure_form(method)  # so does one secure aggregation does not compose with

    report("status", {"text": "preparing data"})
    seq_len = cfg.train.seq_len
    train_sets: dict[int, Sequence[Encoded]] = {}
    client_eval_sets: dict[int, dict[str, EvalSet]] = {}
    clients_info: list[dict[str, Any]] = []
    if with_client_data:
        split = client_split(cfg.data, seed=cfg.seed)
        template = cfg.data.template
        train_sets = {
            cid: PackedExamples(encode(tokenizer, ex, seq_len, template) for ex in examples)
            for cid, examples in enumerate(split.clients)
        }
        for cid, examples in train_sets.items():
            if not examples:
                raise ConfigError(
                    f"client {cid} has no training examples (data.partition="
                    f"{cfg.data.partition!r}); use fewer clients or more data"
                )
        clients_info = describe_clients(split.sources, train_sets, cfg, report)
        heldout = split.heldout
    else:
        heldout = server_heldout(cfg.data, seed=cfg.seed)
    for name, held in task_heldout(cfg.eval, cfg.data).items():
        if name in heldout:
            raise ConfigError(f"eval.tasks: task {name!r} has the name of a held-out set")
        heldout[name] = held
    eval_sets = {}
    for name, held in heldout.items():
        encoded = encode_heldout(tokenizer, held, cfg)
        if held.owner is None:
            eval_sets[name] = encoded
        else:
            client_eval_sets.setdefault(held.owner, {})[name] = encoded
    return Federation(
        cfg=cfg,
        model=peft_model,
        tokenizer=tokenizer,
        method=method,
        setup=setup,
        train_sets=train_sets,
        eval_sets=eval_sets,
        pad_id=pad_id_of(tokenizer),
        # What the adapter names as its base: a folder that loads outside fedlora.
        base_model_ref=str(model_folder(cfg.model.name, seed=cfg.seed)),
        client_eval_sets=client_eval_sets,
        privacy=dp,
        clients_info=clients_info,
    )


CUT_WARN = 0.25
"""Share of a client's training examples cut by ``train.seq_len`` above which a run warns."""


def describe_clients(
    sources: Sequence[str],
    train_sets: Mapping[int, Sequence[Encoded]],
    cfg: RunConfig,
    report: Callable[[str, dict[str, Any]], None],
) -> list[dict[str, Any]]:
    """Each client's source and example counts; says so when ``train.seq_len`` cuts more
    than :data:`CUT_WARN` of a client's training examples."""
    out = []
    for cid, examples in sorted(train_sets.items()):
        cut = truncated_count(examples)
        out.append(
            {
                "client": cid,
                "source": sources[cid] if cid < len(sources) else "",
                "train_examples": len(examples),
                "cut_by_seq_len": cut,
            }
        )
        if cut > CUT_WARN * len(examples):
            text = (
                f"client {cid}: {cut} of {len(examples)} training examples are longer than "
                f"train.seq_len = {cfg.train.seq_len} tokens and are cut; raise train.seq_len "
                "to train on them whole"
            )
            log.warning(text)
            report("status", {"text": text})
    return out
