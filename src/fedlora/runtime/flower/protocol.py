"""What a Flower message between the fedlora ServerApp and ClientApp holds.

Translation only: fedlora payloads travel as the exact bytes ``fedlora.wire`` produced (one
``bytes`` value in a ``ConfigRecord``), so the bytes a run records are the bytes encoded,
exactly as in the in-process runtime. Everything else is a few scalars.

A client's memory between rounds (its ``view`` and the base merges it has added to its own
copy of the base weights) is kept in Flower's per-node ``context.state`` as one safetensors
blob: tensors of any dtype round-trip bit-exactly and nothing is pickled. The same blob is
what the server sends to re-synchronise a client that missed a round or joined late.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flwr.app import ConfigRecord, RecordDict
from flwr.common import serde

from fedlora.errors import PayloadError
from fedlora.runtime.flower.fields import count, get, json_field, number, scores, text
from fedlora.runtime.outcome import ClientOutcome, Transfer
from fedlora.runtime.records import finite

if TYPE_CHECKING:  # torch is imported only where tensors are (un)packed: see client_app
    from fedlora.methods.base import Factored, Tensor

TRAIN = "train"  # Flower message type of a round (every client gets one each round)
QUERY = "query"  # Flower message type asking a SuperNode which partition it serves
EVALUATE = "evaluate"  # Flower message type: score the global model on the client's own data
SECAGG = "query.secagg"  # Flower message type of a secure round's stage (runtime.secure_round)
RECORD = "fedlora"  # key of the ConfigRecord in every message
SYNC = "fedlora-sync"  # key of the optional re-synchronisation record
STATE_KEY = "fedlora-memory"  # key in ``context.state`` of the client's memory
SECAGG_KEY = "fedlora-secagg"  # key in ``context.state`` of the client's secure round


@dataclass(frozen=True)
class Instruction:
    """The server's message to one client for one round.

    ``config`` is the run's config as JSON (``config.to_dict``), so the server's config is
    the only one; ``broadcast`` is the wire-encoded broadcast; ``sync``, when present, is a
    :class:`Memory` blob that replaces what the client remembers.
    """

    round: int
    cid: int
    train: bool
    config: str
    broadcast: bytes
    sync: bytes | None = None
    nonce: str = ""
    """Fresh per message; the reply must echo it (:mod:`.identity`)."""
    run: str = ""
    """The run's token, naming where the client keeps its own parts (empty: none kept;
    :mod:`fedlora.runtime.own_parts`)."""


@dataclass(frozen=True)
class Memory:
    """What a client carries from round to round: the last round it applied, its view
    (``None`` before its first broadcast, as in the in-process runtime) and every base
    merge so far, in order (replayed onto a freshly built base model)."""

    round: int
    view: dict[str, Tensor] | None
    merges: tuple[dict[str, Factored], ...] = ()


def instruction_content(ins: Instruction) -> RecordDict:
    """The ``RecordDict`` of a round message."""
    rec = ConfigRecord(
        {
            "round": ins.round,
            "cid": ins.cid,
            "train": ins.train,
            "config": ins.config,
            "broadcast": ins.broadcast,
            "nonce": ins.nonce,
            "run": ins.run,
        }
    )
    content = RecordDict({RECORD: rec})
    if ins.sync is not None:
        content[SYNC] = ConfigRecord({"memory": ins.sync})
    return content


def read_instruction(content: RecordDict) -> Instruction:
    """Parse a round message (raises ``PayloadError`` on anything malformed)."""
    if RECORD not in content.config_records:
        raise PayloadError("flower message has no fedlora record")
    rec = content.config_records[RECORD]
    sync = None
    if SYNC in content.config_records:
        sync = get(content.config_records[SYNC], "memory", bytes)
    return Instruction(
        round=get(rec, "round", int),
        cid=get(rec, "cid", int),
        train=get(rec, "train", bool),
        config=get(rec, "config", str),
        broadcast=get(rec, "broadcast", bytes),
        sync=sync,
        nonce=get(rec, "nonce", str),
        run=get(rec, "run", str),
    )


def status_of(outcome: ClientOutcome) -> str:
    """A reply's status: ``ok``, ``failed`` (training failed; the broadcast was still
    applied) or ``out-of-sync`` (the node's memory is not that of the round before and no
    sync came with the message)."""
    if not outcome.in_sync:
        return "out-of-sync"
    return "failed" if outcome.error else "ok"


def report_content(outcome: ClientOutcome) -> RecordDict:
    """The ``RecordDict`` of a client's reply: its outcome (the start stays on the node)."""
    up = outcome.upload
    values: dict[str, Any] = {
        "cid": outcome.cid,
        "round": outcome.round,
        "status": status_of(outcome),
        "nonce": outcome.nonce,
        "n_samples": outcome.n_samples,
        "tokens": outcome.tokens,
        "truncated": outcome.truncated,
        "train_seconds": outcome.train_seconds,
        "overhead_seconds": outcome.overhead_seconds,
    }
    if up is not None:
        values["upload"] = up.data
    if outcome.held:
        values["held"] = outcome.held  # its vector stays on the node for the secure stages
    if outcome.train_loss is not None and math.isfinite(outcome.train_loss):
        values["train_loss"] = outcome.train_loss  # a reply carries finite numbers only
    if outcome.error is not None:
        values["error"] = outcome.error
    if outcome.report:
        values["upload_report"] = json.dumps(finite(outcome.report), allow_nan=False)
    return RecordDict({RECORD: ConfigRecord(values)})


def read_report(content: RecordDict) -> ClientOutcome:
    """Parse a client's reply (raises ``PayloadError`` on anything malformed: every field
    typed, counts bounded, numbers finite, text cut to ``fields.MAX_TEXT``)."""
    if RECORD not in content.config_records:
        raise PayloadError("flower reply has no fedlora record")
    rec = content.config_records[RECORD]
    upload_report = json_field(rec, "upload_report") if "upload_report" in rec else {}
    if not isinstance(upload_report, dict):
        raise PayloadError("flower reply's upload report is not an object")
    status = get(rec, "status", str)
    if status not in ("ok", "failed", "out-of-sync"):
        raise PayloadError(f"flower reply has unknown status {status[:64]!r}")
    upload = None
    if "upload" in rec:
        # what it holds is the server's to count when it decodes it (steps.server_step)
        upload = Transfer(get(rec, "upload", bytes), 0, {})
    error = text(rec, "error") if "error" in rec else None
    return ClientOutcome(
        cid=get(rec, "cid", int),
        round=get(rec, "round", int),
        upload=upload,
        n_samples=count(rec, "n_samples"),
        train_loss=number(rec, "train_loss") if "train_loss" in rec else None,
        tokens=count(rec, "tokens"),
        truncated=count(rec, "truncated"),
        train_seconds=number(rec, "train_seconds", low=0.0),
        overhead_seconds=number(rec, "overhead_seconds", low=0.0),
        error=error if status != "ok" else None,
        report=upload_report,
        in_sync=status != "out-of-sync",
        nonce=get(rec, "nonce", str),
        held=count(rec, "held") if "held" in rec else 0,
    )


def pack_memory(memory: Memory) -> bytes:
    """Serialise a client's memory (safetensors; exact for every dtype)."""
    from safetensors.torch import save as st_save

    tensors: dict[str, Tensor] = {}
    for name, t in (memory.view or {}).items():
        tensors[f"view/{name}"] = t.detach().contiguous().clone()
    for i, merge in enumerate(memory.merges):
        for layer, (left, right) in merge.items():
            tensors[f"merge/{i}/{layer}/L"] = left.detach().contiguous().clone()
            tensors[f"merge/{i}/{layer}/R"] = right.detach().contiguous().clone()
    meta = {
        "round": str(memory.round),
        "has_view": str(int(memory.view is not None)),
        "merges": str(len(memory.merges)),
    }
    return st_save(tensors, metadata=meta)


def _metadata(blob: bytes) -> dict[str, str]:
    # safetensors' Python API loads tensors but not the header metadata; the header is an
    # 8-byte little-endian length followed by that much JSON.
    if len(blob) < 8:
        raise PayloadError("client memory blob is truncated")
    size = int.from_bytes(blob[:8], "little")
    if size > len(blob) - 8:
        raise PayloadError("client memory blob header is truncated")
    try:
        header = json.loads(blob[8 : 8 + size])
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PayloadError(f"client memory blob header is corrupt: {exc}") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict):
        raise PayloadError("client memory blob has no metadata")
    return meta


def unpack_memory(blob: bytes) -> Memory:
    """Inverse of :func:`pack_memory` (raises ``PayloadError`` on a corrupt blob)."""
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    meta = _metadata(blob)
    try:
        tensors = st_load(blob)
        round_, has_view, count = int(meta["round"]), meta["has_view"] == "1", int(meta["merges"])
    except (SafetensorError, KeyError, ValueError) as exc:
        raise PayloadError(f"client memory blob is corrupt: {exc}") from None
    view: dict[str, Tensor] = {}
    parts: list[dict[str, dict[str, Tensor]]] = [{} for _ in range(count)]
    for key, t in tensors.items():
        kind, _, rest = key.partition("/")
        if kind == "view":
            view[rest] = t
        elif kind == "merge":
            index, _, tail = rest.partition("/")
            layer, _, side = tail.rpartition("/")
            if not index.isdigit() or int(index) >= count or side not in ("L", "R"):
                raise PayloadError(f"client memory blob has a bad key {key!r}")
            parts[int(index)].setdefault(layer, {})[side] = t
        else:
            raise PayloadError(f"client memory blob has a bad key {key!r}")
    merges: list[dict[str, Factored]] = []
    for part in parts:
        if any(set(p) != {"L", "R"} for p in part.values()):
            raise PayloadError("client memory blob has a half merge")
        merges.append({layer: (p["L"], p["R"]) for layer, p in part.items()})
    return Memory(round_, view if has_view else None, tuple(merges))


def empty_memory() -> Memory:
    """The memory of a client before round 1."""
    return Memory(0, None, ())


NODE_DATA = "<the node's data-file>"
"""What a node's config holds in place of a data path: each node reads only the data its
own node config names (``data-file``), never a path the server chose."""


def config_for_nodes(config: dict[str, Any]) -> dict[str, Any]:
    """The run's config (``config.to_dict``) as every node receives it: no data path, no
    evaluation file, no run folder, no key of the server's and no noise seed (nothing a node
    needs or should learn about the others or about the noise)."""
    out = json.loads(json.dumps(config))
    data = out["data"]
    data["files"] = [NODE_DATA] * len(data.get("files", []))
    if data.get("dataset"):
        data["dataset"] = NODE_DATA
    out["eval"]["tasks"] = []
    out["out_dir"] = ""
    out["federation"]["node_keys"] = []
    out["privacy"]["noise_seed"] = None  # nothing about the noise reaches a node
    return out


def reply_size(content: RecordDict) -> int:
    """Bytes a reply's values take, counted without serialising it (a bound checked before
    anything of the reply is parsed)."""

    def size(value: Any) -> int:
        if isinstance(value, bytes | str):
            return len(value)
        if isinstance(value, list):
            return sum(size(v) for v in value)
        data = getattr(value, "data", None)  # an array of an ArrayRecord
        return len(data) if isinstance(data, bytes) else 8

    return sum(len(k) + size(v) for record in content.values() for k, v in record.items())


def content_bytes(content: RecordDict) -> int:
    """Bytes of a message's content as Flower puts it on the wire: the size of its protobuf
    encoding (broadcast or upload, the run's config, a re-sync memory, the small fields).
    The message's metadata (ids, type, ttl: about a hundred bytes) is not counted."""
    return int(serde.recorddict_to_proto(content).ByteSize())


@dataclass(frozen=True)
class EvalInstruction:
    """Score the global model after round ``round`` on this client's own held-out data:
    ``update`` is the wire-encoded global update (``layer.L`` / ``layer.R`` factors) on top
    of the base merges the client remembers."""

    round: int
    cid: int
    config: str
    update: bytes
    nonce: str = ""
    run: str = ""
    """As :attr:`Instruction.run`."""
    final: bool = False
    """After the last round: a client that keeps own parts writes its own model."""


@dataclass
class EvalReport:
    """A client's scores of its own held-out sets; ``status`` ``ok``, ``out-of-sync`` (its
    memory is not that of round ``round``) or ``failed``."""

    cid: int
    round: int
    status: str
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    error: str | None = None
    nonce: str = ""


def eval_instruction_content(ins: EvalInstruction) -> RecordDict:
    """The ``RecordDict`` of an evaluation message."""
    values: dict[str, Any] = {
        "round": ins.round,
        "cid": ins.cid,
        "config": ins.config,
        "update": ins.update,
        "nonce": ins.nonce,
        "run": ins.run,
        "final": ins.final,
    }
    return RecordDict({RECORD: ConfigRecord(values)})


def read_eval_instruction(content: RecordDict) -> EvalInstruction:
    """Parse an evaluation message (raises ``PayloadError`` on anything malformed)."""
    if RECORD not in content.config_records:
        raise PayloadError("flower message has no fedlora record")
    rec = content.config_records[RECORD]
    return EvalInstruction(
        round=get(rec, "round", int),
        cid=get(rec, "cid", int),
        config=get(rec, "config", str),
        update=get(rec, "update", bytes),
        nonce=get(rec, "nonce", str),
        run=get(rec, "run", str),
        final=get(rec, "final", bool),
    )


def eval_report_content(rep: EvalReport) -> RecordDict:
    """The ``RecordDict`` of a client's evaluation reply."""
    values: dict[str, Any] = {
        "cid": rep.cid,
        "round": rep.round,
        "status": rep.status,
        "scores": json.dumps(
            {
                name: {k: v for k, v in m.items() if math.isfinite(v)}
                for name, m in rep.scores.items()
            },
            sort_keys=True,
        ),
        "nonce": rep.nonce,
    }
    if rep.error is not None:
        values["error"] = rep.error
    return RecordDict({RECORD: ConfigRecord(values)})


def read_eval_report(content: RecordDict) -> EvalReport:
    """Parse a client's evaluation reply (raises ``PayloadError`` on anything malformed)."""
    if RECORD not in content.config_records:
        raise PayloadError("flower reply has no fedlora record")
    rec = content.config_records[RECORD]
    status = get(rec, "status", str)
    if status not in ("ok", "failed", "out-of-sync"):
        raise PayloadError(f"flower evaluation reply has unknown status {status[:64]!r}")
    return EvalReport(
        cid=get(rec, "cid", int),
        round=get(rec, "round", int),
        status=status,
        scores=scores(json_field(rec, "scores")),
        error=text(rec, "error") if "error" in rec else None,
        nonce=get(rec, "nonce", str),
    )
