"""One local dataset split across clients (``data.dataset``): IID, Dirichlet over a label
column (FLoRIST's setting: Dolly-15k's ``category``, alpha 0.5), or one client per value of a
column; each client keeps a deterministic held-out part of its own rows.

Rows are split, not examples, so the assistant turns of one conversation stay with one
client. Everything is a pure function of the rows, the options and the seed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from fedlora.data.local import Row
from fedlora.data.partition import dirichlet, iid
from fedlora.data.types import Example
from fedlora.errors import ConfigError, DataError, did_you_mean

DATASET_PARTITIONS = ("iid", "dirichlet", "column")


@dataclass(frozen=True)
class ClientPart:
    """A client's rows' examples: what it trains on and what it holds out."""

    train: list[Example]
    heldout: list[Example]
    labels: dict[str, int]
    """Rows per label value (empty without a label column)."""


def label_values(rows: Sequence[Row], column: str, source: str) -> list[str]:
    out = []
    for number, row in enumerate(rows, start=1):
        value = row.get(column)
        if value is None:
            raise DataError(
                f"{source}: row {number} has no field {column!r} (data.label_column)"
                f"{did_you_mean(column, row)}; its fields: {', '.join(sorted(row)) or '(none)'}"
            )
        out.append(str(value))
    return out


def assign_rows(
    rows: Sequence[Row],
    source: str,
    partition: str,
    clients: int,
    seed: int,
    label_column: str = "",
    alpha: float = 0.5,
) -> list[list[int]]:
    """Row indices of each client."""
    if partition not in DATASET_PARTITIONS:
        raise ConfigError(
            f"data.partition over data.dataset must be one of {', '.join(DATASET_PARTITIONS)}; "
            f"got {partition!r}"
        )
    indices = list(range(len(rows)))
    if partition == "iid":
        parts = iid(indices, clients, seed)
    else:
        if not label_column:
            raise ConfigError(f"data.partition = {partition!r} needs data.label_column")
        labels = label_values(rows, label_column, source)
        groups: dict[str, list[int]] = {}
        for i, label in enumerate(labels):
            groups.setdefault(label, []).append(i)
        if partition == "dirichlet":
            # every client needs a row to train on and one to hold out
            parts = dirichlet(dict(sorted(groups.items())), clients, alpha, seed, min_examples=2)
        else:
            values = sorted(groups)
            if len(values) < 2:
                raise DataError(
                    f"{source}: field {label_column!r} has a single value {values[0]!r}; "
                    "data.partition = 'column' needs one client per value"
                )
            if len(values) != clients:
                raise ConfigError(
                    f"data.partition = 'column' over {label_column!r} gives {len(values)} "
                    f"clients ({', '.join(values)}); set data.clients = {len(values)}"
                )
            parts = [groups[v] for v in values]
    for k, part in enumerate(parts):
        if len(part) < 2:
            raise DataError(
                f"{source}: client {k} gets {len(part)} row(s) under data.partition = "
                f"{partition!r}; each client needs at least 2 (to train and to hold out)"
            )
    return parts


def client_parts(
    rows: Sequence[Row],
    examples: Sequence[list[Example]],
    parts: Sequence[Sequence[int]],
    heldout_fraction: float,
    label_column: str = "",
) -> list[ClientPart]:
    """Each client's examples; the last ``heldout_fraction`` of its rows (at least one) is
    held out."""
    out = []
    for part in parts:
        cut = max(1, int(len(part) * heldout_fraction))
        train_rows, held_rows = part[:-cut], part[-cut:]
        labels = Counter(str(rows[i].get(label_column)) for i in part) if label_column else {}
        out.append(
            ClientPart(
                train=[ex for i in train_rows for ex in examples[i]],
                heldout=[ex for i in held_rows for ex in examples[i]],
                labels=dict(sorted(labels.items())),
            )
        )
    return out
