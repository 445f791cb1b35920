"""Registering many clients costs a round nothing per idle client: broadcasts are built per
client shape, idle clients share one mirrored view, checkpoints store each view once, and
client data is packed. Each sharing is checked against the per-client computation it
replaces (the method's own hooks called client by client)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from fedlora import config
from fedlora.config import DataConfig, EvalConfig, FederationConfig, RunConfig
from fedlora.methods.base import ClientSpec, Method, Payload, ServerState, Setup, Tensor
from fedlora.methods.registry import build, names
from fedlora.ops.seeds import Stream, client_seed
from fedlora.runtime import checkpoint
from fedlora.runtime.driver import run_round
from fedlora.runtime.run_folder import RunState
from fedlora.runtime.simulation import run
from fedlora.runtime.synthetic import SyntheticServer, SyntheticTransport
from fedlora.train.batches import Encoded, PackedExamples, truncated_count
from tests.conftest import tiny_overrides
from tests.methods.helpers import assert_same, tiny_setup
from tests.methods.helpers import run_round as method_round

HETERO = {"fedavg", "fedprox", "ffa", "florist", "flora", "flexlora"}


@pytest.mark.parametrize("name", names())
def test_broadcast_and_new_view_depend_on_the_client_shape_only(name: str) -> None:
    # Prepare: three clients of one shape; rounds played through the method's hooks
    setup = tiny_setup(ranks=(4, 4, 4))
    method = build(name, setup=setup)
    state, views = method.init_server(), {}
    a, b = setup.clients[0], setup.clients[2]
    for t in range(1, 4):
        # Execute: the same broadcast and view to clients alike but for their cid and seed
        to_a, to_b = method.broadcast(state, a), method.broadcast(state, b)
        view = views.get(0)
        new_a = method.client_start(view, to_a, a, client_seed(0, Stream.CLIENT_START, t, 0))
        new_b = method.client_start(view, to_a, b, client_seed(0, Stream.CLIENT_START, t, 2))
        # Assert
        assert_same(to_a, to_b)
        assert_same(dict(new_a.view), dict(new_b.view))
        result = method_round(method, state, setup, views=views)
        state, views = result.state, result.views


class CountingMethod:
    """A method whose broadcasts and client starts are counted (everything else delegated)."""

    def __init__(self, inner: Method) -> None:
        self.inner = inner
        self.broadcasts = 0
        self.starts = 0

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.inner, attr)

    def broadcast(self, state: ServerState, client: ClientSpec) -> Payload:
        self.broadcasts += 1
        return self.inner.broadcast(state, client)

    def client_start(
        self,
        view: Mapping[str, Tensor] | None,
        payload: Payload,
        client: ClientSpec,
        seed: int,
    ) -> Any:
        self.starts += 1
        return self.inner.client_start(view, payload, client, seed)


def _synthetic(method: Method, setup: Setup, sampled: int) -> tuple[SyntheticServer, RunState]:
    cfg = RunConfig(
        data=DataConfig(clients=len(setup.clients)),
        federation=FederationConfig(rounds=10, clients_per_round=sampled),
        eval=EvalConfig(every=100),
    )
    server = SyntheticServer(cfg, method, setup)
    views: dict[int, dict[str, Tensor] | None] = {c.cid: None for c in setup.clients}
    return server, RunState(0, method.init_server(), views)


@pytest.mark.parametrize("name", ["fedsrd", "fed_dare", "florist", "fedavg"])
def test_many_idle_clients_share_broadcasts_and_views_that_equal_their_own(name: str) -> None:
    # Prepare: 60 clients, two shapes where the method allows them, 4 sampled a round
    ranks: Sequence[int] = [4, 2] * 30 if name in HETERO else [4] * 60
    setup = dataclasses.replace(tiny_setup(ranks=ranks, d=12), seed=3)
    counting = CountingMethod(build(name, setup=setup))
    server, rs = _synthetic(counting, setup, sampled=4)  # type: ignore[arg-type]
    transport = SyntheticTransport(server, train_rounds=10)
    reference: dict[int, dict[str, Tensor] | None] = {c.cid: None for c in setup.clients}
    for t in range(1, 4):
        state_before = rs.state
        counting.broadcasts = 0
        # Execute
        run_round(server, rs, transport, lambda kind, info: None)
        # Assert: one broadcast per shape; every client's mirrored view is what its own
        # client_start makes of its own previous view and its own broadcast
        assert counting.broadcasts == len({c.shape for c in setup.clients})
        for c in setup.clients:
            seed = client_seed(setup.seed, Stream.CLIENT_START, t, c.cid)
            own = counting.inner.broadcast(state_before, c)
            start = counting.inner.client_start(reference[c.cid], own, c, seed)
            reference[c.cid] = dict(start.view)
            assert_same(rs.views[c.cid], reference[c.cid])
    distinct = {id(v) for v in rs.views.values()}
    assert len(distinct) <= len({c.shape for c in setup.clients})


def test_a_checkpoint_stores_a_shared_view_once_and_shares_it_again(tmp_path: Path) -> None:
    # Prepare: 50 clients, all but one holding one view object
    shared = {"l0.A": torch.randn(3, 5), "l0.B": torch.zeros(4, 3)}
    own = {"l0.A": torch.ones(3, 5), "l0.B": torch.ones(4, 3)}
    views = {cid: shared for cid in range(50)} | {7: own}
    ckpt = checkpoint.Checkpoint(1, ServerState(1), views, [{}])
    # Execute
    folder = checkpoint.write(tmp_path, ckpt)
    back = checkpoint.read(tmp_path, 1)
    # Assert
    stored = load_file(str(folder / "tensors.safetensors"))
    assert sorted(k for k in stored if k.startswith("view/")) == [
        "view/0/l0.A",
        "view/0/l0.B",
        "view/7/l0.A",
        "view/7/l0.B",
    ]
    assert back.views[3] is back.views[49] and back.views[7] is not back.views[0]
    assert_same(back.views[12], shared)
    assert_same(back.views[7], own)


def test_a_checkpoint_naming_an_owner_without_a_view_is_refused(tmp_path: Path) -> None:
    views = {0: {"x": torch.ones(2)}}
    folder = checkpoint.write(tmp_path, checkpoint.Checkpoint(1, ServerState(1), views, [{}]))
    meta_path = folder / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["views"] = {"0": 0, "1": 5}
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(checkpoint.CheckpointError, match="owner"):
        checkpoint.read(tmp_path, 1)


def test_packed_examples_give_back_what_was_packed() -> None:
    examples = [
        Encoded([5, 6, 7], [-100, 6, 7]),
        Encoded([], []),
        Encoded([70000, 1], [-100, -100], truncated=True),
    ]
    packed = PackedExamples(examples)
    assert len(packed) == 3 and list(packed) == examples
    assert packed[-1] == examples[2] and packed[0:3:2] == [examples[0], examples[2]]
    assert truncated_count(packed) == 1 == truncated_count(examples)
    with pytest.raises(IndexError):
        packed[3]


def test_a_thousand_registered_clients_run_and_checkpoint_one_view(tmp_path: Path) -> None:
    # Prepare: the tiny model, the built-in domains split iid 1000 ways, 3 sampled a round
    out = tmp_path / "run"
    overrides = [o for o in tiny_overrides(out, []) if not o.startswith("data.")]
    cfg = config.load(
        None,
        [
            *overrides,
            "data.clients=1000",
            "data.partition=iid",
            "data.max_eval_per_domain=2",
            "federation.clients_per_round=3",
            "method=fedsrd",
        ],
    )
    # Execute
    run(cfg)
    # Assert: two rounds of three clients; the checkpoint holds one client's view tensors
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [len(r["accepted"]) for r in records[1:]] == [3, 3]
    assert len(records[-1]["download_bytes"]) == 1000
    ckpt = checkpoint.read(out / "checkpoints", 2)
    assert len({id(v) for v in ckpt.views.values()}) == 1 and len(ckpt.views) == 1000
    stored = load_file(str(out / "checkpoints" / "round-0002" / "tensors.safetensors"))
    assert {k.split("/")[1] for k in stored if k.startswith("view/")} == {"0"}
