"""Which examples each client trains on and what every domain is evaluated on.

Who evaluates what: a held-out set cut from a client's own data (``data.partition =
"files"``: the last tenth of the client's file, named ``client<k>``) has that client as its
``owner`` and is scored on that client only (federated evaluation); held-out sets of the
built-in domains and the out-of-domain task come from public packages that the server
provisions itself, and the server scores them. The server never reads a client's file.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fedlora.config import DataConfig
from fedlora.data.domains import load_domain, load_split_records
from fedlora.data.eval_tasks import ChoiceItem, choice_task, ood_arithmetic
from fedlora.data.jsonl import load_jsonl
from fedlora.data.partition import by_domain, dirichlet, iid
from fedlora.data.types import Example
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


def _cap(items: list[Example], limit: int) -> list[Example]:
    return items[:limit] if limit > 0 else items


def _file_split(cfg: DataConfig) -> ClientSplit:
    """User files: each client's file, its last tenth held out as domain ``client<k>``."""
    clients: list[list[Example]] = []
    heldout: dict[str, Heldout] = {}
    for k, path in enumerate(cfg.files):
        examples = load_jsonl(path)
        if len(examples) < 2:
            raise DataError(
                f"{path}: needs at least 2 examples (train and held-out), has {len(examples)}"
            )
        cut = max(1, len(examples) // 10)
        clients.append(_cap(examples[:-cut], cfg.max_train_per_client))
        heldout[f"client{k}"] = Heldout(examples[-cut:][: cfg.max_eval_per_domain], owner=k)
    return ClientSplit(clients, heldout)


OOD_NAME = "ood-arithmetic"


def client_split(cfg: DataConfig, seed: int) -> ClientSplit:
    """Assign training data to ``cfg.clients`` clients as ``cfg.partition`` says."""
    if cfg.partition == "files":
        return _file_split(cfg)
    domains = {name: load_domain(name) for name in cfg.domains}
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
            choice_task(name, load_split_records(name)[1], seed)[: cfg.max_eval_per_domain],
        )
        for name, d in domains.items()
    }
    # Out of domain: arithmetic word problems that no client trains on (loss only).
    heldout[OOD_NAME] = Heldout(ood_arithmetic(cfg.max_eval_per_domain, seed))
    return ClientSplit([_cap(c, cfg.max_train_per_client) for c in clients], heldout)


def server_heldout(cfg: DataConfig, seed: int) -> dict[str, Heldout]:
    """The held-out sets the server owns (public packages only; never a client's file)."""
    if cfg.partition == "files":
        return {}
    return client_split(cfg, seed).heldout


def clients_own_heldout(cfg: DataConfig) -> bool:
    """Whether clients hold held-out sets of their own (scored by federated evaluation)."""
    return cfg.partition == "files"


def own_data(cfg: DataConfig, cid: int, path: str, seed: int) -> ClientSplit:
    """Client ``cid``'s training examples and own held-out set, from its file ``path`` alone
    (``data.partition = "files"``), exactly as :func:`client_split` cuts them."""
    one = DataConfig(
        clients=1,
        partition="files",
        files=(path,),
        max_train_per_client=cfg.max_train_per_client,
        max_eval_per_domain=cfg.max_eval_per_domain,
    )
    split = client_split(one, seed)
    (held,) = split.heldout.values()
    return ClientSplit(split.clients, {f"client{cid}": Heldout(held.examples, owner=cid)})
