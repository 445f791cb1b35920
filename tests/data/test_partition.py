"""Partitioners: every item to exactly one client, deterministic, Dirichlet limits."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedlora.data.partition import by_domain, dirichlet, iid
from fedlora.errors import ConfigError, DataError


def _domains(sizes: list[int]) -> dict[str, list[str]]:
    return {f"d{d}": [f"d{d}-{i}" for i in range(n)] for d, n in enumerate(sizes)}


def _flat(domains: dict[str, list[str]]) -> list[str]:
    return [item for items in domains.values() for item in items]


def _assert_exact_cover(clients: list[list[str]], items: list[str]) -> None:
    assigned = [item for client in clients for item in client]
    assert Counter(assigned) == Counter(items)


sizes_st = st.lists(st.integers(0, 30), min_size=1, max_size=5)


@settings(max_examples=40, deadline=None)
@given(sizes=sizes_st, num_clients=st.integers(1, 9))
def test_by_domain_covers_every_item_once(sizes: list[int], num_clients: int) -> None:
    # Prepare
    domains = _domains(sizes)
    # Execute
    clients = by_domain(domains, num_clients)
    # Assert
    assert len(clients) == num_clients
    _assert_exact_cover(clients, _flat(domains))


def test_by_domain_gives_client_k_domain_k_mod_d() -> None:
    # Prepare
    domains = _domains([4, 6, 2])
    # Execute
    clients = by_domain(domains, 6)
    # Assert: clients k and k+3 share domain k; each holds only that domain
    for k, client in enumerate(clients):
        assert {item.split("-")[0] for item in client} == {f"d{k % 3}"}
    assert sorted(clients[1] + clients[4]) == sorted(domains["d1"])
    assert abs(len(clients[1]) - len(clients[4])) <= 1


def test_by_domain_with_fewer_clients_than_domains_keeps_every_domain() -> None:
    # Prepare
    domains = _domains([3, 3, 3])
    # Execute
    clients = by_domain(domains, 2)
    # Assert
    assert clients[0] == domains["d0"] + domains["d2"]
    assert clients[1] == domains["d1"]


@settings(max_examples=40, deadline=None)
@given(
    sizes=sizes_st,
    num_clients=st.integers(1, 8),
    alpha=st.floats(1e-3, 1e3),
    seed=st.integers(0, 2**32 - 1),
)
def test_dirichlet_covers_every_item_once_and_is_deterministic(
    sizes: list[int], num_clients: int, alpha: float, seed: int
) -> None:
    # Prepare
    domains = _domains(sizes)
    # Execute
    first = dirichlet(domains, num_clients, alpha, seed)
    second = dirichlet(domains, num_clients, alpha, seed)
    # Assert
    assert len(first) == num_clients
    _assert_exact_cover(first, _flat(domains))
    assert first == second


def _domain_shares(clients: list[list[str]], domains: dict[str, list[str]]) -> np.ndarray:
    """shares[d, k] = fraction of domain d held by client k."""
    shares = np.zeros((len(domains), len(clients)))
    for k, client in enumerate(clients):
        for item in client:
            shares[int(item.split("-")[0][1:]), k] += 1
    return shares / np.array([len(v) for v in domains.values()])[:, None]


def test_dirichlet_tiny_alpha_gives_each_domain_to_one_client() -> None:
    # Prepare
    domains = _domains([200, 200, 200, 200])
    # Execute
    clients = dirichlet(domains, 5, alpha=1e-4, seed=3)
    # Assert
    assert np.all(_domain_shares(clients, domains).max(axis=1) > 0.99)


def test_dirichlet_huge_alpha_splits_each_domain_evenly() -> None:
    # Prepare
    domains = _domains([400, 400, 400])
    # Execute
    clients = dirichlet(domains, 4, alpha=1e6, seed=3)
    # Assert: each client holds about 1/4 of every domain (cuts floor at most one item off)
    np.testing.assert_allclose(_domain_shares(clients, domains), 0.25, atol=0.01)


def test_dirichlet_client_lists_mix_their_domains() -> None:
    # Prepare
    domains = _domains([100, 100])
    # Execute
    clients = dirichlet(domains, 1, alpha=1.0, seed=0)
    # Assert: one client holds both domains; its first 40 items are not all from one
    assert 8 <= sum(item.startswith("d1") for item in clients[0][:40]) <= 32


def test_dirichlet_seed_changes_the_split() -> None:
    # Prepare
    domains = _domains([50, 50])
    # Execute
    a = dirichlet(domains, 3, 1.0, seed=0)
    b = dirichlet(domains, 3, 1.0, seed=1)
    # Assert
    assert a != b


def test_dirichlet_min_examples_is_met_or_refused() -> None:
    # Prepare
    domains = _domains([30, 30])
    # Execute
    clients = dirichlet(domains, 3, alpha=0.5, seed=0, min_examples=5)
    # Assert
    assert min(len(c) for c in clients) >= 5
    with pytest.raises(DataError, match="min_examples"):
        dirichlet(domains, 4, alpha=1e-4, seed=0, min_examples=10)
    with pytest.raises(DataError, match="cannot give"):
        dirichlet(domains, 4, alpha=1.0, seed=0, min_examples=16)


@pytest.mark.parametrize("alpha", [0.0, -1.0, float("nan"), float("inf")])
def test_dirichlet_rejects_bad_alpha(alpha: float) -> None:
    with pytest.raises(ConfigError, match="alpha"):
        dirichlet(_domains([3]), 2, alpha, seed=0)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 60), num_clients=st.integers(1, 9), seed=st.integers(0, 2**32 - 1))
def test_iid_balanced_cover_and_deterministic(n: int, num_clients: int, seed: int) -> None:
    # Prepare
    items = [f"x-{i}" for i in range(n)]
    # Execute
    clients = iid(items, num_clients, seed)
    # Assert
    _assert_exact_cover(clients, items)
    sizes = [len(c) for c in clients]
    assert max(sizes) - min(sizes) <= 1
    assert clients == iid(items, num_clients, seed)


def test_iid_shuffles() -> None:
    # Prepare
    items = list(range(100))
    # Execute
    clients = iid(items, 2, seed=0)
    # Assert: a shuffle, not the contiguous halves
    assert clients[0] != items[:50]


@pytest.mark.parametrize(
    "partition",
    [
        lambda: by_domain({"a": [1]}, 0),
        lambda: dirichlet({"a": [1]}, 0, 1.0, 0),
        lambda: iid([1], 0, 0),
    ],
)
def test_partitioners_reject_zero_clients(partition) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="num_clients"):
        partition()
