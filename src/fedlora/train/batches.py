"""Tokenisation of prompt/completion pairs with the chat template; completion-only labels."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import overload

import torch

from fedlora.data.types import Example
from fedlora.train.prompt_format import prompt_token_ids

IGNORE = -100


@dataclass(frozen=True)
class Encoded:
    """One example: token ids and labels (``IGNORE`` on the prompt part)."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool = False
    """Whether ``train.seq_len`` cut the prompt or the completion."""


def encode_parts(tokenizer: object, example: Example, template: str) -> tuple[list[int], list[int]]:
    """The uncut token ids of ``example``'s prompt under ``template``
    (:mod:`fedlora.train.prompt_format`) and of its completion (with the end-of-text token)."""
    p_ids = prompt_token_ids(tokenizer, example, template)
    c_ids = list(tokenizer(example.completion, add_special_tokens=False)["input_ids"])  # type: ignore[operator]
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is not None:
        c_ids.append(int(eos))
    return p_ids, c_ids


def join(p_ids: list[int], c_ids: list[int], seq_len: int, room_for_prompt: int) -> Encoded:
    """Prompt and completion in ``seq_len`` tokens: the prompt cut from the left to
    ``room_for_prompt`` tokens (keeping its end, next to the answer), the whole cut on the
    right."""
    full = len(p_ids) + len(c_ids)
    p_ids = p_ids[-room_for_prompt:] if room_for_prompt > 0 else []
    ids = (p_ids + c_ids)[:seq_len]
    labels = ([IGNORE] * len(p_ids) + c_ids)[:seq_len]
    return Encoded(ids, labels, truncated=len(ids) < full)


def prompt_room(seq_len: int, completion_len: int) -> int:
    """How much of ``seq_len`` the prompt may keep: what the completion leaves, but never
    less than half."""
    return max(seq_len - completion_len, seq_len // 2)


def encode(tokenizer: object, example: Example, seq_len: int, template: str = "chat") -> Encoded:
    """Encode one example under ``template``; the prompt is cut from the left so that at
    least half of ``seq_len`` stays for the completion, which is cut on the right."""
    p_ids, c_ids = encode_parts(tokenizer, example, template)
    return join(p_ids, c_ids, seq_len, prompt_room(seq_len, len(c_ids)))


class PackedExamples(Sequence[Encoded]):
    """A client's encoded examples kept as flat int32 token and label tensors (8 bytes a
    token, where Python lists of ints take about 70), so that one process can simulate the
    data of thousands of clients; indexing rebuilds the :class:`Encoded` it was given."""

    def __init__(self, examples: Iterable[Encoded]) -> None:
        ids: list[int] = []
        labels: list[int] = []
        bounds = [0]
        cut = bytearray()
        for e in examples:
            ids.extend(e.input_ids)
            labels.extend(e.labels)
            bounds.append(len(ids))
            cut.append(e.truncated)
        self._ids = torch.tensor(ids, dtype=torch.int32)
        self._labels = torch.tensor(labels, dtype=torch.int32)
        self._bounds = bounds
        self._cut = bytes(cut)
        self.truncated = sum(self._cut)
        """How many of the examples ``train.seq_len`` cut."""

    def __len__(self) -> int:
        return len(self._cut)

    @overload
    def __getitem__(self, i: int) -> Encoded: ...
    @overload
    def __getitem__(self, i: slice) -> list[Encoded]: ...
    def __getitem__(self, i: int | slice) -> Encoded | list[Encoded]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"example {i} of {n}")
        i %= n
        lo, hi = self._bounds[i], self._bounds[i + 1]
        return Encoded(self._ids[lo:hi].tolist(), self._labels[lo:hi].tolist(), bool(self._cut[i]))


def truncated_count(examples: Sequence[Encoded]) -> int:
    """How many of ``examples`` ``train.seq_len`` cut (counted once for packed ones)."""
    if isinstance(examples, PackedExamples):
        return examples.truncated
    return sum(e.truncated for e in examples)


def collate(
    batch: Sequence[Encoded], pad_id: int, device: torch.device | None = None
) -> dict[str, torch.Tensor]:
    """Right-pad a batch to its longest member (built on the CPU, then moved to ``device``)."""
    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, e in enumerate(batch):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    out = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    if device is not None and device.type != "cpu":
        out = {k: v.to(device, non_blocking=True) for k, v in out.items()}
    return out


def pad_id_of(tokenizer: object) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(tokenizer, "eos_token_id", None)
    return int(pad) if pad is not None else 0
