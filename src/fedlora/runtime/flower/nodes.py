"""Which SuperNode serves which client id, and how the server talks to them.

A SuperNode says which client id (``partition-id``) it serves when first asked. A claim is
only as good as what backs it:

- with ``federation.node_keys``, a node must sign the query's fresh nonce with the private
  key of the client id it claims; a node that cannot is refused;
- a client id claimed by two nodes at once (without keys, or one key on two nodes) is
  *contested*: the server cannot tell the real one, so it serves neither for the rest of the
  run, rather than letting whichever asked first win.

Every refusal is kept until the next round's record takes it (:meth:`Nodes.take_refusals`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import ec
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedlora.config import RunConfig
from fedlora.errors import FedloraError
from fedlora.runtime.flower.identity import NONCE, fresh_nonce, public_key, verify
from fedlora.runtime.flower.protocol import QUERY, RECORD, reply_size

log = logging.getLogger(__name__)


def node_keys(cfg: RunConfig) -> dict[int, ec.EllipticCurvePublicKey]:
    """``federation.node_keys`` parsed, by client id (empty: no keys)."""
    return {
        k: public_key(text, f"federation.node_keys[{k}]")
        for k, text in enumerate(cfg.federation.node_keys)
    }


@dataclass
class Nodes:
    """Which SuperNode serves which client id (learnt by asking each node once)."""

    clients: int
    keys: Mapping[int, ec.EllipticCurvePublicKey] = field(default_factory=dict)
    by_cid: dict[int, int] = field(default_factory=dict)
    asked: set[int] = field(default_factory=set)
    contested: dict[int, set[int]] = field(default_factory=dict)
    """Client ids claimed by more than one node, with every node that claimed them."""
    refused: dict[str, str] = field(default_factory=dict)
    """Node id -> why its claim was refused, since the last round's record."""

    def _refuse(self, node: int, why: str) -> None:
        log.warning("SuperNode %d refused: %s", node, why)
        self.refused[str(node)] = why

    def take_refusals(self) -> dict[str, str]:
        out, self.refused = self.refused, {}
        return out

    def discover(self, grid: Grid, timeout: float, max_reply: int) -> list[int]:
        """Ask SuperNodes not asked yet which client id they serve; forget nodes that went
        offline. Returns the client ids that got a (new) node."""
        online = set(grid.get_node_ids())
        for cid, node in list(self.by_cid.items()):
            if node not in online:
                log.warning("SuperNode %d (client %d) is offline", node, cid)
                del self.by_cid[cid]
        self.asked &= online
        fresh = sorted(online - self.asked)
        if not fresh:
            return []
        nonces = [fresh_nonce() for _ in fresh]
        msgs = [Message(_query(n), node, QUERY) for node, n in zip(fresh, nonces, strict=True)]
        replies = exchange(grid, msgs, timeout, max_reply)
        added = []
        for node, nonce, reply in zip(fresh, nonces, replies, strict=True):
            if not isinstance(reply, Message) or reply.has_error():
                why = reply.error.reason if isinstance(reply, Message) else reply or "no reply"
                log.warning("SuperNode %d did not say its partition-id: %s", node, why)
                continue  # asked again next time
            self.asked.add(node)
            pid = self._claim(node, nonce, reply)
            if pid is not None:
                added.append(pid)
        return added

    def _claim(self, node: int, nonce: str, reply: Message) -> int | None:
        """The client id ``node`` may serve, or None (refused, with the reason kept)."""
        rec = reply.content.config_records.get(RECORD)
        pid = rec.get("partition-id") if rec is not None else None
        if not isinstance(pid, int) or isinstance(pid, bool) or not 0 <= pid < self.clients:
            self._refuse(node, f"partition-id {pid!r} is not a client id in 0..{self.clients - 1}")
            return None
        if self.keys:
            signed = rec is not None and rec.get(NONCE) == nonce and verify(self.keys[pid], rec)
            if not signed:
                self._refuse(node, f"claims client {pid} without signing with client {pid}'s key")
                return None
        if pid in self.contested:
            self.contested[pid].add(node)
            self._refuse(node, f"claims client {pid}, which several nodes claimed")
            return None
        holder = self.by_cid.get(pid)
        if holder is not None:
            # Two claimants and no way to tell the real one: neither serves it.
            del self.by_cid[pid]
            self.contested[pid] = {holder, node}
            why = f"client {pid} is claimed by nodes {holder} and {node}: neither serves it"
            self._refuse(holder, why)
            self._refuse(node, why)
            return None
        self.by_cid[pid] = node
        return pid

    def forget(self, cid: int) -> None:
        node = self.by_cid.pop(cid, None)
        if node is not None:
            self.asked.discard(node)


def _query(nonce: str) -> RecordDict:
    return RecordDict({RECORD: ConfigRecord({NONCE: nonce})})


Answer = Message | str | None
"""A reply, the reason it was refused unread (too large), or None (no reply in time)."""


def exchange(grid: Grid, messages: list[Message], timeout: float, max_reply: int) -> list[Answer]:
    """Send ``messages`` and collect their replies, in order, until ``timeout`` seconds.

    A reply larger than ``max_reply`` bytes is refused as it arrives, before anything in
    it is parsed, and not kept.
    """
    ids = list(grid.push_messages(messages))
    replies: dict[str, Answer] = {}
    deadline = time.monotonic() + timeout
    while len(replies) < len(ids):
        for reply in grid.pull_messages([i for i in ids if i not in replies]):
            key = reply.metadata.reply_to_message_id
            size = 0 if reply.has_error() else reply_size(reply.content)
            if size > max_reply:
                replies[key] = f"reply of {size} bytes is above the limit of {max_reply}"
            else:
                replies[key] = reply
        if len(replies) == len(ids) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    return [replies.get(i) for i in ids]


def wait_for_nodes(
    grid: Grid, nodes: Nodes, cfg: RunConfig, join_timeout: float, poll: float, max_reply: int
) -> None:
    """Wait until every client id has a SuperNode (or is contested: no node will serve it),
    or ``join_timeout`` with at least ``federation.min_clients`` of them."""
    deadline = time.monotonic() + join_timeout
    while True:
        nodes.discover(grid, max(join_timeout, 30.0), max_reply)
        if len(nodes.by_cid) + len(nodes.contested) == nodes.clients:
            break
        if time.monotonic() > deadline:
            break
        time.sleep(poll)
    if len(nodes.by_cid) < cfg.federation.min_clients:
        raise FedloraError(
            f"only {len(nodes.by_cid)} SuperNode(s) joined within {join_timeout:g} s; "
            f"federation.min_clients is {cfg.federation.min_clients} (start one SuperNode "
            f"per client with --node-config 'partition-id=<k>')"
        )
    if len(nodes.by_cid) < nodes.clients:
        log.warning("starting with clients %s of %d", sorted(nodes.by_cid), nodes.clients)
