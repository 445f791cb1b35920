"""``skip_round``: a round skipped after its broadcast went out must not leave a pending
base merge (or view delta) behind, or the next broadcast applies the same aggregate twice."""

from __future__ import annotations

import pytest
import torch
from helpers import dense, global_dense, run_round, tiny_setup

from fedlora.methods.registry import build, names

MERGING = [("flora", {}), ("fedex", {}), ("florist", {"mode": "merge"})]


@pytest.mark.parametrize(("name", "options"), MERGING)
def test_the_skipped_rounds_merge_is_not_repeated(name: str, options: dict[str, str]) -> None:
    # Prepare: one real round, then a round whose broadcast goes out but is skipped
    setup = tiny_setup()
    method = build(name, options, setup=setup)
    r1 = run_round(method, method.init_server(), setup)
    expected = global_dense(method, r1.state, setup, r1.base)  # everything learnt so far
    sent = method.broadcast(r1.state, setup.client(0))
    merged = {layer: r1.base[layer] + dense(f) for layer, f in method.base_merge(sent).items()}
    # Execute
    kept = method.skip_round(r1.state)
    # Assert: the next broadcast merges nothing, and base + global update is unchanged
    again = method.broadcast(kept, setup.client(0))
    assert all(float(dense(f).abs().max()) == 0 for f in method.base_merge(again).values())
    after = global_dense(method, kept, setup, merged)
    for layer in expected:
        torch.testing.assert_close(after[layer], expected[layer], rtol=1e-6, atol=1e-7)
    assert kept.round == r1.state.round


SYNCED = ["fed_dare", "fedsrd", "fedsrd-e", "rolora"]


@pytest.mark.parametrize("name", SYNCED)
def test_synced_views_stay_in_sync_across_a_skipped_round(name: str) -> None:
    # Prepare: round 1 aggregated; round 2's broadcast (round 1's delta) goes out and every
    # client applies it to its view; then round 2 is skipped
    setup = tiny_setup()
    method = build(name, setup=setup)
    r1 = run_round(method, method.init_server(), setup)
    client = setup.client(0)
    sent = method.broadcast(r1.state, client)
    applied = method.client_start(r1.views[0], sent, client, 0).view
    # Execute
    kept = method.skip_round(r1.state)
    again = method.broadcast(kept, client)
    view = method.client_start(applied, again, client, 0).view
    # Assert: the delta is not applied twice; the view is the server's global adapter and
    # round 3 trains and aggregates as round 3 on both sides
    assert kept.round == r1.state.round + 1
    for s in setup.layers:
        for part in ("A", "B"):
            assert torch.equal(view[f"{s.name}.{part}"], kept.tensors[f"{s.name}.{part}"])
    r3 = run_round(method, kept, setup, views={c.cid: view for c in setup.clients})
    assert r3.state.round == 3


@pytest.mark.parametrize("name", sorted(set(names()) - {"flora", "fedex"} - set(SYNCED)))
def test_methods_without_base_merges_keep_the_state(name: str) -> None:
    setup = tiny_setup()
    method = build(name, setup=setup)
    state = run_round(method, method.init_server(), setup).state
    assert method.skip_round(state) is state
