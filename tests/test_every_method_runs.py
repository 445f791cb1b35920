"""Every registered method runs 2 rounds through `fedlora run` on the tiny model, twice,
bit-identically; methods that support heterogeneous ranks run with them, the others refuse
them with exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fedlora.cli import main
from fedlora.methods.registry import entry, names
from tests.conftest import tiny_overrides
from tests.runtime.test_resume import metrics

HETERO = {"fedavg", "fedprox", "ffa", "florist", "flora", "flexlora", "local"}


@pytest.mark.parametrize("method", names())
def test_method_runs_two_rounds(
    method: str, tmp_path: Path, client_files: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    ranks = ["lora.ranks=[4, 2, 2]"] if method in HETERO else []

    code = main(["run", *tiny_overrides(run, client_files), f"method={method}", *ranks])

    assert code == 0, capsys.readouterr().err
    # Determinism: the same config and seed again give the same adapter bytes and metrics.
    again = tmp_path / "again"
    assert main(["run", *tiny_overrides(again, client_files), f"method={method}", *ranks]) == 0
    assert (again / "adapter" / "adapter_model.safetensors").read_bytes() == (
        run / "adapter" / "adapter_model.safetensors"
    ).read_bytes()
    assert metrics(again) == metrics(run)
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [0, 1, 2]
    assert all(r["accepted"] == [0, 1, 2] for r in records[1:])
    # An honest run is left alone by the default bounds on weights and changes.
    assert not any(r["clipped"] or r["weight_capped"] for r in records[1:])
    tensors = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    assert tensors and all(torch.isfinite(t).all() for t in tensors.values())
    if entry(method)[0].keeps_own_parts:  # each client's own model is on its side
        own = list((run / "clients").glob("run-*/client-*/adapter/adapter_model.safetensors"))
        assert len(own) == 3
        tensors = load_file(str(own[0]))
    assert any(float(t.abs().max()) > 0 for k, t in tensors.items() if "lora_B" in k)


@pytest.mark.parametrize("method", sorted(set(names()) - HETERO))
def test_method_without_hetero_support_refuses_mixed_ranks(
    method: str, tmp_path: Path, client_files: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "run",
            *tiny_overrides(tmp_path / "r", client_files),
            f"method={method}",
            "lora.ranks=[4, 2, 2]",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "rank" in err.lower() and "Traceback" not in err


# Every option that changes what a method computes or sends: FedSRD's ablations, the pad
# rule, and the uplink sparsifier plug-in on each method that sends LoRA factors.
VARIANTS = [
    ["method=fedsrd", "method.fedsrd.sparsifier=random"],
    ["method=fedsrd", "method.fedsrd.sparsifier=magnitude"],
    ["method=fedsrd", "method.fedsrd.reconstruct=false"],
    ["method=fedsrd", "method.fedsrd.decompose=dense"],
    ["method=fedsrd-e", "method.fedsrd-e.base=0.95"],
    ["method=florist", "method.florist.pad=zeros", "lora.ranks=[4, 2, 2]"],
    ["method=fedavg", "uplink.sparsify=importance"],
    ["method=fedprox", "uplink.sparsify=importance"],
    ["method=ffa", "uplink.sparsify=magnitude", "lora.ranks=[4, 2, 2]"],
    ["method=flora", "uplink.sparsify=random"],
    ["method=flexlora", "uplink.sparsify=importance", "lora.ranks=[4, 2, 2]"],
    ["method=florist", "uplink.sparsify=importance", "lora.ranks=[4, 2, 2]"],
]


@pytest.mark.parametrize("variant", VARIANTS, ids=[" ".join(v) for v in VARIANTS])
def test_variant_runs_two_rounds(
    variant: list[str], tmp_path: Path, client_files: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    code = main(["run", *tiny_overrides(run, client_files), *variant])
    assert code == 0, capsys.readouterr().err
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(r["accepted"] == [0, 1, 2] for r in records[1:])
    assert not any(r["clipped"] or r["weight_capped"] for r in records[1:])
    sparse_upload = any(v.startswith(("method=fedsrd", "uplink.")) for v in variant)
    for r in records[1:]:
        reports = r["upload_report"]
        # methods that sparsify their upload record the ratios they chose, per client
        assert (set(reports) == {"0", "1", "2"}) == sparse_upload
        for rep in reports.values():
            ratios = [v for k, v in rep.items() if "rho_" in k]
            assert ratios, rep
            assert all(0 < x["min"] <= x["mean"] <= x["max"] <= 1 for x in ratios)
    tensors = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    assert all(torch.isfinite(t).all() for t in tensors.values())


def test_uplink_sparsifier_refuses_a_method_that_sends_deltas(
    tmp_path: Path, client_files: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    overrides = [*tiny_overrides(tmp_path / "r", client_files), "method=fedsrd"]
    code = main(["run", *overrides, "uplink.sparsify=importance"])
    err = capsys.readouterr().err
    assert code == 2 and "uplink.sparsify" in err and "Traceback" not in err
