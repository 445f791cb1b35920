"""The fedlora ClientApp: one federated client per SuperNode, chosen by ``partition-id``.

Translation only: the message becomes an :class:`~fedlora.runtime.flower.protocol.Instruction`,
:func:`fedlora.runtime.flower.client.client_round` plays it, the reply carries the encoded
upload as-is, and the client's memory goes back into Flower's per-node ``context.state``.

Node config: ``partition-id`` (required; client id k trains on partition k) and, for
``data.partition = "files"``, an optional ``data-file`` naming this machine's own JSONL
file instead of ``data.files[k]``.

Flower starts a process per message, so this module imports only Flower and the message
format; the model code (torch, transformers) is imported by ``train`` alone, which keeps the
``query`` handshake cheap.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedlora.errors import ConfigError
from fedlora.runtime.flower.protocol import (
    RECORD,
    STATE_KEY,
    Memory,
    empty_memory,
    eval_report_content,
    pack_memory,
    read_eval_instruction,
    read_instruction,
    report_content,
    unpack_memory,
)


def partition_id(context: Context) -> int:
    """This SuperNode's ``partition-id`` node config (an integer)."""
    value = context.node_config.get("partition-id")
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ConfigError("SuperNode needs node config partition-id=<k> (an integer)")
    try:
        return int(value)
    except ValueError:
        raise ConfigError(
            f"SuperNode node config partition-id={value!r} is not an integer"
        ) from None


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
    return Message(
        RecordDict({RECORD: ConfigRecord({"partition-id": partition_id(context)})}), reply_to=msg
    )


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Score the global model on this node's own held-out data; the memory is unchanged."""
    from fedlora.models import set_offline
    from fedlora.runtime.flower.client import client_evaluate  # heavy: torch, transformers

    set_offline()
    ins = read_eval_instruction(msg.content)
    report = client_evaluate(ins, _memory(context), partition_id(context), _data_file(context))
    return Message(eval_report_content(report), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One round: apply the broadcast, train if sampled, reply with the encoded upload."""
    from fedlora.models import set_offline
    from fedlora.runtime.flower.client import client_round  # heavy: torch, transformers

    set_offline()  # a Flower process is a command line of its own
    ins = read_instruction(msg.content)
    report, memory = client_round(ins, _memory(context), partition_id(context), _data_file(context))
    context.state[STATE_KEY] = ConfigRecord({"memory": pack_memory(memory)})
    return Message(report_content(report), reply_to=msg)
