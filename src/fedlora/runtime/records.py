"""The records of ``metrics.jsonl``: one typed record per line, built in one place each.

Every field is documented in docs/metrics.md; ``schema`` says which version of that page a
record follows. Per-client maps are keyed by the client id as a string (JSON keys). A field
a runtime has nothing for (no evaluation this round, no node refused) is left out of the line
rather than written empty.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any


def finite(value: Any) -> Any:
    """``value`` with every float that is NaN or infinite replaced by None (JSON's null), so
    that a record is strict JSON (an honest diverged loss, an infinite condition number)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def dumps(record: dict[str, Any]) -> str:
    """One ``metrics.jsonl`` line: strict JSON (no NaN or Infinity), keys sorted."""
    return json.dumps(finite(record), sort_keys=True, allow_nan=False)


SCHEMA = 2
"""Version of docs/metrics.md the records follow (1: records before the field was written)."""

PerClient = dict[str, Any]


@dataclass(frozen=True)
class Evaluation:
    """The global model's held-out scores after a round, and what scoring them cost."""

    scores: dict[str, dict[str, float]]
    seconds: float
    sent: dict[str, int] = field(default_factory=dict)
    """Bytes sent to each client that scored its own sets (Flower's evaluate messages)."""
    received: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    """Clients whose scores did not come back, and why."""


def _plain(record: Any) -> dict[str, Any]:
    out = dataclasses.asdict(record)
    return {k: v for k, v in out.items() if (v is not None and v != {}) or k in record.ALWAYS}


def _evaluated(out: dict[str, Any], evaluation: Evaluation | None) -> dict[str, Any]:
    if evaluation is None:
        return out
    out["eval"] = evaluation.scores
    out["eval_seconds"] = evaluation.seconds
    if evaluation.sent:
        out.setdefault("transport_bytes", {})
        out["transport_bytes"]["eval_sent"] = evaluation.sent
        out["transport_bytes"]["eval_received"] = evaluation.received
    if evaluation.dropped:
        out["eval_dropped"] = evaluation.dropped
    return out


@dataclass(frozen=True)
class StartRecord:
    """Round 0: the base model before any round (its evaluation, if ``eval.at_start``)."""

    method: str
    evaluation: Evaluation | None = None
    round: int = 0
    schema: int = SCHEMA
    ALWAYS = ("round", "method", "schema")

    def to_json(self) -> dict[str, Any]:
        out = {"round": self.round, "method": self.method, "schema": self.schema}
        return _evaluated(out, self.evaluation)


@dataclass(frozen=True)
class RoundRecord:
    """One federated round (docs/metrics.md lists every field)."""

    round: int
    method: str
    sampled: list[int]
    value_dtype: str
    train_loss: PerClient
    n_samples: PerClient
    tokens: PerClient
    truncated: PerClient
    upload_bytes: PerClient
    upload_params: PerClient
    download_bytes: PerClient
    download_params: PerClient
    encodings: dict[str, PerClient]
    transport_bytes: dict[str, PerClient]
    accepted: list[int]
    dropped: dict[str, str]
    skipped: bool
    skip_reason: str | None
    weight_capped: dict[str, str]
    clipped: PerClient
    server_seconds: float
    train_seconds: PerClient
    client_overhead_seconds: PerClient
    upload_report: PerClient
    round_seconds: float
    ranks: dict[str, int] | None = None
    server_report: dict[str, Any] | None = None
    nodes_refused: dict[str, str] | None = None
    privacy: dict[str, Any] | None = None
    secure_aggregation: dict[str, Any] | None = None
    evaluation: Evaluation | None = None
    schema: int = SCHEMA
    ALWAYS = (
        "upload_report",
        "dropped",
        "weight_capped",
        "clipped",
        "skip_reason",
        "train_loss",
        "n_samples",
        "tokens",
        "truncated",
        "upload_bytes",
        "upload_params",
        "train_seconds",
        "client_overhead_seconds",
    )

    def to_json(self) -> dict[str, Any]:
        """The record as its ``metrics.jsonl`` line holds it."""
        out = _plain(dataclasses.replace(self, evaluation=None))
        out.pop("evaluation", None)
        return _evaluated(out, self.evaluation)
