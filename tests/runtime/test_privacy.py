"""Client-level differential privacy: ε from Opacus's RDP accountant against independent
computations, one client's influence bounded by the clip for every method DP composes with,
noise of the stated size, the refusals, and a DP run that resumes bit for bit."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from opacus.accountants import PRVAccountant
from scipy.optimize import brentq
from scipy.stats import norm

from fedlora import config
from fedlora.errors import ConfigError
from fedlora.methods.base import Upload
from fedlora.methods.registry import build, names
from fedlora.ops.sparse import Sparse
from fedlora.runtime import privacy, simulation
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


def exact_gaussian_epsilon(sigma: float, rounds: int, delta: float) -> float:
    """The exact ε of ``rounds`` full-participation Gaussian mechanisms of noise ``sigma``:
    their composition is one Gaussian mechanism of sensitivity ``√rounds / sigma`` (Dong,
    Roth and Su's μ-GDP), whose (ε, δ) curve is Balle and Wang's analytic formula."""
    mu = math.sqrt(rounds) / sigma

    def gap(eps: float) -> float:
        return norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * norm.cdf(-eps / mu - mu / 2) - delta

    return float(brentq(gap, 0.0, 500.0))


@pytest.mark.parametrize(
    ("sigma", "rounds", "delta"), [(1.0, 3, 0.1), (1.0, 10, 1e-5), (0.5, 8, 1e-3), (2.0, 50, 1e-5)]
)
def test_full_participation_epsilon_bounds_the_exact_one_within_35_percent(
    sigma: float, rounds: int, delta: float
) -> None:
    got = privacy.epsilon(sigma, 1.0, rounds, delta)
    exact = exact_gaussian_epsilon(sigma, rounds, delta)
    # RDP is an upper bound: never below the exact value, and at most 35% above it here
    assert exact <= got <= 1.35 * exact, (got, exact)


@pytest.mark.parametrize(
    ("sigma", "q", "rounds", "delta"),
    [(1.0, 0.5, 10, 1e-5), (1.0, 0.25, 50, 1e-5), (0.8, 0.5, 20, 1e-3)],
)
def test_poisson_epsilon_agrees_with_opacus_prv_accountant_within_25_percent(
    sigma: float, q: float, rounds: int, delta: float
) -> None:
    prv = PRVAccountant()
    prv.history = [(sigma, q, rounds)]
    independent = prv.get_epsilon(delta=delta)
    got = privacy.epsilon(sigma, q, rounds, delta)
    assert 0.99 * independent <= got <= 1.25 * independent, (got, independent)


def test_epsilon_at_sigma_one_after_the_demo_rounds() -> None:
    # the demo: 4 clients, 3 rounds, every client every round; δ = 1/4 rounded down = 0.1
    assert privacy.default_delta(4) == 0.1 and privacy.default_delta(1000) == 1e-3
    eps = privacy.epsilon(1.0, 1.0, 3, 0.1)
    assert eps == pytest.approx(3.916, abs=0.01)


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
    return privacy.Plan(clip, sigma, 1.0, denominator, 0.1, noise_seed=7)


@pytest.mark.parametrize("name", sorted(COMPOSABLE))
def test_one_clients_influence_on_the_noisy_mean_is_at_most_the_clip(name: str) -> None:
    # Prepare: a round of real uploads, then the same round with client 1's upload inflated
    method = build(name, COMPOSABLE[name])
    setup = tiny_setup()
    result = run_round(method, method.init_server(setup), setup)
    starts = result.starts
    refs = {cid: method.upload_reference(s, setup, setup.client(cid)) for cid, s in starts.items()}
    schema = method.upload_schema(setup, setup.client(0))
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
    state = method.aggregate(result.state, [Upload(0, 1, means["hostile"])], setup)
    assert all(torch.isfinite(t).all() for t in state.tensors.values())


def test_the_noise_has_standard_deviation_sigma_times_clip_over_the_denominator() -> None:
    schema = {"l.dA": (64, 256), "l.dB": (256, 64)}
    plan = _plan(sigma=1.5, clip=0.2, denominator=4.0)

    mean = privacy.noisy_mean([], {0: {}}, schema, {}, plan, round_=3)

    values = torch.cat([mean[k].reshape(-1).double() for k in schema])
    expected = 1.5 * 0.2 / 4.0
    assert float(values.std()) == pytest.approx(expected, rel=0.02)
    assert abs(float(values.mean())) < 4 * expected / math.sqrt(values.numel())


def test_noise_is_seeded_from_the_system_unless_a_test_seed_is_given() -> None:
    schema = {"l.dA": (8, 8)}
    seeded = privacy.Plan(1.0, 1.0, 1.0, 1.0, 0.1, noise_seed=3)
    fresh = privacy.Plan(1.0, 1.0, 1.0, 1.0, 0.1, noise_seed=None)
    a, b = (privacy.noisy_mean([], {0: {}}, schema, {}, seeded, 1) for _ in range(2))
    c, d = (privacy.noisy_mean([], {0: {}}, schema, {}, fresh, 1) for _ in range(2))
    assert torch.equal(a["l.dA"], b["l.dA"]) and not torch.equal(c["l.dA"], d["l.dA"])


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
        privacy.plan(cfg, build(name))
    if name in ("fedsrd", "fedsrd-e"):
        with pytest.raises(ConfigError, match="reconstruct = false"):
            privacy.plan(cfg, build(name))


def test_a_budget_the_planned_rounds_would_exceed_stops_at_start_saying_how_many_fit() -> None:
    cfg = _dp_config(
        **{
            "privacy.noise_multiplier": 1.0,
            "privacy.target_epsilon": 3.0,
            "federation.rounds": 10,
            "data.clients": 4,
        }
    )
    with pytest.raises(ConfigError) as info:
        privacy.plan(cfg, build("fedavg"))
    allowed = privacy.rounds_allowed(1.0, 1.0, 0.1, 3.0)
    assert f"the budget allows {allowed} rounds" in str(info.value) and 0 < allowed < 10
    assert (
        privacy.epsilon(1.0, 1.0, allowed, 0.1) <= 3.0 < privacy.epsilon(1.0, 1.0, allowed + 1, 0.1)
    )


def test_a_target_epsilon_alone_calibrates_the_noise_to_it() -> None:
    cfg = _dp_config(**{"privacy.target_epsilon": 2.0, "federation.rounds": 8})
    plan = privacy.plan(cfg, build("fedavg"))
    assert plan is not None
    assert privacy.epsilon(plan.noise_multiplier, 1.0, 8, plan.delta) <= 2.0


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


def test_a_dp_run_records_epsilon_and_resumes_bit_identically_with_a_noise_seed(
    tmp_path: Path, client_files: list[str]
) -> None:
    # Prepare: the same DP run straight through, and stopped after round 1 then resumed
    dp = [
        'privacy.mode="central"',
        "privacy.noise_multiplier=1.0",
        "privacy.clip_norm=0.5",
        "privacy.noise_seed=11",
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
    eps = [r["privacy"]["epsilon"] for r in _records(tmp_path / "whole")[1:]]
    assert eps == [pytest.approx(privacy.epsilon(1.0, 1.0, t, 0.1)) for t in (1, 2)]
    assert eps[0] < eps[1]


def test_a_dp_run_on_flower_equals_the_in_process_one(
    tmp_path: Path, client_files: list[str]
) -> None:
    from fedlora.runtime.flower.server import serve
    from tests.runtime.local_grid import LocalGrid

    dp = [
        'privacy.mode="central"',
        "privacy.noise_multiplier=0.5",
        "privacy.noise_seed=5",
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
