"""Server states of the factored methods survive safetensors + JSON (no pickle)."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import assert_same, run_round, tiny_setup
from safetensors.torch import load, save

from fedlora.methods.base import ServerState
from fedlora.methods.registry import build


@pytest.mark.parametrize(
    ("name", "ranks"),
    [
        ("florist", (2, 4, 6)),
        ("flora", (2, 4, 6)),
        ("flexlora", (2, 4, 6)),
        ("fedex", (4, 4, 4)),
        ("fedprox", (2, 4, 6)),
        ("ffa", (4, 4, 4)),
    ],
)
def test_state_round_trips_and_the_next_round_is_identical(name, ranks):
    # Prepare
    setup = tiny_setup(ranks)
    method = build(name, setup=setup)
    r1 = run_round(method, method.init_server(), setup)

    # Execute: checkpoint and restore, then run round 2 from both states
    restored = ServerState(
        round=r1.state.round,
        tensors=load(save(r1.state.tensors)),
        meta=json.loads(json.dumps(r1.state.meta)),
    )
    from_live = run_round(
        method, r1.state, setup, views=r1.views, gen=torch.Generator().manual_seed(5)
    )
    from_disk = run_round(
        method, restored, setup, views=r1.views, gen=torch.Generator().manual_seed(5)
    )

    # Assert
    assert restored.meta == r1.state.meta
    assert_same(from_live.state.tensors, from_disk.state.tensors)
    assert_same(from_live.payloads, from_disk.payloads)
