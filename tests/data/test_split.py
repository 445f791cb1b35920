"""Held-out split: depends only on (domain, id), has the requested rate, keeps order."""

from __future__ import annotations

import math

import pytest

from fedlora.data.domains import is_heldout, split_records
from fedlora.errors import ConfigError


def _records(n: int) -> list[dict[str, str]]:
    return [{"id": f"r{i}", "text": str(i)} for i in range(n)]


def test_split_partitions_records_independently_of_input_order() -> None:
    # Prepare
    records = _records(300)
    shuffled = records[1::2] + records[0::2][::-1]
    # Execute
    train, heldout = split_records("email", records, 0.2)
    # Assert
    assert len(train) + len(heldout) == len(records)
    assert {r["id"] for r in train}.isdisjoint(r["id"] for r in heldout)
    assert all(is_heldout("email", r["id"], 0.2) for r in heldout)
    assert split_records("email", shuffled, 0.2) == (train, heldout)


def test_split_order_mixes_a_sorted_source() -> None:
    # Prepare: a source sorted by class, like the SpamAssassin folders
    records = [{"id": f"ham/{i}"} for i in range(100)] + [{"id": f"spam/{i}"} for i in range(100)]
    # Execute
    train, _ = split_records("email", records, 0.1)
    # Assert: the first 40 training records are not all of one class
    assert 8 <= sum(r["id"].startswith("spam") for r in train[:40]) <= 32


def test_split_side_does_not_depend_on_neighbours() -> None:
    # Prepare
    records = _records(200)
    # Execute
    _, heldout_all = split_records("code", records)
    _, heldout_half = split_records("code", records[100:])
    # Assert: a record's side is a function of the record alone
    expected = {r["id"] for r in heldout_all} & {r["id"] for r in records[100:]}
    assert {r["id"] for r in heldout_half} == expected


def test_heldout_rate_matches_fraction() -> None:
    # Prepare
    n, fraction = 20_000, 0.1
    # Execute
    count = sum(is_heldout("literature", f"id{i}", fraction) for i in range(n))
    # Assert: within 5 binomial standard deviations
    assert abs(count - n * fraction) < 5 * math.sqrt(n * fraction * (1 - fraction))


def test_domain_name_is_part_of_the_hash() -> None:
    # Execute
    a = [is_heldout("code", f"id{i}", 0.5) for i in range(200)]
    b = [is_heldout("email", f"id{i}", 0.5) for i in range(200)]
    # Assert
    assert a != b


def test_fraction_edges() -> None:
    assert not any(is_heldout("code", f"id{i}", 0.0) for i in range(100))
    assert all(is_heldout("code", f"id{i}", 1.0) for i in range(100))
    with pytest.raises(ConfigError):
        is_heldout("code", "x", 1.5)
