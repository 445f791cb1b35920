"""Scores no single domain dominates: each domain's held-out loss raw and as the fraction of
the gap closed between the base model and the centralised reference, and their macro-average.

For domain ``d``, base-model loss ``L0_d``, the centralised reference's loss ``Lc_d`` (one
client holding the pooled training data, same total steps; its mean over seeds) and a run's
loss ``L_d``::

    gap_d = (L0_d − L_d) / (L0_d − Lc_d)

0 is the base model, 1 the centralised reference (above 1: better than it, below 0: worse
than the base). The headline is ``macro = mean_d gap_d``: a domain whose base loss is high
(a two-token label) moves its own fraction, not the whole score. Because ``L0_d`` and
``Lc_d`` are the same for every run, a difference of ``gap_d`` between two runs of one seed
is the difference of their losses rescaled per domain, so pairing by seed carries over.
Every domain weighs alike in the macro (so a nat of a domain with a small gap weighs more
than a nat of one with a large gap); ``claims.toml`` fixes a floor under the gap (a domain
the reference barely improves is left out) and under a run's score (a diverged run counts
as the floor, no worse).

A run whose clients keep their own parts (``method = "local"``, FedSA-LoRA) is scored, per
domain, by the model of the client that trains on it (``d@client<k>`` in its records, the
client's own model on the server's public set); ``all`` is then the mean over every
client's own model (how a client's model does on the others' domains).
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Mapping, Sequence

from fedlora.config import DataConfig
from fedlora.runtime.client_data import OOD_NAME

Eval = Mapping[str, Mapping[str, float]]
BUILT_IN_DOMAINS: tuple[str, ...] = DataConfig().domains


def in_domain_names(ev: Eval) -> list[str]:
    """The in-domain sets of an evaluation (no OOD set, no per-client copies)."""
    return [d for d in ev if d != OOD_NAME and "@" not in d]


def owner(domain: str, clients: int) -> int:
    """Which client trains on ``domain``: ``client<k>`` (a file) is client k; built-in
    domain i is client ``i mod clients`` (``data.partition = "domain"``)."""
    if m := re.fullmatch(r"client(\d+)", domain):
        return int(m.group(1))
    return BUILT_IN_DOMAINS.index(domain) % clients


def domain_losses(ev: Eval, clients: int) -> dict[str, float]:
    """Each in-domain set's loss of one evaluation: the global model's, or, where the run
    scored each client's own model (``d@client<k>``), the owning client's."""
    out = {}
    for d in in_domain_names(ev):
        own = ev.get(f"{d}@client{owner(d, clients)}")
        out[d] = float((own or ev[d])["loss"])
    return out


def all_clients_losses(ev: Eval) -> dict[str, float] | None:
    """Per domain, the mean loss of every client's own model (None: no own models)."""
    per: dict[str, list[float]] = {}
    for key, e in ev.items():
        d, at, _ = key.partition("@client")
        if at and d != OOD_NAME:
            per.setdefault(d, []).append(float(e["loss"]))
    return {d: statistics.fmean(v) for d, v in per.items()} or None


def gap_closed(
    losses: Mapping[str, float],
    base: Mapping[str, float],
    central: Mapping[str, float],
    gap_floor: float = 0.0,
    score_floor: float = -math.inf,
) -> dict[str, float]:
    """``gap_d`` of every domain of ``losses`` (module docstring) and their ``macro`` mean.

    A domain whose gap ``L0_d − Lc_d`` is not above ``gap_floor`` (the reference barely
    improved on the base) is left out; a run's ``gap_d`` is floored at ``score_floor``, and a
    non-finite loss (a diverged run) scores that floor."""
    out = {}
    for d, loss in losses.items():
        if d in base and d in central and base[d] - central[d] > max(gap_floor, 0.0):
            value = (base[d] - loss) / (base[d] - central[d]) if math.isfinite(loss) else -math.inf
            out[d] = max(value, score_floor)
    if out:
        out["macro"] = statistics.fmean(out.values())
    return out


def central_reference(runs: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Per domain, the mean over seeds of the centralised reference's losses."""
    names = list(dict.fromkeys(d for r in runs for d in r))
    return {d: statistics.fmean(r[d] for r in runs if d in r) for d in names}
