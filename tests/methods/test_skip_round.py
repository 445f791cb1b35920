"""``skip_round``: a round skipped after its broadcast went out must not leave a pending
base merge behind, or the next broadcast merges the same aggregate a second time."""

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
    method = build(name, options)
    r1 = run_round(method, method.init_server(setup), setup)
    expected = global_dense(method, r1.state, setup, r1.base)  # everything learnt so far
    sent = method.broadcast(r1.state, setup, setup.client(0))
    merged = {
        layer: r1.base[layer] + dense(f) for layer, f in method.base_merge(sent, setup).items()
    }
    # Execute
    kept = method.skip_round(r1.state, setup)
    # Assert: the next broadcast merges nothing, and base + global update is unchanged
    again = method.broadcast(kept, setup, setup.client(0))
    assert all(float(dense(f).abs().max()) == 0 for f in method.base_merge(again, setup).values())
    after = global_dense(method, kept, setup, merged)
    for layer in expected:
        torch.testing.assert_close(after[layer], expected[layer], rtol=1e-6, atol=1e-7)
    assert kept.round == r1.state.round


@pytest.mark.parametrize("name", sorted(set(names()) - {"flora", "fedex"}))
def test_methods_without_base_merges_keep_the_state(name: str) -> None:
    setup = tiny_setup()
    method = build(name)
    state = run_round(method, method.init_server(setup), setup).state
    assert method.skip_round(state, setup) is state
