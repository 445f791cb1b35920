"""The fedlora ClientApp: one federated client per SuperNode, chosen by ``partition-id``.

Flower starts a fresh ClientApp process for every message it delivers, so nothing lives in
memory between rounds: the client rebuilds the base model from the run's config, replays
the base merges it remembers (``context.state``) in the same order as the in-process
runtime (so its base weights are bit-identical), applies the round's broadcast and, when
sampled, trains and uploads. The round itself is :func:`fedlora.runtime.steps.client_step`,
the same function the in-process runtime calls.

Node config: ``partition-id`` (required; client id k trains on partition k) and, for
``data.partition = "files"``, an optional ``data-file`` naming this machine's own JSONL
file instead of ``data.files[k]``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass

import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

from fedlora import config as config_mod
from fedlora.config import DataConfig, RunConfig
from fedlora.data.types import Example
from fedlora.errors import ConfigError, PayloadError
from fedlora.methods.base import ClientSpec, Method, Setup
from fedlora.methods.registry import build
from fedlora.models import resolve_model
from fedlora.runtime.assemble import client_specs
from fedlora.runtime.client_data import client_split
from fedlora.runtime.flower.protocol import (
    RECORD,
    STATE_KEY,
    Instruction,
    Memory,
    Report,
    empty_memory,
    pack_memory,
    read_instruction,
    report_content,
    unpack_memory,
)
from fedlora.runtime.steps import client_step, receive_broadcast
from fedlora.train.adapters import add_into_base, attach_slots, layer_specs
from fedlora.train.batches import Encoded, encode_example, pad_id_of

log = logging.getLogger(__name__)


@dataclass
class ClientParts:
    """What one client needs to play a round."""

    model: nn.Module
    method: Method
    setup: Setup
    client: ClientSpec
    examples: list[Encoded]
    pad_id: int


def client_examples_raw(
    cfg: RunConfig, cid: int, data_file: str | None = None
) -> list[Example]:
    """Client ``cid``'s training examples, split exactly as the in-process runtime splits.

    With ``data.partition = "files"`` only this client's file is read (``data_file`` if
    given, else ``data.files[cid]``), through the same splitter restricted to one client,
    so other clients' files need not exist on this machine.
    """
    if cfg.data.partition == "files":
        path = data_file or cfg.data.files[cid]
        one = DataConfig(clients=1, partition="files", files=(path,),
                         max_train_per_client=cfg.data.max_train_per_client,
                         max_eval_per_domain=cfg.data.max_eval_per_domain)
        return client_split(one, seed=cfg.seed).clients[0]
    if data_file:
        raise ConfigError("node config data-file only applies to data.partition = 'files'")
    return client_split(cfg.data, seed=cfg.seed).clients[cid]


def build_client(cfg: RunConfig, cid: int, data_file: str | None = None) -> ClientParts:
    """Build client ``cid``'s model, method and data the way ``assemble`` builds them.

    The model gets the same seed and the same adapter slots (one per client shape) as the
    in-process runtime's shared model, so training starts from identical weights.
    """
    torch.manual_seed(cfg.seed)
    model, tokenizer = resolve_model(cfg.model.name, seed=cfg.seed)
    clients = client_specs(cfg)
    peft_model = attach_slots(model, [(c.rank, c.alpha) for c in clients],
                              cfg.lora.target_modules)
    setup = Setup(layers=layer_specs(peft_model), clients=clients, seed=cfg.seed,
                  weighting=cfg.federation.weighting)
    method = build(cfg.method.name, cfg.method.options)
    method.validate(setup)
    seq_len = cfg.train.seq_len
    examples = [encode_example(tokenizer, ex.prompt, ex.completion, seq_len)
                for ex in client_examples_raw(cfg, cid, data_file)]
    return ClientParts(peft_model, method, setup, setup.client(cid), examples,
                       pad_id_of(tokenizer))


def client_round(
    ins: Instruction, memory: Memory, partition_id: int, data_file: str | None = None
) -> tuple[Report, Memory]:
    """Play one round for this node: returns the reply and the memory to keep.

    Raises ``PayloadError`` if the message is not meant for this node's partition.
    """
    if ins.cid != partition_id:
        raise PayloadError(f"message for client {ins.cid} reached partition {partition_id}")
    if ins.sync is not None:
        memory = unpack_memory(ins.sync)
    if memory.round != ins.round - 1:
        why = f"client remembers round {memory.round}, round {ins.round} needs {ins.round - 1}"
        log.warning("client %d out of sync: %s", ins.cid, why)
        return Report(cid=ins.cid, round=ins.round, status="out-of-sync", error=why), memory
    cfg = config_mod.from_dict(json.loads(ins.config))
    parts = build_client(cfg, ins.cid, data_file)
    broadcast = receive_broadcast(parts.method, parts.setup, parts.client, ins.broadcast, cfg)
    merges = (*memory.merges, parts.method.base_merge(broadcast, parts.setup))
    # Replay every merge in order, as the shared in-process model received them.
    for merge in merges:
        add_into_base(parts.model, merge)
    outcome = client_step(model=parts.model, method=parts.method, setup=parts.setup,
                          client=parts.client, view=memory.view, broadcast=broadcast,
                          examples=parts.examples, cfg=cfg, round_=ins.round,
                          pad_id=parts.pad_id, train=ins.train)
    report = Report(cid=ins.cid, round=ins.round, status="failed" if outcome.error else "ok",
                    n_samples=outcome.n_samples, train_loss=outcome.train_loss,
                    tokens=outcome.tokens, train_seconds=outcome.train_seconds,
                    overhead_seconds=outcome.overhead_seconds, error=outcome.error)
    if outcome.upload is not None:
        report = dataclasses.replace(report, upload=outcome.upload.data,
                                     params=outcome.upload.params,
                                     encodings=outcome.upload.encodings)
    return report, Memory(ins.round, outcome.view, merges)


def partition_id(context: Context) -> int:
    """This SuperNode's ``partition-id`` node config (an integer)."""
    value = context.node_config.get("partition-id")
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ConfigError("SuperNode needs node config partition-id=<k> (an integer)")
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"SuperNode node config partition-id={value!r} is not an integer") \
            from None


def _data_file(context: Context) -> str | None:
    value = context.node_config.get("data-file")
    return str(value) if value else None


def _memory(context: Context) -> Memory:
    if STATE_KEY in context.state.config_records:
        blob = context.state.config_records[STATE_KEY]["memory"]
        if isinstance(blob, bytes):
            return unpack_memory(blob)
    return empty_memory()


# Flower loads the ClientApp as ``module:attribute``, so the app object must exist at module
# level; creating it does no work.
app = ClientApp()


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Tell the server which partition (client id) this SuperNode serves."""
    return Message(RecordDict({RECORD: ConfigRecord({"partition-id": partition_id(context)})}),
                   reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One round: apply the broadcast, train if sampled, reply with the encoded upload."""
    ins = read_instruction(msg.content)
    report, memory = client_round(ins, _memory(context), partition_id(context),
                                  _data_file(context))
    context.state[STATE_KEY] = ConfigRecord({"memory": pack_memory(memory)})
    return Message(report_content(report), reply_to=msg)
