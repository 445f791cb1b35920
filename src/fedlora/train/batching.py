"""How a client's examples become micro-batches: ``train.batching = "pad" | "group" | "pack"``.

- ``pad``: ``batch_size`` examples in the order of a seeded permutation per pass, right-padded
  to the longest of them.
- ``group``: the same passes, but each window of ``GROUP_WINDOW`` batches' worth of examples
  is sorted by length and cut into batches, whose order is then shuffled (seeded): examples of
  similar length share a batch, and every example is still seen once per pass.
- ``pack``: the very batches of ``pad`` (same examples, same steps), laid out as few rows as
  possible: whole examples placed first-fit-decreasing into rows of at most ``seq_len``
  tokens, positions restarting at 0 for each example. The model sees ``position_ids`` and
  no 2-D attention mask, and builds a block-diagonal causal mask from them, so no token
  attends across an example boundary; each example's first label is never scored (as
  unpacked, where nothing precedes it). Same loss and gradients as ``pad``, fewer padded
  slots.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from fedlora.config.sections import BATCHINGS
from fedlora.train.batches import IGNORE, Encoded, collate

__all__ = ["BATCHINGS", "batch_of", "collate_packed", "rows_of", "sampler", "slots"]

GROUP_WINDOW = 16
"""Batches' worth of examples sorted together by ``group``."""


class Sampler(Protocol):
    def take(self, k: int) -> list[int]:
        """The next ``k`` example indices."""


class BatchSampler:
    """Seeded passes over ``n`` examples: a fresh permutation each pass, taken in order."""

    def __init__(self, n: int, seed: int) -> None:
        if n <= 0:
            raise ValueError("a client has no training examples")
        self.n = n
        self.gen = torch.Generator().manual_seed(seed)
        self.order: list[int] = []

    def take(self, k: int) -> list[int]:
        out: list[int] = []
        while len(out) < k:
            if not self.order:
                self.order = torch.randperm(self.n, generator=self.gen).tolist()
            out.append(self.order.pop())
        return out


class GroupedSampler:
    """:class:`BatchSampler`'s passes, with examples of similar length batched together."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int) -> None:
        self.inner = BatchSampler(len(lengths), seed)
        self.lengths = lengths
        self.batch_size = batch_size
        self.gen = torch.Generator().manual_seed(seed + 1)
        self.ready: list[list[int]] = []

    def take(self, k: int) -> list[int]:
        if k != self.batch_size:
            return self.inner.take(k)
        if not self.ready:
            window = self.inner.take(self.batch_size * GROUP_WINDOW)
            window.sort(key=lambda i: (self.lengths[i], i))
            batches = [window[j : j + k] for j in range(0, len(window), k)]
            order = torch.randperm(len(batches), generator=self.gen).tolist()
            self.ready = [batches[j] for j in order]
        return self.ready.pop()


def sampler(examples: Sequence[Encoded], batching: str, batch_size: int, seed: int) -> Sampler:
    """The sampler of ``batching`` over ``examples`` (``pack`` draws as ``pad``)."""
    if batching == "group":
        lengths = [len(e.input_ids) for e in examples]
        return GroupedSampler(lengths, batch_size, seed)
    return BatchSampler(len(examples), seed)


def _first_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda j: (-lengths[j], j)):
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(capacity - lengths[i])
    return rows


def rows_of(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices of ``lengths`` placed into as few rows of at most ``capacity`` tokens as
    first-fit-decreasing finds, balanced: the narrowest row width that still fits them in
    that many rows, since every row is padded to the widest."""
    rows = _first_fit_decreasing(lengths, capacity)
    width = max(lengths)
    target = max(width, -(-sum(lengths) // len(rows)))
    while target < capacity:
        tighter = _first_fit_decreasing(lengths, target)
        if len(tighter) <= len(rows):
            return tighter
        target += max(1, target // 32)
    return rows


def collate_packed(
    batch: Sequence[Encoded], pad_id: int, capacity: int, device: torch.device | None = None
) -> dict[str, torch.Tensor]:
    """``batch`` packed into rows (see the module docstring); a row's tail padding is a
    segment of its own, unlabelled."""
    layout = rows_of([len(e.input_ids) for e in batch], capacity)
    width = max(sum(len(batch[i].input_ids) for i in row) for row in layout)
    ids = torch.full((len(layout), width), pad_id, dtype=torch.long)
    labels = torch.full((len(layout), width), IGNORE, dtype=torch.long)
    positions = torch.zeros((len(layout), width), dtype=torch.long)
    for r, row in enumerate(layout):
        at = 0
        for i in row:
            e = batch[i]
            n = len(e.input_ids)
            ids[r, at : at + n] = torch.tensor(e.input_ids)
            labels[r, at + 1 : at + n] = torch.tensor(e.labels[1:])
            positions[r, at : at + n] = torch.arange(n)
            at += n
        positions[r, at:] = torch.arange(width - at)
    out = {"input_ids": ids, "position_ids": positions, "labels": labels}
    if device is not None and device.type != "cpu":
        out = {k: v.to(device, non_blocking=True) for k, v in out.items()}
    return out


def batch_of(
    picked: Sequence[Encoded],
    batching: str,
    pad_id: int,
    seq_len: int,
    device: torch.device | None = None,
) -> dict[str, torch.Tensor]:
    """The model inputs of one micro-batch under ``batching``."""
    if batching == "pack":
        return collate_packed(picked, pad_id, seq_len, device)
    return collate(picked, pad_id, device)


def slots(batch: dict[str, torch.Tensor]) -> int:
    """Token slots a micro-batch makes the model compute (real tokens plus padding)."""
    return int(batch["input_ids"].numel())
