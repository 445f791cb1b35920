"""The uplink sparsifier plug-in (``uplink.sparsify``): one stage that wraps the upload and
the server-side decode of any method that sends LoRA factors."""

from __future__ import annotations

import pytest
import torch
from helpers import conforms, global_dense, run_round, tiny_setup

from fedlora.errors import ConfigError
from fedlora.methods.base import Method, Upload
from fedlora.methods.registry import build
from fedlora.methods.uplink import SparseUplink, as_received, with_uplink
from fedlora.ops.importance import importance_a, importance_b
from fedlora.ops.masks import quantile_mask
from fedlora.ops.ratio import RatioRule
from fedlora.ops.sparse import Sparse

# (method, options, ranks): every method the plug-in serves, mixed ranks where it has them
SERVED = [
    ("fedavg", {}, (4, 2, 3)),
    ("fedprox", {}, (4, 2, 3)),
    ("ffa", {}, (4, 2, 3)),
    ("flora", {}, (4, 2, 3)),
    ("flexlora", {}, (4, 2, 3)),
    ("florist", {"tau": 0.9}, (4, 2, 3)),
    ("florist", {"mode": "merge"}, (4, 4, 4)),
]


def wrap(method: Method, sparsifier: str = "importance", **rule: float) -> SparseUplink:
    return SparseUplink(method, sparsifier=sparsifier, rule=RatioRule(**rule))


def two_rounds(method: Method):
    setup = method.setup
    gen = torch.Generator().manual_seed(21)
    r1 = run_round(method, method.init_server(), setup, gen=gen)
    r2 = run_round(method, r1.state, setup, gen=gen, views=r1.views, base=r1.base)
    return setup, r1, r2


@pytest.mark.parametrize(("name", "options", "ranks"), SERVED)
def test_without_pruning_the_wrapped_method_is_unchanged(name, options, ranks) -> None:
    # Prepare / Execute: the same two rounds, plain and through the plug-in at rho = 0
    setup = tiny_setup(ranks=ranks)
    _, p1, p2 = two_rounds(build(name, options, setup=setup))
    _, w1, w2 = two_rounds(wrap(build(name, options, setup=setup), fixed_rho=0.0))
    # Assert: the server rebuilt every upload, so the global models agree (float32 rounding
    # of start + (trained - start) is the only difference)
    for plain, wrapped in ((p1, w1), (p2, w2)):
        want = global_dense(build(name, options, setup=setup), plain.state, setup, plain.base)
        got = global_dense(build(name, options, setup=setup), wrapped.state, setup, wrapped.base)
        for layer in want:
            torch.testing.assert_close(got[layer], want[layer], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("name", "options", "ranks"), SERVED)
def test_upload_is_the_sparsified_difference_under_the_methods_names(name, options, ranks):
    # Prepare
    method = wrap(build(name, options, setup=tiny_setup(ranks=ranks)))
    setup, r1, _ = two_rounds(method)
    for up in r1.uploads:
        client = setup.client(up.cid)
        start, trained = r1.starts[up.cid], r1.trained[up.cid]
        assert conforms(up.payload, method.upload_schema(client))
        for key, entry in up.payload.items():
            layer, part = key.rsplit(".", 1)
            old, new = start.adapter[layer], trained[layer]
            delta = (new.A - old.A) if part == "A" else (new.B - old.B)
            # Assert: a sparse entry kept exactly where the dense reference importance is
            # strictly above its interpolated quantile (ratio from the same scores)
            scores = importance_a(delta, new.B) if part == "A" else importance_b(delta, old.A)
            rho = RatioRule().ratio(scores)
            keep = quantile_mask(scores, rho) & (delta != 0)
            assert isinstance(entry, Sparse)
            assert torch.equal(entry.to_dense() != 0, keep), key
            assert entry.nnz < delta.numel()


def test_server_rebuilds_the_start_with_the_wires_rounding() -> None:
    # Prepare: a FedAvg state after one round (dense A and B on the wire)
    inner = build("fedavg", setup=tiny_setup(ranks=(4, 4, 4)))
    setup, r1, _ = two_rounds(inner)
    method = SparseUplink(inner, sparsifier="importance", rule=RatioRule(), wire_dtype="bfloat16")
    client = setup.client(0)
    # Execute
    start = method.rebuilt_start(r1.state, client, round_=2)
    # Assert: what a client decodes from a bfloat16 wire, not the float32 state
    sent = inner.broadcast(r1.state, client)
    rounded = as_received(sent, "bfloat16")
    torch.testing.assert_close(start.adapter["l0"].A, rounded["l0.A"], rtol=0, atol=0)
    assert not torch.equal(start.adapter["l0"].A, sent["l0.A"])


def test_an_upload_from_a_skipped_round_uses_its_own_seed_round() -> None:
    # Prepare: FLoRA's fresh starts depend on the round's seed; a client trained in runtime
    # round 3 while the state is still that of round 1 (round 2 was skipped)
    setup = tiny_setup(ranks=(4, 4, 4))
    method = wrap(build("flora", setup=setup), fixed_rho=0.0)
    state = run_round(method, method.init_server(), setup).state
    client = setup.client(1)
    at3 = method.rebuilt_start(state, client, round_=3)
    at2 = method.rebuilt_start(state, client, round_=2)
    # Assert: the runtime round, not state.round + 1, picks the seed
    assert not torch.equal(at3.adapter["l0"].A, at2.adapter["l0"].A)
    # an untrained client's upload is all-zero differences; rebuilt, it is its fresh start
    untrained = build("flora", setup=setup).upload(at3, at3.adapter, client, 0)
    zeros = {k: torch.zeros_like(v) for k, v in untrained.items()}
    rebuilt = method.aggregate(state, [Upload(1, 5, zeros, round=3)])
    ref = build("flora", setup=setup).aggregate(state, [Upload(1, 5, untrained)])
    for name, t in ref.tensors.items():
        assert torch.equal(rebuilt.tensors[name], t), name


@pytest.mark.parametrize("name", ["fedsrd", "fedsrd-e", "fed_dare"])
def test_methods_that_already_send_deltas_are_refused(name: str) -> None:
    inner = build(name, setup=tiny_setup())
    with pytest.raises(ConfigError, match="uplink.sparsify"):
        wrap(inner)


def test_none_returns_the_method_itself_and_reports_ratios() -> None:
    inner = build("fedavg", setup=tiny_setup(ranks=(4, 4, 4)))
    assert with_uplink(inner, sparsify="none", rule=RatioRule()) is inner
    method = with_uplink(inner, sparsify="magnitude", rule=RatioRule())
    setup, r1, _ = two_rounds(method)
    upload = next(u.payload for u in r1.uploads if u.cid == 0)
    report = method.upload_report(r1.starts[0], r1.trained[0], upload, setup.client(0))
    assert 0.85 <= report["uplink_rho_A"]["min"] <= report["uplink_rho_A"]["max"] <= 0.96
    assert method.name == "fedavg"
