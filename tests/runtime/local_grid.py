"""A Flower ``Grid`` in this process: each message goes straight to the ClientApp of a
simulated SuperNode with its own persistent ``Context`` (as a SuperNode keeps it between
rounds). Hooks let a test play a dishonest or broken node."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.common import serde
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

from fedlora.runtime.flower import client_app

Tamper = Callable[[Message, Message, Context], Message | None]
"""(message, honest reply, node context) -> the reply the node sends (None: it stays silent)."""


class LocalGrid(Grid):
    """One node per client file (node id ``1000 + k``, node config ``partition-id = k``,
    ``data-file`` and, given ``state_dirs``, ``state-dir``), plus any ``extra`` nodes with
    node configs of their own."""

    def __init__(
        self,
        data_files: list[str],
        dead: Iterable[int] = (),
        extra: Iterable[dict[str, Any]] = (),
        auth_keys: list[str] | None = None,
        state_dirs: list[str] | None = None,
    ) -> None:
        def node_config(k: int) -> dict[str, Any]:
            own = {"auth-key": auth_keys[k]} if auth_keys else {}
            if state_dirs:
                own["state-dir"] = state_dirs[k]
            return {"partition-id": k, "data-file": data_files[k], **own}

        configs = [node_config(k) for k in range(len(data_files))] + list(extra)
        self.contexts = {
            1000 + i: Context(
                run_id=7, node_id=1000 + i, node_config=cfg, state=RecordDict(), run_config={}
            )
            for i, cfg in enumerate(configs)
        }
        self.dead = set(dead)  # partitions whose node errors on every train message
        self.replies: dict[str, Message] = {}
        self.log: list[tuple[str, int]] = []
        self.before_push: Any = None
        self.tamper: Tamper | None = None
        # protobuf bytes of each train message's content and of its reply, by (round, cid)
        self.sizes: dict[tuple[int, int], tuple[int, int]] = {}

    def set_run(self, run: Any) -> None:  # the fake has one run
        pass

    @property
    def run(self) -> Any:
        return None

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
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
            down = ctx.node_config["partition-id"] in self.dead
            reply: Message | None
            if msg.metadata.message_type == "train" and down:
                reply = Message(
                    Error(code=ErrorCode.NODE_UNAVAILABLE, reason="node is down"), reply_to=msg
                )
            else:
                reply = client_app.app(msg, ctx)
            if self.tamper is not None and reply is not None:
                reply = self.tamper(msg, reply, ctx)
            if msg.metadata.message_type == "train":
                rec = msg.content.config_records["fedlora"]
                back = (
                    0
                    if reply is None or reply.has_error()
                    else serde.recorddict_to_proto(reply.content).ByteSize()
                )
                sent = serde.recorddict_to_proto(msg.content).ByteSize()
                self.sizes[(int(rec["round"]), int(rec["cid"]))] = (sent, back)
            if reply is not None:
                self.replies[mid] = reply
            ids.append(mid)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self.replies.pop(i) for i in list(message_ids) if i in self.replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))
