"""``run_flower(runtime="flower-sim")`` runs Flower's simulation engine (Ray, one virtual
SuperNode per client, partition-id from the engine) and gives the in-process adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fedlora import config
from fedlora.errors import ConfigError
from fedlora.runtime import simulation
from fedlora.runtime.flower.launch import run_flower
from tests.conftest import tiny_overrides


@pytest.mark.slow
def test_flower_simulation_equals_in_process(tmp_path: Path, client_files: list[str]) -> None:
    args = ["method=fedsrd", "federation.rounds=2"]
    sim = config.load(None, tiny_overrides(tmp_path / "sim", client_files) + args)
    flw = config.load(None, tiny_overrides(tmp_path / "flower", client_files) + args)
    seen: list[str] = []

    out = run_flower(
        flw,
        runtime="flower-sim",
        superlink=None,
        resume=False,
        report=lambda kind, info: seen.append(kind),
    )
    simulation.run(sim)

    a = load_file(str(tmp_path / "sim" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ra = [json.loads(x) for x in (tmp_path / "sim" / "metrics.jsonl").read_text().splitlines()]
    rb = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("upload_bytes") for r in ra] == [r.get("upload_bytes") for r in rb]
    assert seen.count("round_done") == 3 and seen[-1] == "done"


@pytest.mark.parametrize(
    ("runtime", "superlink"), [("ray", None), ("flower", None), ("flower-sim", "127.0.0.1:1")]
)
def test_bad_runtime_arguments_are_config_errors(
    tmp_path: Path, client_files: list[str], runtime: str, superlink: str | None
) -> None:
    cfg = config.load(None, tiny_overrides(tmp_path, client_files))

    with pytest.raises(ConfigError):
        run_flower(cfg, runtime=runtime, superlink=superlink, resume=False)


@pytest.mark.slow
def test_secure_aggregation_on_the_simulation_engine_equals_in_process(
    tmp_path: Path, client_files: list[str]
) -> None:
    args = [
        "method=fedsrd-e",
        "federation.rounds=2",
        'federation.secure_aggregation="secagg+"',
        'federation.weighting="uniform"',
    ]
    sim = config.load(None, tiny_overrides(tmp_path / "sim", client_files) + args)
    flw = config.load(None, tiny_overrides(tmp_path / "flower", client_files) + args)

    out = run_flower(flw, runtime="flower-sim", superlink=None, resume=False)
    simulation.run(sim)

    a = (tmp_path / "sim" / "adapter" / "adapter_model.safetensors").read_bytes()
    assert (out / "adapter" / "adapter_model.safetensors").read_bytes() == a
    rb = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["secure_aggregation"]["alive"] for r in rb[1:]] == [[0, 1, 2], [0, 1, 2]]
