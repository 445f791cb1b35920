"""The SecAgg+ protocol's two sides, run in-process: the server gets exactly the sum of the
clients that finished, survives drops while the threshold holds, and a client refuses the
requests that would unmask one vector."""

from __future__ import annotations

import random
from collections.abc import Collection

import numpy as np
import pytest

from fedlora.runtime.masking import add_mod, word_dtype
from fedlora.runtime.secagg import SecAggClient, SecAggError, SecAggServer, neighbour_ring

BITS = 32


def words(k: int, size: int = 33) -> np.ndarray:
    return (
        np.random.default_rng(k)
        .integers(0, 2**BITS, size, dtype=np.uint64)
        .astype(word_dtype(BITS))
    )


def run_round(
    ids: list[int],
    num_shares: int,
    threshold: int,
    gone_after_keys: Collection[int] = (),
    gone_after_shares: Collection[int] = (),
    gone_after_mask: Collection[int] = (),
    through_records: bool = False,
    liar: int | None = None,
) -> np.ndarray:
    """One round: keys, shares, masked vectors, unmasking; some clients vanish on the way
    (after sending keys, after sending shares, after sending a masked vector). With
    ``through_records`` each client is rebuilt from its record before every stage, as a
    Flower node's fresh process per message rebuilds it. A ``liar`` sends garbage in place of
    every share it reveals."""
    server = SecAggServer(neighbour_ring(ids, num_shares, random.Random(0)), threshold, BITS)
    clients = {nid: SecAggClient.start(nid, threshold, BITS) for nid in ids}

    def client(nid: int) -> SecAggClient:
        if through_records:
            clients[nid] = SecAggClient.from_record(clients[nid].to_record())
        return clients[nid]

    server.keys = {nid: c.keys for nid, c in clients.items()}
    for nid in ids:
        if nid not in gone_after_keys:
            server.shared[nid] = client(nid).share_keys(server.keys_for(nid))
            server.commitments[nid] = client(nid).commitment
    for nid in sorted(server.shared):
        if nid not in gone_after_shares:
            masked = client(nid).mask(words(nid), server.shares_for(nid))
            assert (masked == words(nid)).mean() < 0.1  # what travels is not the words
            server.add_masked(nid, masked, 33)
    replies = {
        nid: client(nid).reveal(*server.unmask_request(nid))
        for nid in sorted(server.masked)
        if nid not in gone_after_mask
    }
    if liar is not None:
        replies[liar] = {owner: b"\x01" * len(share) for owner, share in replies[liar].items()}
    return server.unmask(replies)


def plain_sum(ids: Collection[int]) -> np.ndarray:
    total = np.zeros(33, dtype=word_dtype(BITS))
    for nid in ids:
        total = add_mod(total, words(nid), BITS)
    return total


def test_the_server_gets_exactly_the_sum() -> None:
    ids = [11, 12, 13, 14]
    assert np.array_equal(run_round(ids, num_shares=4, threshold=3), plain_sum(ids))


@pytest.mark.parametrize("stage", ["gone_after_keys", "gone_after_shares"])
def test_a_client_that_drops_before_masking_leaves_the_others_sum(stage: str) -> None:
    ids = [3, 5, 8, 13, 21]
    total = run_round(ids, num_shares=5, threshold=3, **{stage: [8]})
    assert np.array_equal(total, plain_sum([3, 5, 13, 21]))


def test_secagg_plus_neighbourhoods_survive_drops_at_every_stage() -> None:
    ids = list(range(100, 109))
    total = run_round(
        ids, 5, 3, gone_after_keys=[101], gone_after_shares=[106], gone_after_mask=[104]
    )
    assert np.array_equal(total, plain_sum([i for i in ids if i not in (101, 106)]))


def test_a_client_rebuilt_from_its_record_before_every_stage_plays_the_same_round() -> None:
    ids = [2, 4, 6, 8, 10]
    total = run_round(ids, 5, 3, gone_after_shares=[6], through_records=True)
    assert np.array_equal(total, plain_sum([2, 4, 8, 10]))


def test_a_record_with_a_field_of_the_wrong_type_is_refused() -> None:
    record = SecAggClient.start(1, 2, BITS).to_record()
    for name, bad in (("sk1", "text"), ("neighbours", [1, "2"]), ("revealed", True)):
        with pytest.raises(SecAggError, match=name):
            SecAggClient.from_record({**record, name: bad})


def test_below_the_threshold_the_round_cannot_be_unmasked() -> None:
    with pytest.raises(SecAggError, match="fewer than"):
        run_round([1, 2, 3, 4], num_shares=4, threshold=4, gone_after_mask=[2])


def test_a_client_refuses_to_reveal_both_secrets_of_one_node() -> None:
    ids = [1, 2, 3]
    clients = {nid: SecAggClient.start(nid, 2, BITS) for nid in ids}
    keys = {nid: c.keys for nid, c in clients.items()}
    shared = {nid: c.share_keys(keys) for nid, c in clients.items()}
    clients[1].mask(words(1), {src: out[1] for src, out in shared.items() if 1 in out})
    with pytest.raises(SecAggError, match="both alive and dropped"):
        clients[1].reveal([1, 2, 3], [2])
    with pytest.raises(SecAggError, match="holds no shares"):
        clients[1].reveal([1, 2], [4])


def test_forged_or_misrouted_shares_are_refused() -> None:
    ids = [1, 2, 3]
    clients = {nid: SecAggClient.start(nid, 2, BITS) for nid in ids}
    keys = {nid: c.keys for nid, c in clients.items()}
    shared = {nid: c.share_keys(keys) for nid, c in clients.items()}
    with pytest.raises(SecAggError, match="not a neighbour"):
        clients[1].mask(words(1), {9: shared[2][1]})
    with pytest.raises(SecAggError, match="do not decrypt"):
        clients[1].mask(words(1), {2: shared[3][1]})  # 3's shares sent as 2's
    with pytest.raises(SecAggError, match="own public keys"):
        SecAggClient.start(4, 2, BITS).share_keys(keys)


def test_the_ring_is_symmetric_and_each_neighbourhood_has_num_shares_nodes() -> None:
    ring = neighbour_ring(list(range(10)), 5, random.Random(3))
    assert all(len(around) == 5 and nid in around for nid, around in ring.items())
    assert all(nid in ring[j] for nid, around in ring.items() for j in around)


@pytest.mark.parametrize("gone", [[], [5]])
def test_a_lying_neighbours_shares_are_routed_around(gone: list[int]) -> None:
    # 5 of 5 neighbours, threshold 3: one liar among the four (or five) who reveal; the
    # seed's hash (an alive node) and the public key (a dropped one) tell its shares apart
    ids = [1, 2, 3, 4, 5]
    total = run_round(ids, 5, 3, gone_after_shares=gone, liar=1)
    assert np.array_equal(total, plain_sum([i for i in ids if i not in gone]))


def test_a_threshold_of_half_the_neighbourhood_or_less_is_refused_by_the_client() -> None:
    clients = {nid: SecAggClient.start(nid, 2, BITS) for nid in (1, 2, 3, 4)}
    keys = {nid: c.keys for nid, c in clients.items()}
    with pytest.raises(SecAggError, match="not more than half"):
        clients[1].share_keys(keys)
