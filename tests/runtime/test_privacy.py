"""Client-level differential privacy: the plan's ε (tests/runtime/test_accounting.py checks
the accountant itself), one client's influence bounded by the clip for every method DP
composes with, noise of the stated size from the OS's source, the refusals, a secret
sample, and DP runs that resume counting every release."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fedlora import config
from fedlora.errors import ConfigError
from fedlora.methods.base import Upload
from fedlora.methods.registry import build, names
from fedlora.ops.sparse import Sparse
from fedlora.runtime import accounting, privacy, simulation
from fedlora.runtime.driver import sample_clients
from tests.conftest import tiny_overrides
from tests.methods.helpers import run_round, tiny_setup

COMPOSABLE = {
    "fedavg": {},
    "fedprox": {},
    "ffa": {},
    "fed_dare": {},
    "rolora": {},
    "fedsvd": {},
    "fed_sb": {},
    "fedsa": {},
    "fedsrd": {"reconstruct": False},
    "fedsrd-e": {"reconstruct": False},
}


def test_the_demo_budget_is_replace_one_at_twice_the_clip() -> None:
    # the demo: 4 clients, 3 rounds, every client every round; δ = 1/4 rounded down = 0.1
    assert privacy.default_delta(4) == 0.1 and privacy.default_delta(1000) == 1e-3
    plan = privacy.plan(
        _dp_config(**{"privacy.noise_multiplier": 1.0, "data.clients": 4}),
        build("fedavg", setup=tiny_setup()),
    )
    assert plan is not None and (plan.sampling, plan.sample_rate, plan.denominator) == (
        "fixed",
        1.0,
        4.0,
    )
    spent = plan.spent([plan.release(t) for t in (1, 2, 3)])
    # one Gaussian of shift 2C·√3 / σC: Balle and Wang's exact ε is 9.60 at δ = 0.1
    assert spent["epsilon"] == pytest.approx(9.60, abs=0.01)
    assert spent["adjacency"] == "replace-one" and spent["releases"] == 3
    assert spent["epsilon_rdp"] >= spent["epsilon"]


def test_fixed_size_sampling_is_accounted_at_its_rate() -> None:
    cfg = _dp_config(
        **{"privacy.noise_multiplier": 1.0, "data.clients": 4, "federation.clients_per_round": 3}
    )
    plan = privacy.plan(cfg, build("fedavg", setup=tiny_setup()))
    assert plan is not None and (plan.sample_rate, plan.denominator) == (0.75, 3.0)
    # the worst adjacent pair of this federation needs ε = 7.34 after 3 rounds at δ = 0.1
    # (tests/runtime/test_accounting.py integrates it); the old q = 1 figure was 3.92
    assert plan.spent([plan.release(t) for t in (1, 2, 3)])["epsilon"] == pytest.approx(
        7.34, abs=0.01
    )


def _dp_config(**extra: Any) -> config.RunConfig:
    base = [
        'privacy.mode="central"',
        'federation.weighting="uniform"',
        *(f"{k}={v}" for k, v in extra.items()),
    ]
    return config.load(None, base)


def inflated(payload: dict[str, Any]) -> dict[str, Any]:
    """Every value of an upload times 10^6 (sparse entries keep their positions)."""
    return {
        k: dataclasses.replace(v, values=v.values * 1e6) if isinstance(v, Sparse) else v * 1e6
        for k, v in payload.items()
    }


def _plan(sigma: float, clip: float, denominator: float) -> privacy.Plan:
    return privacy.Plan(clip, sigma, "fixed", 1.0, denominator, 0.1, private=False, noise_seed=7)


@pytest.mark.parametrize("name", sorted(COMPOSABLE))
def test_one_clients_influence_on_the_noisy_mean_is_at_most_the_clip(name: str) -> None:
    # Prepare: a round of real uploads, then the same round with client 1's upload inflated
    setup = tiny_setup()
    method = build(name, COMPOSABLE[name], setup=setup)
    result = run_round(method, method.init_server(), setup)
    starts = result.starts
    refs = {cid: method.upload_reference(s, setup.client(cid)) for cid, s in starts.items()}
    schema = {name: e.shape for name, e in method.upload_schema(setup.client(0)).items()}
    clip = 0.05
    plan = _plan(0.0, clip, denominator=len(result.uploads))
    hostile = [
        Upload(
            u.cid,
            u.n_samples,
            inflated(u.payload) if u.cid == 1 else u.payload,
        )
        for u in result.uploads
    ]
    without = [u for u in result.uploads if u.cid != 1]

    # Execute
    means = {
        label: privacy.noisy_mean(ups, refs, schema, refs[0], plan, round_=1)
        for label, ups in (("hostile", hostile), ("without", without))
    }

    # Assert: adding or removing client 1 moves the sum of changes by at most the clip,
    # however large its upload; the method aggregates the one noisy upload
    moved = math.sqrt(
        sum(
            float((means["hostile"][k] - means["without"][k]).double().pow(2).sum()) for k in schema
        )
    )
    assert moved * plan.denominator <= clip * (1 + 1e-5)
    state = method.aggregate(result.state, [Upload(0, 1, means["hostile"])])
    assert all(torch.isfinite(t).all() for t in state.tensors.values())


def test_the_noise_has_standard_deviation_sigma_times_clip_over_the_denominator() -> None:
    schema = {"l.dA": (64, 256), "l.dB": (256, 64)}
    plan = _plan(sigma=1.5, clip=0.2, denominator=4.0)

    mean = privacy.noisy_mean([], {0: {}}, schema, {}, plan, round_=3)

    values = torch.cat([mean[k].reshape(-1).double() for k in schema])
    expected = 1.5 * 0.2 / 4.0
    assert float(values.std()) == pytest.approx(expected, rel=0.02)
    assert abs(float(values.mean())) < 4 * expected / math.sqrt(values.numel())


def test_noise_comes_from_the_system_unless_a_run_declared_not_private_seeds_it() -> None:
    schema = {"l.dA": (8, 8)}
    seeded = privacy.Plan(1.0, 1.0, "fixed", 1.0, 1.0, 0.1, private=False, noise_seed=3)
    fresh = privacy.Plan(1.0, 1.0, "fixed", 1.0, 1.0, 0.1)
    a, b = (privacy.noisy_mean([], {0: {}}, schema, {}, seeded, 1) for _ in range(2))
    c, d = (privacy.noisy_mean([], {0: {}}, schema, {}, fresh, 1) for _ in range(2))
    assert torch.equal(a["l.dA"], b["l.dA"]) and not torch.equal(c["l.dA"], d["l.dA"])
    assert privacy.noise_key(fresh, 1) != privacy.noise_key(fresh, 1)
    assert privacy.noise_key(seeded, 1) != privacy.noise_key(seeded, 2)


def test_the_chacha_normals_are_standard_normal() -> None:
    draws = privacy.gaussian(bytes(range(32)), 400_000)
    assert float(draws.mean()) == pytest.approx(0.0, abs=0.01)
    assert float(draws.std()) == pytest.approx(1.0, abs=0.01)
    # the tails of a normal: P(|z| > 3) = 0.0027
    assert float((abs(draws) > 3).mean()) == pytest.approx(0.0027, abs=0.0005)
    key = bytes(range(32))
    assert np.array_equal(privacy.gaussian(key, 1000), privacy.gaussian(key, 1000))
    assert not np.array_equal(privacy.gaussian(key, 1000), privacy.gaussian(bytes(32), 1000))


def test_a_noise_seed_is_refused_unless_the_run_declares_itself_not_private() -> None:
    with pytest.raises(ConfigError, match="privacy.noise_seed"):
        _dp_config(**{"privacy.noise_multiplier": 1.0, "privacy.noise_seed": 3})
    cfg = _dp_config(
        **{
            "privacy.noise_multiplier": 1.0,
            "privacy.noise_seed": 3,
            "privacy.not_private": "true",
        }
    )
    plan = privacy.plan(cfg, build("fedavg", setup=tiny_setup()))
    assert plan is not None and not plan.private
    spent = plan.spent([plan.release(1)])
    assert spent["epsilon"] is None and "not private" in spent["void"]


def test_nothing_about_the_noise_reaches_a_node() -> None:
    from fedlora.runtime.flower.protocol import config_for_nodes

    cfg = _dp_config(
        **{
            "privacy.noise_multiplier": 1.0,
            "privacy.noise_seed": 123456789,
            "privacy.not_private": "true",
        }
    )
    sent = json.dumps(config_for_nodes(config.to_dict(cfg)))
    assert "123456789" not in sent and json.loads(sent)["privacy"]["noise_seed"] is None


def test_a_private_runs_sample_is_not_a_function_of_the_seed() -> None:
    cfg = _dp_config(
        **{
            "privacy.noise_multiplier": 1.0,
            "data.clients": 10,
            "federation.clients_per_round": 5,
        }
    )
    public = config.load(None, ["data.clients=10", "federation.clients_per_round=5"])
    draws = {tuple(sample_clients(cfg, 1)) for _ in range(20)}
    assert len(draws) > 1  # 252 possible samples: twenty equal draws would be chance 1e-48
    assert all(len(d) == 5 for d in draws)
    assert len({tuple(sample_clients(public, 1)) for _ in range(20)}) == 1


def test_a_client_clips_its_own_change_in_its_upload_representation() -> None:
    start = torch.ones(4, 4)
    trained = start + 3.0
    clipped = privacy.clip_upload({"l.A": trained}, {"l.A": start}, bound=2.0)
    assert float((clipped["l.A"] - start).norm()) == pytest.approx(2.0)
    small = {"l.A": start + 0.01}
    assert privacy.clip_upload(small, {"l.A": start}, bound=2.0) is small


@pytest.mark.parametrize("name", sorted(set(names()) - set(COMPOSABLE)))
def test_methods_dp_does_not_compose_with_are_refused_naming_why(name: str) -> None:
    cfg = _dp_config(**{"privacy.noise_multiplier": 1.0, "method": name})
    with pytest.raises(ConfigError, match=f"does not compose with {name}: "):
        privacy.plan(cfg, build(name, setup=tiny_setup()))
    if name in ("fedsrd", "fedsrd-e"):
        with pytest.raises(ConfigError, match="reconstruct = false"):
            privacy.plan(cfg, build(name, setup=tiny_setup()))


def test_a_budget_the_planned_rounds_would_exceed_stops_at_start_saying_how_many_fit() -> None:
    cfg = _dp_config(
        **{
            "privacy.noise_multiplier": 2.0,
            "privacy.target_epsilon": 3.0,
            "federation.rounds": 10,
            "data.clients": 4,
        }
    )
    with pytest.raises(ConfigError) as info:
        privacy.plan(cfg, build("fedavg", setup=tiny_setup()))
    allowed = accounting.rounds_allowed("fixed", 1.0, 2.0, 0.1, 3.0)
    assert f"the budget allows {allowed} rounds" in str(info.value) and 0 < allowed < 10


def test_a_target_epsilon_alone_calibrates_the_noise_to_it() -> None:
    cfg = _dp_config(**{"privacy.target_epsilon": 2.0, "federation.rounds": 8})
    plan = privacy.plan(cfg, build("fedavg", setup=tiny_setup()))
    assert plan is not None
    spent = plan.spent([plan.release(t) for t in range(1, 9)])
    assert spent["epsilon"] <= 2.0


def test_dp_needs_uniform_weights_and_one_rank() -> None:
    with pytest.raises(ConfigError, match="federation.weighting"):
        config.load(None, ['privacy.mode="central"', "privacy.noise_multiplier=1.0"])
    with pytest.raises(ConfigError, match="lora.ranks"):
        _dp_config(**{"privacy.noise_multiplier": 1.0, "lora.ranks": "[4, 2, 2, 2]"})


def test_poisson_sampling_draws_each_client_at_its_rate() -> None:
    cfg = config.load(
        None, ['federation.sampling="poisson"', "federation.sample_rate=0.3", "data.clients=10"]
    )
    drawn = [len(sample_clients(cfg, t)) for t in range(1, 401)]
    assert sum(drawn) / (400 * 10) == pytest.approx(0.3, abs=0.03)
    assert 0 in drawn or min(drawn) <= 1  # some rounds sample (almost) nobody
    assert sample_clients(cfg, 7) == sample_clients(cfg, 7)


def _records(run: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_run_declared_not_private_resumes_bit_identically_and_records_no_epsilon(
    tmp_path: Path, client_files: list[str]
) -> None:
    # Prepare: the same seeded DP run straight through, and stopped after round 1 then resumed
    dp = [
        'privacy.mode="central"',
        "privacy.noise_multiplier=1.0",
        "privacy.clip_norm=0.5",
        "privacy.noise_seed=11",
        "privacy.not_private=true",
        'federation.weighting="uniform"',
        "method=fedsrd",
        "method.fedsrd.reconstruct=false",
    ]
    whole = config.load(None, tiny_overrides(tmp_path / "whole", client_files) + dp)
    simulation.run(whole)
    part = config.load(
        None, tiny_overrides(tmp_path / "part", client_files, **{"federation.rounds": 1}) + dp
    )
    simulation.run(part)

    # Execute
    simulation.run(
        config.load(None, tiny_overrides(tmp_path / "part", client_files) + dp), resume=True
    )

    # Assert
    a = (tmp_path / "whole" / "adapter" / "adapter_model.safetensors").read_bytes()
    b = (tmp_path / "part" / "adapter" / "adapter_model.safetensors").read_bytes()
    assert a == b
    spent = [r["privacy"] for r in _records(tmp_path / "whole")[1:]]
    assert [p["epsilon"] for p in spent] == [None, None]
    assert all("not private" in p["void"] for p in spent)
    # FedSRD reports its update's norms without DP; under DP nothing of the unclipped
    # update is kept
    assert all(r["upload_report"] == {} for r in _records(tmp_path / "whole")[1:])


class Killed(Exception):
    """Stands in for a crash."""


def test_a_release_that_reached_clients_before_a_crash_is_counted_on_resume(
    tmp_path: Path, client_files: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a private run (OS noise) killed in round 2 after its evaluation sent the new
    # global model to the clients, before the round's checkpoint
    from fedlora.runtime import checkpoint

    dp = [
        'privacy.mode="central"',
        "privacy.noise_multiplier=2.0",
        'federation.weighting="uniform"',
        "federation.rounds=3",
        "eval.every=1",
        "method=fedavg",
    ]
    cfg = config.load(None, tiny_overrides(tmp_path / "run", client_files) + dp)
    real = checkpoint.write
    evaluated: list[int] = []

    def crash_in_round_two(root: Path, ckpt: checkpoint.Checkpoint) -> None:
        if ckpt.round == 2:
            evaluated.append(ckpt.round)
            raise Killed
        real(root, ckpt)

    with monkeypatch.context() as m:
        m.setattr(checkpoint, "write", crash_in_round_two)
        with pytest.raises(Killed):
            simulation.run(cfg)
    assert evaluated == [2] and "eval" in _records(tmp_path / "run")[-1]

    # Execute
    simulation.run(cfg, resume=True)

    # Assert: rounds 1, 2 (drawn twice: once before the crash, once after) and 3 are counted
    ledger = (tmp_path / "run" / "privacy-ledger.jsonl").read_text().splitlines()
    assert [json.loads(x)["round"] for x in ledger] == [1, 2, 2, 3]
    final = _records(tmp_path / "run")[-1]["privacy"]
    plan = privacy.plan(cfg, build("fedavg", setup=tiny_setup()))
    assert plan is not None
    four = accounting.epsilon([plan.release(t) for t in (1, 2, 2, 3)], plan.delta)
    three = accounting.epsilon([plan.release(t) for t in (1, 2, 3)], plan.delta)
    assert final["releases"] == 4 and final["epsilon"] == pytest.approx(four)
    assert final["epsilon"] > three


def test_a_dp_run_on_flower_equals_the_in_process_one(
    tmp_path: Path, client_files: list[str]
) -> None:
    from fedlora.runtime.flower.server import serve
    from tests.runtime.local_grid import LocalGrid

    dp = [
        'privacy.mode="central"',
        "privacy.noise_multiplier=0.5",
        "privacy.noise_seed=5",
        "privacy.not_private=true",
        'federation.weighting="uniform"',
        "method=ffa",
    ]
    simulation.run(config.load(None, tiny_overrides(tmp_path / "sim", client_files) + dp))
    serve(
        LocalGrid(client_files),
        config.load(None, tiny_overrides(tmp_path / "flw", client_files) + dp),
    )

    a = (tmp_path / "sim" / "adapter" / "adapter_model.safetensors").read_bytes()
    b = (tmp_path / "flw" / "adapter" / "adapter_model.safetensors").read_bytes()
    assert a == b
    assert [r.get("privacy") for r in _records(tmp_path / "sim")] == [
        r.get("privacy") for r in _records(tmp_path / "flw")
    ]
