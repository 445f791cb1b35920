"""Which examples each client trains on and what every domain is evaluated on.

Who evaluates what: a held-out set cut from a client's own data (its file under
``data.partition = "files"``, or its part of ``data.dataset``: the last
``data.heldout_fraction`` of its rows, named ``client<k>``) has that client as its ``owner``
and is scored on that client only (federated evaluation); held-out sets of the built-in
domains, the out-of-domain task and the user's ``eval.tasks`` are the server's, and the
server scores them. The server never reads a client's file.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field

from fedlora.config import DataConfig, EvalConfig, RunConfig
from fedlora.data.dataset_split import assign_rows, client_parts, label_values
from fedlora.data.domains import load_domain, load_split_records
from fedlora.data.eval_tasks import ChoiceItem, choice_task, ood_arithmetic
from fedlora.data.formats import examples_of
from fedlora.data.local import read_rows
from fedlora.data.partition import by_domain, dirichlet, iid
from fedlora.data.types import DomainData, Example
from fedlora.data.user_tasks import load_tasks
from fedlora.errors import DataError


@dataclass(frozen=True)
class Heldout:
    """A domain's held-out completions and its multiple-choice questions (may be empty)."""

    examples: list[Example]
    questions: list[ChoiceItem] = field(default_factory=list)
    owner: int | None = None
    """The client whose own data this is (it alone scores it); None: public, the server's."""


@dataclass(frozen=True)
class ClientSplit:
    """Training examples per client (index = client id) and held-out sets per domain."""

    clients: list[list[Example]]
    heldout: dict[str, Heldout]
    labels: list[dict[str, int]] = field(default_factory=list)
    """Rows per label value of each client (a dataset split over a label column)."""
    sources: list[str] = field(default_factory=list)
    """Where each client's training data comes from, in words (its file, the label values
    of its rows, the built-in domains it holds and how many examples of each)."""


def _cap(items: list[Example], limit: int) -> list[Example]:
    return items[:limit] if limit > 0 else items


def _flat(per_row: list[list[Example]]) -> list[Example]:
    return [ex for exs in per_row for ex in exs]


def _file_split(cfg: DataConfig) -> ClientSplit:
    """User files: each client's file, its last ``heldout_fraction`` of rows held out as
    domain ``client<k>`` (``eval_split = "validation"``: as many rows before them instead,
    left out of training)."""
    clients: list[list[Example]] = []
    heldout: dict[str, Heldout] = {}
    for k, path in enumerate(cfg.files):
        rows = read_rows(path)
        per_row = examples_of(rows, path, cfg.format, cfg.columns)
        if len(rows) < 2:
            raise DataError(f"{path}: needs at least 2 rows (train and held-out), has {len(rows)}")
        cut = max(1, int(len(rows) * cfg.heldout_fraction))
        train, held_rows = per_row[:-cut], per_row[-cut:]
        if cfg.eval_split == "validation":  # the rows before the test rows, not trained on
            if len(train) < 2:
                raise DataError(f"{path}: too few rows for a validation slice ({len(rows)})")
            train, held_rows = train[:-cut], train[-cut:]
        clients.append(_cap(_flat(train), cfg.max_train_per_client))
        held = _flat(held_rows)[: cfg.max_eval_per_domain]
        heldout[f"client{k}"] = Heldout(held, owner=k)
    return ClientSplit(clients, heldout, sources=[f"file {path}" for path in cfg.files])


def _dataset_split(cfg: DataConfig, seed: int) -> ClientSplit:
    """One dataset split across clients; each keeps the end of its rows as held-out."""
    rows = read_rows(cfg.dataset)
    per_row = examples_of(rows, cfg.dataset, cfg.format, cfg.columns)
    parts = assign_rows(
        rows,
        cfg.dataset,
        cfg.partition,
        cfg.clients,
        seed,
        cfg.label_column,
        cfg.dirichlet_alpha,
    )
    own = client_parts(rows, per_row, parts, cfg.heldout_fraction, cfg.label_column)
    return ClientSplit(
        [_cap(p.train, cfg.max_train_per_client) for p in own],
        {
            f"client{k}": Heldout(p.heldout[: cfg.max_eval_per_domain], owner=k)
            for k, p in enumerate(own)
        },
        [p.labels for p in own],
        [_dataset_source(cfg, k, p.labels) for k, p in enumerate(own)],
    )


def _dataset_source(cfg: DataConfig, k: int, labels: dict[str, int]) -> str:
    if not labels:
        return f"{cfg.dataset}: {cfg.partition} part {k + 1} of {cfg.clients}"
    values = ", ".join(f"{v} ({n} rows)" for v, n in labels.items())
    return f"{cfg.dataset}: {cfg.label_column} = {values}"


OOD_NAME = "ood-arithmetic"


def client_split(cfg: DataConfig, seed: int) -> ClientSplit:
    """Assign training data to ``cfg.clients`` clients as ``cfg.partition`` says (with
    ``cfg.pool``: as for that many clients, then all of it to one)."""
    if cfg.pool:
        return pooled(client_split(dataclasses.replace(cfg, pool=0, clients=cfg.pool), seed))
    if cfg.dataset:
        return _dataset_split(cfg, seed)
    if cfg.partition == "files":
        return _file_split(cfg)
    domains = {name: load_domain(name) for name in cfg.domains}
    validation = cfg.eval_split == "validation"
    if validation:
        domains = {name: validation_view(d, cfg.max_eval_per_domain) for name, d in domains.items()}
    train = {name: d.train for name, d in domains.items()}
    if cfg.partition == "domain":
        clients = by_domain(train, cfg.clients)
    elif cfg.partition == "dirichlet":
        clients = dirichlet(train, cfg.clients, cfg.dirichlet_alpha, seed)
    else:
        clients = iid([ex for exs in train.values() for ex in exs], cfg.clients, seed)
    heldout = {
        name: Heldout(
            d.heldout[: cfg.max_eval_per_domain],
            []
            if validation
            else choice_task(name, load_split_records(name)[1], seed)[: cfg.choice_items],
        )
        for name, d in domains.items()
    }
    # Out of domain: arithmetic word problems that no client trains on (loss only).
    heldout[OOD_NAME] = Heldout(ood_arithmetic(cfg.max_eval_per_domain, seed))
    capped = [_cap(c, cfg.max_train_per_client) for c in clients]
    domain_of = {id(ex): name for name, exs in train.items() for ex in exs}
    sources = []
    for examples in capped:
        counts = Counter(domain_of[id(ex)] for ex in examples)
        sources.append("built-in " + ", ".join(f"{d} ({n})" for d, n in sorted(counts.items())))
    return ClientSplit(capped, heldout, sources=sources)


def validation_view(domain: DomainData, most: int) -> DomainData:
    """``domain`` with the last ``min(most, 10%)`` of its training examples (hash order, so
    a fixed pseudo-random slice) as its held-out set: disjoint from its test held-out set,
    and no longer trained on."""
    n = max(1, min(most, len(domain.train) // 10))
    return DomainData(domain.name, domain.train[:-n], domain.train[-n:])


def pooled(split: ClientSplit) -> ClientSplit:
    """One client holding every client's training examples of ``split`` (the centralised
    reference); held-out sets owned by a client become the one client's."""
    heldout = {
        name: h if h.owner is None else dataclasses.replace(h, owner=0)
        for name, h in split.heldout.items()
    }
    source = "pooled: " + "; ".join(split.sources) if split.sources else "pooled"
    return ClientSplit([_flat(split.clients)], heldout, sources=[source])


def server_heldout(cfg: DataConfig, seed: int) -> dict[str, Heldout]:
    """The held-out sets the server owns (public packages only; never a client's file)."""
    if cfg.own_heldout:
        return {}
    return client_split(cfg, seed).heldout


def task_heldout(cfg: EvalConfig, data: DataConfig) -> dict[str, Heldout]:
    """The user's ``eval.tasks``, the server's to score (first ``max_eval_per_domain``)."""
    tasks = load_tasks(cfg.tasks, data.format, data.columns, data.max_eval_per_domain)
    return {t.name: Heldout(t.examples, t.questions) for t in tasks}


def own_data(cfg: DataConfig, cid: int, path: str | None, seed: int) -> ClientSplit:
    """Client ``cid``'s training examples and own held-out set, exactly as
    :func:`client_split` cuts them: from its file alone (``path``, else ``data.files[cid]``),
    or its part of ``data.dataset`` (every client reads the dataset and keeps its part)."""
    if cfg.dataset:
        split = client_split(cfg, seed)
        name = f"client{cid}"
        labels = split.labels[cid : cid + 1]
        return ClientSplit([split.clients[cid]], {name: split.heldout[name]}, labels)
    one = dataclasses.replace(cfg, clients=1, files=(path or cfg.files[cid],))
    split = client_split(one, seed)
    (held,) = split.heldout.values()
    return ClientSplit(split.clients, {f"client{cid}": Heldout(held.examples, owner=cid)})


def with_client_count(cfg: RunConfig) -> RunConfig:
    """``cfg`` with ``data.clients`` counted from the data where it was left to the data (a
    column split: one client per value of ``data.label_column``)."""
    data = cfg.data
    if data.clients != 0:
        return cfg
    values = {
        str(v) for v in label_values(read_rows(data.dataset), data.label_column, data.dataset)
    }
    return dataclasses.replace(cfg, data=dataclasses.replace(data, clients=len(values)))
