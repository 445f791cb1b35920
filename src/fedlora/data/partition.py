"""Assign examples to clients: one domain per client, Dirichlet over domains, or IID.

Every partitioner is a pure function of its inputs and seed, assigns every input item to
exactly one client, and works on any item type (examples or raw records). Randomness comes
from ``numpy.random.default_rng(seed)`` only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeVar

import numpy as np

from fedlora.errors import ConfigError, DataError

T = TypeVar("T")
MAX_DIRICHLET_TRIES = 1000


def _check_clients(num_clients: int) -> None:
    if num_clients < 1:
        raise ConfigError(f"num_clients must be at least 1, got {num_clients}")


def by_domain(domains: Mapping[str, Sequence[T]], num_clients: int) -> list[list[T]]:
    """The papers' heterogeneous setting: each client holds a single domain.

    With ``D`` domains (in mapping order) and ``K`` clients, client ``k`` gets domain
    ``k mod D``. When several clients share a domain (``K > D``), its items are dealt to them
    round-robin so that no item is duplicated; when ``K < D``, client ``k`` takes every
    domain ``d`` with ``d mod K == k`` so that no item is dropped. Items keep their input
    order (``load_domain`` already returns them in a fixed pseudo-random order).

    Parameters
    ----------
    domains
        Items of each domain.
    num_clients
        Number of clients ``K``.

    Returns
    -------
    list of list
        Items of each client.
    """
    _check_clients(num_clients)
    names = list(domains)
    if not names:
        raise DataError("by_domain needs at least one domain")
    clients: list[list[T]] = [[] for _ in range(num_clients)]
    if num_clients < len(names):
        for d, name in enumerate(names):
            clients[d % num_clients].extend(domains[name])
        return clients
    for d, name in enumerate(names):
        sharing = list(range(d, num_clients, len(names)))
        for i, item in enumerate(domains[name]):
            clients[sharing[i % len(sharing)]].append(item)
    return clients


def dirichlet(
    examples_by_domain: Mapping[str, Sequence[T]],
    num_clients: int,
    alpha: float,
    seed: int,
    min_examples: int = 0,
) -> list[list[T]]:
    """Dirichlet(alpha) split of each domain over clients (Hsu et al., 2019).

    For each domain in mapping order, client shares ``p ~ Dir(alpha * 1_K)`` are drawn, the
    domain's items are shuffled and cut at ``floor(cumsum(p) * n)``. Small ``alpha`` gives
    each domain to few clients (strong heterogeneity); large ``alpha`` approaches an even
    split of every domain (IID over domains). Each client's items are then shuffled, so that
    a prefix of a client's list mixes its domains.

    Parameters
    ----------
    examples_by_domain
        Items of each domain.
    num_clients
        Number of clients ``K``.
    alpha
        Concentration, positive.
    seed
        Seed of the only generator used.
    min_examples
        Redraw the whole split (same generator, so still deterministic) until every client
        has at least this many items; 0 accepts empty clients.

    Raises
    ------
    ConfigError
        For a non-positive ``alpha`` or a bad ``num_clients``.
    DataError
        If ``min_examples`` cannot be met within ``MAX_DIRICHLET_TRIES`` draws.
    """
    _check_clients(num_clients)
    if not alpha > 0.0 or not np.isfinite(alpha):
        raise ConfigError(f"Dirichlet alpha must be positive and finite, got {alpha}")
    total = sum(len(items) for items in examples_by_domain.values())
    if min_examples * num_clients > total:
        raise DataError(f"cannot give {num_clients} clients {min_examples} of {total} items each")
    rng = np.random.default_rng(seed)
    for _ in range(MAX_DIRICHLET_TRIES):
        clients: list[list[T]] = [[] for _ in range(num_clients)]
        for items in examples_by_domain.values():
            shares = rng.dirichlet(np.full(num_clients, alpha))
            if not np.all(np.isfinite(shares)):
                # Tiny alpha can underflow every gamma draw; the limit is one client taking all.
                shares = np.eye(num_clients)[rng.integers(num_clients)]
            order = rng.permutation(len(items))
            cuts = np.floor(np.cumsum(shares)[:-1] * len(items)).astype(np.int64)
            for k, part in enumerate(np.split(order, cuts)):
                clients[k].extend(items[int(i)] for i in part)
        if min(len(c) for c in clients) >= min_examples:
            return [[c[int(i)] for i in rng.permutation(len(c))] for c in clients]
    raise DataError(
        f"no Dirichlet(alpha={alpha}) split gave every one of {num_clients} clients "
        f"{min_examples} items in {MAX_DIRICHLET_TRIES} draws; raise alpha or lower min_examples"
    )


def iid(examples: Sequence[T], num_clients: int, seed: int) -> list[list[T]]:
    """Shuffle and deal items into ``num_clients`` parts whose sizes differ by at most one.

    Parameters
    ----------
    examples
        All items.
    num_clients
        Number of clients ``K``.
    seed
        Seed of the shuffle.
    """
    _check_clients(num_clients)
    order = np.random.default_rng(seed).permutation(len(examples))
    return [[examples[int(i)] for i in part] for part in np.array_split(order, num_clients)]
