"""The fedlora ClientApp: one federated client per SuperNode, chosen by ``partition-id``.

Translation only: the message becomes an :class:`~fedlora.runtime.flower.protocol.Instruction`,
:func:`fedlora.runtime.flower.client.client_round` plays it, the reply carries the encoded
upload as-is, and the client's memory goes back into Flower's per-node ``context.state``.

Node config: ``partition-id`` (required; client id k trains on partition k); ``data-file``
(this machine's own data: its client file, or the dataset a split run divides; the node
never reads a path the server sends); ``auth-key`` (the path of the SuperNode's private key,
when the run binds client ids to node keys: every reply is then signed with it, see
:mod:`fedlora.runtime.flower.identity`); ``state-dir`` (a folder of the node's own, where a
method that keeps per-client parts, FedSA-LoRA, keeps them across rounds and resumes, and
where the client's own model is written after the last round).

Flower starts a process per message, so this module imports only Flower and the message
format; the model code (torch, transformers) is imported by ``train`` alone, which keeps the
``query`` handshake cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedlora.errors import ConfigError
from fedlora.runtime.flower.identity import NONCE
from fedlora.runtime.flower.protocol import (
    RECORD,
    SECAGG_KEY,
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


def _signed(content: RecordDict, context: Context) -> RecordDict:
    """``content`` with its fedlora record signed by this node's key, if it has one."""
    path = context.node_config.get("auth-key")
    if path:
        from fedlora.runtime.flower.identity import SIGNATURE, private_key, sign

        rec = content.config_records[RECORD]
        rec[SIGNATURE] = sign(private_key(str(path)), rec)
    return content


def _memory(context: Context) -> Memory:
    if STATE_KEY in context.state.config_records:
        blob = context.state.config_records[STATE_KEY]["memory"]
        if isinstance(blob, bytes):
            return unpack_memory(blob)
    return empty_memory()


def make_client_app(data_files: Sequence[str] = (), state_root: str | None = None) -> ClientApp:
    """The ClientApp. ``data_files`` and ``state_root`` are for Flower's simulation engine
    only, where one operator runs every node on one machine and Flower gives a simulated node
    no config of its own: the data file of each node, by ``partition-id``, as its node config
    would name it, and the folder under which every simulated node keeps its state. A deployed
    node's own ``data-file`` and ``state-dir`` always come first."""
    client_app = ClientApp()

    def data_file(context: Context) -> str | None:
        own = _data_file(context)
        return own or (data_files[partition_id(context)] if data_files else None)

    def state_dir(context: Context) -> str | None:
        own = context.node_config.get("state-dir")
        return str(own) if own else state_root

    @client_app.query()
    def query(msg: Message, context: Context) -> Message:
        """Tell the server which partition (client id) this SuperNode serves, echoing (and,
        with a key, signing) the query's nonce."""
        rec = msg.content.config_records.get(RECORD)
        nonce = str(rec.get(NONCE, "")) if rec is not None else ""
        record = ConfigRecord({"partition-id": partition_id(context), NONCE: nonce})
        return Message(_signed(RecordDict({RECORD: record}), context), reply_to=msg)

    @client_app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        """Score the global model on this node's own held-out data; the memory is unchanged."""
        from fedlora.models import set_offline
        from fedlora.runtime.flower.client import client_evaluate  # heavy: torch

        set_offline()
        ins = read_eval_instruction(msg.content)
        report = client_evaluate(
            ins, _memory(context), partition_id(context), data_file(context), state_dir(context)
        )
        return Message(_signed(eval_report_content(report), context), reply_to=msg)

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        """One round: apply the broadcast, train if sampled, reply with the encoded upload."""
        from fedlora.models import set_offline
        from fedlora.runtime.flower.client import client_round  # heavy: torch, transformers

        set_offline()  # a Flower process is a command line of its own
        ins = read_instruction(msg.content)
        memory = _memory(context)
        report, memory = client_round(
            ins, memory, partition_id(context), data_file(context), state_dir(context)
        )
        context.state[STATE_KEY] = ConfigRecord({"memory": pack_memory(memory)})
        if report.words is not None:  # kept here until the secure stages mask it
            from fedlora.runtime.secure_round import Held

            context.state[SECAGG_KEY] = ConfigRecord(Held(ins.round, report.words).to_record())
        return Message(_signed(report_content(report), context), reply_to=msg)

    @client_app.query("secagg")
    def secagg(msg: Message, context: Context) -> Message:
        """One stage of a secure round (:mod:`fedlora.runtime.secure_round`), answered from
        what this node holds; the reply echoes the request's nonce (an error names why)."""
        from fedlora.runtime.secure_round import Held, answer

        request = dict(msg.content.config_records.get(RECORD, {}))
        reply: dict[str, Any]
        try:
            if SECAGG_KEY not in context.state.config_records:
                raise ValueError("this node holds no vector for a secure round")
            held = Held.from_record(context.state.config_records[SECAGG_KEY])
            reply = answer(partition_id(context), str(request.get("stage")), request, held)
            context.state[SECAGG_KEY] = ConfigRecord(held.to_record())
        except Exception as exc:  # the server reads why; nothing else leaves the node
            reply = {"error": f"{type(exc).__name__}: {exc}"[:1024]}
        reply[NONCE] = str(request.get(NONCE, ""))
        return Message(_signed(RecordDict({RECORD: ConfigRecord(reply)}), context), reply_to=msg)

    return client_app


# Flower loads the ClientApp as ``module:attribute``, so the app object must exist at module
# level; creating it does no work.
app = make_client_app()
