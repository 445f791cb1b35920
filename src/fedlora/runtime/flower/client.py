"""One client's round in a Flower run (no Flower types here: ``client_app`` translates).

Flower starts a fresh ClientApp process for every message it delivers, so nothing lives in
memory between rounds: the client rebuilds the base model from the run's config, replays
the base merges it remembers in the same order as the in-process runtime (so its base
weights are bit-identical), applies the round's broadcast and, when sampled, trains and
uploads. The round itself is :func:`fedlora.runtime.steps.client_step`, the same function
the in-process runtime calls.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel

from fedlora import config as config_mod
from fedlora.config import DataConfig, RunConfig
from fedlora.data.types import Example
from fedlora.errors import ConfigError, FedloraError, PayloadError
from fedlora.methods.base import ClientSpec, Method, Setup
from fedlora.methods.common import dense
from fedlora.methods.half_round import Turn
from fedlora.models import model_folder
from fedlora.runtime.assemble import (
    adapted_model,
    build_method,
    client_specs,
    encode_heldout,
    keeps_own_parts,
)
from fedlora.runtime.client_data import client_split, own_data
from fedlora.runtime.driver import learnt
from fedlora.runtime.evaluate import score_sets
from fedlora.runtime.flower.protocol import (
    NODE_DATA,
    EvalInstruction,
    EvalReport,
    Instruction,
    Memory,
    unpack_memory,
)
from fedlora.runtime.outcome import ClientOutcome
from fedlora.runtime.own_parts import OwnParts, client_folder
from fedlora.runtime.steps import ClientSide, client_step, receive_broadcast
from fedlora.train.adapters import add_into_base, layer_specs
from fedlora.train.batches import Encoded, encode, pad_id_of
from fedlora.train.peft_io import compact, write_adapter
from fedlora.train.threads import resolve_threads, use_threads
from fedlora.wire import decode

log = logging.getLogger(__name__)


@dataclass
class ClientParts:
    """What one client needs to play a round."""

    model: PeftModel
    method: Method
    setup: Setup
    client: ClientSpec
    pad_id: int
    tokenizer: Any


def node_data(cfg: RunConfig, data_file: str | None) -> DataConfig:
    """The data config this node reads: the server's, with the data path the node's own.

    A node holding a client file or a split dataset reads only what its node config names
    (``data-file``); the config the server sends holds no path (:data:`NODE_DATA`), and a
    path it holds anyway is refused rather than read.
    """
    data = cfg.data
    needs_file = data.partition == "files" or bool(data.dataset)
    if not needs_file:
        if data_file:
            raise ConfigError(
                "node config data-file is for client files or a split dataset; this run "
                "uses the built-in domains"
            )
        return data
    if not data_file:
        raise ConfigError(
            "this SuperNode's node config names no data-file: a node reads only the data "
            "its own node config names (--node-config 'data-file=\"/path\"')"
        )
    sent = data.dataset or next(iter(data.files), NODE_DATA)
    if sent != NODE_DATA:
        raise ConfigError("the server's config names a data path; a node reads only its own")
    if data.dataset:
        return dataclasses.replace(data, dataset=data_file)
    return dataclasses.replace(data, files=(data_file,) * len(data.files))


def client_examples_raw(cfg: RunConfig, cid: int, data_file: str | None = None) -> list[Example]:
    """Client ``cid``'s training examples, split exactly as the in-process runtime splits:
    its own file (or its part of the dataset) named by the node config, else its part of
    the built-in domains."""
    data = node_data(cfg, data_file)
    if data.partition == "files" or data.dataset:
        return own_data(data, cid, None, cfg.seed).clients[0]
    return client_split(data, seed=cfg.seed).clients[cid]


def build_client(cfg: RunConfig, cid: int) -> ClientParts:
    """Build client ``cid``'s model and method the way ``assemble`` builds them.

    The model gets the same seed and the same adapter slots (one per client shape) as the
    in-process runtime's shared model, so training starts from identical weights.
    """
    use_threads(resolve_threads(cfg.train.threads))
    torch.manual_seed(cfg.seed)
    clients = client_specs(cfg)
    peft_model, tokenizer = adapted_model(cfg, clients)
    setup = Setup(
        layers=layer_specs(peft_model),
        clients=clients,
        seed=cfg.seed,
        weighting=cfg.federation.weighting,
    )
    method = build_method(cfg, setup)
    return ClientParts(
        peft_model, method, setup, setup.client(cid), pad_id_of(tokenizer), tokenizer
    )


def own_store(cfg: RunConfig, state_dir: str | None, run: str, cid: int) -> OwnParts | None:
    """This node's store of its client's own parts, where the method keeps any: under the
    node's ``state-dir``, by run token (``fedlora.runtime.own_parts``)."""
    if not keeps_own_parts(cfg):
        return None
    if not state_dir:
        raise ConfigError(
            f"{cfg.method.name} keeps each client's own part on its node: this SuperNode's node "
            "config names no state-dir (--node-config 'state-dir=\"/path\"')"
        )
    try:
        return OwnParts(client_folder(Path(state_dir), run, cid))
    except ValueError as exc:
        raise PayloadError(str(exc)) from None


def client_round(
    ins: Instruction,
    memory: Memory,
    partition_id: int,
    data_file: str | None = None,
    state_dir: str | None = None,
) -> tuple[ClientOutcome, Memory]:
    """Play one round for this node: returns the reply and the memory to keep.

    Raises ``PayloadError`` if the message is not meant for this node's partition. Data the
    node cannot read fails its training (reported), not the broadcast, which it applies.
    A method that keeps own parts keeps them under ``state_dir`` (the node's own folder).
    """
    if ins.cid != partition_id:
        raise PayloadError(f"message for client {ins.cid} reached partition {partition_id}")
    if ins.sync is not None:
        memory = unpack_memory(ins.sync)
    if memory.round != ins.round - 1:
        why = f"client remembers round {memory.round}, round {ins.round} needs {ins.round - 1}"
        log.warning("client %d out of sync: %s", ins.cid, why)
        stale = ClientOutcome(ins.cid, ins.round, error=why, in_sync=False, nonce=ins.nonce)
        return stale, memory
    cfg = config_mod.from_dict(json.loads(ins.config))
    parts = build_client(cfg, ins.cid)
    examples: list[Encoded] = []
    unreadable = None
    store = None
    if ins.train:
        try:
            store = own_store(cfg, state_dir, ins.run, ins.cid)
            raw = client_examples_raw(cfg, ins.cid, data_file)
            examples = [
                encode(parts.tokenizer, ex, cfg.train.seq_len, cfg.data.template) for ex in raw
            ]
        except FedloraError as exc:
            unreadable = f"client failed: {exc}"
    broadcast = receive_broadcast(parts.method, parts.setup, parts.client, ins.broadcast, cfg)
    merges = (*memory.merges, parts.method.base_merge(broadcast))
    # Replay every merge in order, as the shared in-process model received them.
    for merge in merges:
        add_into_base(parts.model, merge)
    side = ClientSide(parts.model, parts.method, parts.setup, cfg, parts.pad_id)
    own = store.before(ins.round) if store is not None else None
    turn = Turn(parts.client, ins.round, memory.view, broadcast, own)
    outcome = client_step(side, turn, examples, train=ins.train and unreadable is None)
    if store is not None and outcome.upload is not None:
        store.save(ins.round, outcome.own)
    outcome.error = unreadable or outcome.error
    outcome.nonce = ins.nonce
    assert outcome.start is not None
    return outcome, Memory(ins.round, dict(outcome.start.view), merges)


def client_evaluate(
    ins: EvalInstruction,
    memory: Memory,
    partition_id: int,
    data_file: str | None = None,
    state_dir: str | None = None,
) -> EvalReport:
    """Score the global model on this client's own held-out data (federated evaluation).

    The base is rebuilt with the merges the client remembers (it must remember round
    ``ins.round``), the global update is added on top (with the client's own part, where the
    method keeps one), and only this node's file is read. After the last round such a
    client writes its own model as a PEFT folder beside its parts.
    """
    if ins.cid != partition_id:
        raise PayloadError(f"message for client {ins.cid} reached partition {partition_id}")
    if memory.round != ins.round:
        why = f"client remembers round {memory.round}, evaluation is of round {ins.round}"
        return EvalReport(ins.cid, ins.round, "out-of-sync", error=why, nonce=ins.nonce)
    cfg = config_mod.from_dict(json.loads(ins.config))
    try:
        store = own_store(cfg, state_dir, ins.run, ins.cid)
    except FedloraError as exc:
        return EvalReport(ins.cid, ins.round, "failed", error=str(exc), nonce=ins.nonce)
    if not cfg.data.own_heldout and not (ins.final and store is not None):
        return EvalReport(ins.cid, ins.round, "ok", nonce=ins.nonce)
    parts = build_client(cfg, ins.cid)
    for merge in memory.merges:
        add_into_base(parts.model, merge)
    payload = decode(ins.update, expected=None, max_bytes=int(cfg.wire.max_payload_mb * 2**20))
    update = {
        s.name: (dense(payload[f"{s.name}.L"]), dense(payload[f"{s.name}.R"]))
        for s in parts.setup.layers
        if f"{s.name}.L" in payload
    }
    if store is not None:
        own = store.before(ins.round + 1)
        update = parts.method.own_update(update, own, parts.client)
        if ins.final:
            write_adapter(
                store.folder / "adapter",
                compact(learnt(parts.setup, memory.merges, update)),
                base_model=str(model_folder(cfg.model.name, seed=cfg.seed)),
            )
    if not cfg.data.own_heldout:
        return EvalReport(ins.cid, ins.round, "ok", nonce=ins.nonce)
    held = own_data(node_data(cfg, data_file), ins.cid, None, cfg.seed).heldout
    sets = {name: encode_heldout(parts.tokenizer, h, cfg) for name, h in held.items()}
    scores = score_sets(parts.model, parts.tokenizer, sets, cfg, parts.pad_id, update)
    return EvalReport(ins.cid, ins.round, "ok", scores, nonce=ins.nonce)
