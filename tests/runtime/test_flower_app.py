"""The Flower ServerApp/ClientApp over an in-process Grid give the in-process runtime's
results bit for bit: same adapter, same bytes per client, same records; clients that miss a
round, restart or fail are dropped for that round and re-synchronised."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.app import Context, Error, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.proto.run_pb2 import Run  # noqa: F401  (Grid.set_run's type)
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity
from safetensors.torch import load_file

from fedlora import config
from fedlora.errors import PayloadError
from fedlora.methods.registry import names
from fedlora.runtime import simulation
from fedlora.runtime.flower import client_app
from fedlora.runtime.flower.protocol import (
    Instruction,
    Memory,
    Report,
    instruction_content,
    pack_memory,
    read_instruction,
    read_report,
    report_content,
    unpack_memory,
)
from fedlora.runtime.flower.server import ServerOptions, serve
from fedlora.runtime.flower.server_app import decode_config, encode_config, settings
from tests.conftest import tiny_overrides

TIMING = {"server_seconds", "train_seconds", "client_overhead_seconds", "round_seconds"}


class LocalGrid(Grid):
    """A Grid that hands each message straight to the ClientApp of a simulated SuperNode,
    each with its own persistent ``Context`` (as a SuperNode keeps it between rounds)."""

    def __init__(self, clients: int, dead: Iterable[int] = ()) -> None:
        self.contexts = {
            1000 + k: Context(run_id=7, node_id=1000 + k, node_config={"partition-id": k},
                              state=RecordDict(), run_config={})
            for k in range(clients)
        }
        self.dead = set(dead)  # partitions whose node errors on every train message
        self.replies: dict[str, Message] = {}
        self.log: list[tuple[str, int]] = []
        self.before_push: Any = None

    def set_run(self, run: Any) -> None:  # the fake has one run
        pass

    @property
    def run(self) -> Any:
        return None

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            if self.before_push is not None:
                self.before_push(self, msg)
            mid = uuid.uuid4().hex
            msg.metadata.__dict__["_message_id"] = mid
            node = msg.metadata.dst_node_id
            self.log.append((msg.metadata.message_type, node))
            ctx = self.contexts[node]
            if msg.metadata.message_type == "train" and ctx.node_config["partition-id"] in self.dead:
                reply = Message(Error(code=ErrorCode.NODE_UNAVAILABLE, reason="node is down"),
                                reply_to=msg)
            else:
                reply = client_app.app(msg, ctx)
            self.replies[mid] = reply
            ids.append(mid)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self.replies.pop(i) for i in list(message_ids) if i in self.replies]

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))


@pytest.fixture(autouse=True)
def task_identity() -> Any:
    # Flower stamps run/node ids from a process-wide identity that its runtimes set.
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 7, 1
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


def _records(run: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _adapter(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


def _strip(rec: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in rec.items() if k not in TIMING}


def _pair(tmp: Path, files: list[str], *extra: str) -> tuple[config.RunConfig, config.RunConfig]:
    base = tiny_overrides(tmp / "sim", files) + list(extra)
    sim = config.load(None, base)
    flw = config.load(None, tiny_overrides(tmp / "flower", files) + list(extra))
    return sim, flw
