"""Secure aggregation end to end: a method's step from the secure sum equals its plain step
(to within the fixed point's rounding), the round survives clients that drop or send
garbage while the threshold holds, methods that do not fit are refused naming why, and a
run gives the same adapter in-process and over Flower messages."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fedlora import config
from fedlora.config import SecAggConfig
from fedlora.errors import ConfigError
from fedlora.methods.base import Method, ServerState, Setup
from fedlora.methods.registry import build
from fedlora.methods.secure import secure_form
from fedlora.runtime import privacy, simulation
from fedlora.runtime.secure_round import Held, Message, answer, secure_sum
from fedlora.runtime.secure_sum import Quantiser, client_words, flatten, mean_terms, size_of
from tests.conftest import tiny_overrides, write_client_files
from tests.methods.helpers import RoundResult, run_round, tiny_setup

SECURE = {
    "fedavg": {},
    "fedprox": {},
    "ffa": {},
    "rolora": {},
    "fedsvd": {},
    "fed_sb": {},
    "fedsa": {},
    "fedsrd-e": {},
}
REFUSED = ["fedsrd", "florist", "flexlora", "flora", "fedex", "fed_dare", "local"]
Q = Quantiser(clipping_range=16.0, bits=32, clients=3)
"""Wide enough for the tiny layers' terms (FedSRD-e's carry A·Aᵀ, of order 1 at d = 16)."""


def in_process(held: Mapping[int, Held], fail: Mapping[str, Mapping[int, Any]] | None = None):
    """A stage function whose clients answer from ``held``; ``fail[stage][cid]`` replaces
    that client's reply in that stage (a string: no reply, saying why)."""

    def stage(name: str, requests: Mapping[int, Message]) -> dict[int, Message | str]:
        out: dict[int, Message | str] = {}
        for cid, req in requests.items():
            if fail and cid in fail.get(name, {}):
                out[cid] = fail[name][cid]
                continue
            try:
                out[cid] = answer(cid, name, req, held[cid])
            except Exception as exc:  # as a transport does: the server reads why
                out[cid] = f"{type(exc).__name__}: {exc}"
        return out

    return stage


def secure_step(method: Method, state: ServerState, setup: Setup, result: RoundResult) -> Any:
    """The round's uploads through the secure path: terms, words, the four stages, the mean,
    the method's step on it."""
    form = secure_form(method)
    t = state.round + 1
    shapes = form.secure_shapes(setup.clients[0], t)
    held = {}
    for up in result.uploads:
        client = setup.client(up.cid)
        terms = form.secure_terms(result.starts[up.cid], up.payload, client, t)
        rng = np.random.default_rng(up.cid)
        held[up.cid] = Held(t, client_words(flatten(terms, shapes), Q, None, rng))
    summed = secure_sum(t, sorted(held), size_of(shapes), SecAggConfig(), in_process(held))
    assert summed.skip is None and summed.total is not None
    mean = mean_terms(summed.total, Q, shapes, len(summed.alive))
    anyone = min(result.starts)
    reference = method.upload_reference(result.starts[anyone], setup.client(anyone))
    return form.aggregate_mean(state, mean, reference, t)


@pytest.mark.parametrize("name", sorted(SECURE))
def test_a_methods_step_from_the_secure_sum_equals_its_plain_step(name: str) -> None:
    # Prepare: three clients, uniform weights, two rounds (FedSRD-e and RoLoRA alternate)
    setup = tiny_setup(weighting="uniform")
    method = build(name, SECURE[name], setup=setup)
    state = method.init_server()
    views = None
    for round_ in (1, 2):
        gen = torch.Generator().manual_seed(round_)
        result = run_round(method, state, setup, gen=gen, views=views)

        # Execute
        plain = method.aggregate(state, result.uploads)
        secure = secure_step(method, state, setup, result)

        # Assert: the same state to within the rounding (1/scale = 3e-8 per mean value) as
        # the steps amplify it (FedSVD's SVD, FedSRD-e's pseudo-inverse: at most 5e-7 here)
        assert plain.tensors.keys() == secure.tensors.keys()
        for k, v in plain.tensors.items():
            assert torch.allclose(secure.tensors[k].double(), v.double(), atol=1e-6), (name, k)
        state, views = plain, result.views


def test_the_rounding_error_is_below_one_over_the_scale_per_mean_value() -> None:
    rng = np.random.default_rng(0)
    vectors = {cid: rng.uniform(-1, 1, 1000) for cid in range(3)}
    held = {
        cid: Held(1, client_words(v, Q, None, np.random.default_rng(cid)))
        for cid, v in vectors.items()
    }
    summed = secure_sum(1, [0, 1, 2], 1000, SecAggConfig(), in_process(held))
    assert summed.total is not None
    mean = mean_terms(summed.total, Q, {"x": (1000,)}, 3)["x"].numpy()
    exact = sum(vectors.values()) / 3
    assert np.abs(mean - exact).max() < 1 / Q.scale
    assert np.abs(mean - exact).max() > 0  # rounding happened: the check is not vacuous


def test_dp_noise_is_added_to_the_secure_sum_and_epsilon_is_the_plain_one() -> None:
    # the same noise key (a run declared not private) gives the plain noisy mean
    setup = tiny_setup(weighting="uniform")
    method = build("fedavg", setup=setup)
    state = method.init_server()
    result = run_round(method, state, setup)
    plan = privacy.Plan(10.0, 0.8, "fixed", 1.0, 3.0, 0.1, private=False, noise_seed=3)
    refs = {c: method.upload_reference(s, setup.client(c)) for c, s in result.starts.items()}
    form = secure_form(method)
    shapes = form.secure_shapes(setup.client(0), 1)
    plain = privacy.noisy_mean(result.uploads, refs, shapes, refs[0], plan, round_=1)
    held = {}
    for up in result.uploads:
        terms = form.secure_terms(result.starts[up.cid], up.payload, setup.client(up.cid), 1)
        words = client_words(flatten(terms, shapes), Q, plan.clip_norm, np.random.default_rng(0))
        held[up.cid] = Held(1, words)
    summed = secure_sum(1, [0, 1, 2], size_of(shapes), SecAggConfig(), in_process(held))
    assert summed.total is not None
    mean = mean_terms(summed.total, Q, shapes, plan.denominator, (plan, 1))
    for name in shapes:
        change = plain[name].double() - refs[0][name].double()
        assert torch.allclose(mean[name], change, atol=1e-6)
        assert not torch.allclose(mean[name], torch.zeros_like(mean[name]), atol=1e-3)


def _held(cids: list[int], size: int = 64) -> dict[int, Held]:
    rng = np.random.default_rng(1)
    return {c: Held(1, client_words(rng.uniform(-1, 1, size), Q, None, rng)) for c in cids}


def _plain_total(held: Mapping[int, Held], cids: list[int]) -> np.ndarray:
    total = np.zeros(next(iter(held.values())).words.size, dtype=np.uint64)
    for c in cids:
        total += held[c].words
    return (total & np.uint64(2**32 - 1)).astype(np.uint32)


@pytest.mark.parametrize("stage", ["shares", "mask"])
def test_a_client_that_drops_mid_protocol_leaves_the_others_sum(stage: str) -> None:
    held = _held([0, 1, 2, 3])
    fail = {stage: {2: "no reply within round-timeout"}}
    summed = secure_sum(1, [0, 1, 2, 3], 64, SecAggConfig(), in_process(held, fail))
    assert summed.skip is None and summed.alive == [0, 1, 3]
    assert "no reply" in summed.dropped[2]
    assert summed.total is not None
    assert np.array_equal(summed.total, _plain_total(held, [0, 1, 3]))


def test_below_the_threshold_the_round_has_no_sum_and_says_why() -> None:
    held = _held([0, 1, 2, 3])
    fail = {"mask": {1: "gone", 2: "gone"}}  # threshold 3 of 4: two alive cannot unmask
    summed = secure_sum(1, [0, 1, 2, 3], 64, SecAggConfig(), in_process(held, fail))
    assert summed.total is None and summed.skip is not None
    assert "fewer than" in summed.skip


HOSTILE: list[Any] = [
    None,
    "a string",
    {},
    {"pk1": 5, "pk2": b"x"},
    {"to": [1, 1], "ciphertexts": [b"a", b"b"]},
    {"to": [99], "ciphertexts": [b"a"]},
    {"masked": b"short"},
    {"masked": [1, 2]},
    {"of": [0, 1, 2, 3], "shares": [b"x", b"y", b"z", b"w"]},
    {"of": "zero", "shares": None},
]


@pytest.mark.parametrize("stage", ["keys", "shares", "mask", "unmask"])
@pytest.mark.parametrize("reply", HOSTILE, ids=range(len(HOSTILE)))
def test_no_reply_at_any_stage_crashes_the_secure_sum(stage: str, reply: Any) -> None:
    held = _held([0, 1, 2, 3, 4])
    summed = secure_sum(
        1, [0, 1, 2, 3, 4], 64, SecAggConfig(), in_process(held, {stage: {4: reply}})
    )
    # either client 4 is dropped and the others' sum comes back, or (its shares garbage) the
    # round has no sum and says why; never an exception, never a wrong sum
    if summed.total is not None:
        assert np.array_equal(summed.total, _plain_total(held, summed.alive))
        assert 4 not in summed.alive or stage == "unmask"
    else:
        assert summed.skip


def test_a_replayed_public_key_drops_every_client_that_sent_it() -> None:
    held = _held([0, 1, 2, 3, 4])
    stage = in_process(held)

    def replay(name: str, requests: Mapping[int, Message]) -> dict[int, Message | str]:
        out = dict(stage(name, requests))
        if name == "keys":
            out[4] = out[3]  # node 4 claims node 3's keys
        return out

    summed = secure_sum(1, [0, 1, 2, 3, 4], 64, SecAggConfig(), replay)
    assert summed.alive == [0, 1, 2] and {3, 4} <= set(summed.dropped)
    assert summed.total is not None
    assert np.array_equal(summed.total, _plain_total(held, [0, 1, 2]))


@pytest.mark.parametrize("name", REFUSED)
def test_methods_that_do_not_fit_are_refused_naming_why(name: str) -> None:
    with pytest.raises(ConfigError, match=f"does not compose with {name}: .+"):
        secure_form(build(name, setup=tiny_setup()))


def test_the_uplink_plug_in_and_fedsrd_e_without_reconstruction_are_refused() -> None:
    from fedlora.methods.uplink import with_uplink
    from fedlora.ops.ratio import RatioRule

    with pytest.raises(ConfigError, match="sparse on each client's own support"):
        secure_form(
            with_uplink(
                build("fedavg", setup=tiny_setup()), sparsify="importance", rule=RatioRule()
            )
        )
    with pytest.raises(ConfigError, match="reconstruct = false"):
        secure_form(build("fedsrd-e", {"reconstruct": False}, setup=tiny_setup()))


def test_secure_aggregation_needs_uniform_weights_one_rank_and_a_sane_threshold() -> None:
    on = ['federation.secure_aggregation="secagg+"']
    with pytest.raises(ConfigError, match="federation.weighting"):
        config.load(None, on)
    with pytest.raises(ConfigError, match="lora.ranks"):
        config.load(
            None, [*on, 'federation.weighting="uniform"', "data.clients=2", "lora.ranks=[4, 8]"]
        )
    with pytest.raises(ConfigError, match="reconstruction_threshold"):
        SecAggConfig(num_shares=5, reconstruction_threshold=2)
    with pytest.raises(ConfigError, match="secure_aggregation"):
        config.load(None, ['federation.secure_aggregation="secagg"'])


def _secure_run(root: Path, files: list[str], *extra: str) -> list[str]:
    return tiny_overrides(root, files) + [
        'federation.secure_aggregation="secagg+"',
        'federation.weighting="uniform"',
        *extra,
    ]


def _records(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_secure_run_learns_what_the_plain_run_learns(
    tmp_path: Path, client_files: list[str]
) -> None:
    plain = tiny_overrides(tmp_path / "plain", client_files) + ['federation.weighting="uniform"']
    simulation.run(config.load(None, plain))
    simulation.run(config.load(None, _secure_run(tmp_path / "secure", client_files)))

    from safetensors.torch import load_file

    a = load_file(tmp_path / "plain" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "secure" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
    assert 0 < worst < 1e-5  # rounded, not copied: the secure path really ran
    for rec in _records(tmp_path / "secure")[1:]:  # round 0 is the base model's evaluation
        info = rec["secure_aggregation"]
        assert info["alive"] == [0, 1, 2] and info["threshold"] == 2
        words = {int(c): n for c, n in rec["upload_params"].items()}
        assert all(rec["upload_bytes"][str(c)] == 4 * n for c, n in words.items())
        assert rec["upload_report"] == {}


def test_a_secure_run_on_flower_messages_equals_the_in_process_one(
    tmp_path: Path, client_files: list[str]
) -> None:
    from fedlora.runtime.flower.server import serve
    from tests.runtime.local_grid import LocalGrid

    simulation.run(
        config.load(None, _secure_run(tmp_path / "sim", client_files, "method=fedsrd-e"))
    )
    grid = LocalGrid(client_files)
    serve(grid, config.load(None, _secure_run(tmp_path / "flw", client_files, "method=fedsrd-e")))

    a = (tmp_path / "sim" / "adapter" / "adapter_model.safetensors").read_bytes()
    b = (tmp_path / "flw" / "adapter" / "adapter_model.safetensors").read_bytes()
    assert a == b
    assert {m for m, _ in grid.log} >= {"train", "query.secagg"}
    sim, flw = _records(tmp_path / "sim")[1:], _records(tmp_path / "flw")[1:]
    assert [r["upload_bytes"] for r in sim] == [r["upload_bytes"] for r in flw]
    assert all(r["secure_aggregation"]["alive"] == [0, 1, 2] for r in flw)


def test_a_node_that_dies_after_training_does_not_stop_the_round(tmp_path: Path) -> None:
    from fedlora.runtime.flower.server import ServerOptions, serve
    from tests.runtime.local_grid import LocalGrid

    def die_in_mask(msg: Any, reply: Any, ctx: Any) -> Any:
        rec = msg.content.config_records["fedlora"]
        dead = ctx.node_config["partition-id"] == 1 and msg.metadata.message_type == "query.secagg"
        return None if dead and rec.get("stage") in ("mask", "unmask") else reply

    (tmp_path / "four").mkdir()
    four = write_client_files(tmp_path / "four", 4)
    grid = LocalGrid(four)
    grid.tamper = die_in_mask
    cfg = config.load(None, _secure_run(tmp_path / "flw", four, "federation.rounds=1"))
    serve(grid, cfg, options=ServerOptions(round_timeout=1.0))  # its silence costs one second

    (_, rec) = _records(tmp_path / "flw")
    assert not rec["skipped"] and rec["secure_aggregation"]["alive"] == [0, 2, 3]
    assert "secure aggregation mask" in rec["dropped"]["1"]


def test_the_fixed_point_scale_keeps_every_sum_inside_the_modulus() -> None:
    for clients in (1, 4, 16, 1000):
        for bits in (16, 32, 64):
            q = Quantiser(1.0, bits, clients)
            assert clients * (q.scale + 1) < 2 ** (bits - 1) <= 2 * clients * (2 * q.scale + 1)
    with pytest.raises(ConfigError, match="do not fit"):
        _ = Quantiser(1e9, 16, 4).scale
    assert math.log2(Quantiser(8.0, 32, 4).scale) == 25  # the default, as docs/options.md says


def test_below_the_threshold_a_flower_round_is_skipped_and_says_why(tmp_path: Path) -> None:
    from fedlora.runtime.flower.server import ServerOptions, serve
    from tests.runtime.local_grid import LocalGrid

    def two_die_in_mask(msg: Any, reply: Any, ctx: Any) -> Any:
        rec = msg.content.config_records["fedlora"]
        dead = ctx.node_config["partition-id"] in (1, 2) and rec.get("stage") == "mask"
        return None if dead and msg.metadata.message_type == "query.secagg" else reply

    (tmp_path / "three").mkdir()
    three = write_client_files(tmp_path / "three", 3)
    grid = LocalGrid(three)
    grid.tamper = two_die_in_mask
    cfg = config.load(None, _secure_run(tmp_path / "flw", three, "federation.rounds=1"))
    serve(grid, cfg, options=ServerOptions(round_timeout=1.0))

    (_, rec) = _records(tmp_path / "flw")
    assert rec["skipped"] and "secure aggregation" in rec["skip_reason"]
    assert {"1", "2"} <= set(rec["dropped"])


def test_central_dp_on_the_secure_sum_spends_the_plain_runs_epsilon(
    tmp_path: Path, client_files: list[str]
) -> None:
    dp = ['privacy.mode="central"', "privacy.noise_multiplier=0.8", "method=ffa"]
    plain = (
        tiny_overrides(tmp_path / "plain", client_files) + dp + ['federation.weighting="uniform"']
    )
    simulation.run(config.load(None, plain))
    simulation.run(config.load(None, _secure_run(tmp_path / "secure", client_files, *dp)))

    spent = [r["privacy"] for r in _records(tmp_path / "plain")[1:]]
    assert [r["privacy"] for r in _records(tmp_path / "secure")[1:]] == spent
    assert all(p["epsilon"] is not None and p["epsilon"] > 0 for p in spent)
