"""``fedlora comm``: measured bytes per round per client for every registered method."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fedlora import comm, shapes
from fedlora.methods import registry

HEADER_PER_TENSOR = 256
"""Generous container overhead allowance per payload entry (JSON header, alignment)."""

DENSE_AB_METHODS = ("fedavg", "fedprox", "florist", "flexlora")


@pytest.fixture(scope="module")
def small_rows() -> dict[str, dict[str, Any]]:
    rows = comm.comm_table("smollm2-135m", rank=2, clients=2, blocks=2)
    return {r["method"]: r for r in rows}


def test_every_registered_method_is_measured(small_rows: dict[str, dict[str, Any]]) -> None:
    variants = [v.label for v in comm.VARIANTS]
    assert list(small_rows) == registry.names() + variants
    failed = {m: r["error"] for m, r in small_rows.items() if "error" in r}
    assert not failed
    for row in small_rows.values():
        assert row["upload"]["bytes"] > 0 and row["download"]["bytes"] > 0


def test_dense_methods_cost_four_bytes_per_parameter_plus_a_small_header(
    small_rows: dict[str, dict[str, Any]],
) -> None:
    # Prepare: parameter count from the shapes, independently of comm.
    layers = shapes.layer_specs("smollm2-135m", blocks=2)
    params = shapes.lora_params(layers, 2)
    allowance = HEADER_PER_TENSOR * 2 * len(layers)

    for name in DENSE_AB_METHODS:
        if name not in small_rows:
            continue
        for direction in ("upload", "download"):
            # Execute
            got = small_rows[name][direction]

            # Assert
            assert got["values"] == params, (name, direction)
            assert 4 * params < got["bytes"] <= 4 * params + allowance, (name, direction)
            assert got["encodings"] == {"A": {"dense": len(layers)}, "B": {"dense": len(layers)}}


def test_ffa_sends_only_b(small_rows: dict[str, dict[str, Any]]) -> None:
    if "ffa" not in small_rows:
        pytest.skip("ffa not registered")
    layers = shapes.layer_specs("smollm2-135m", blocks=2)
    b_params = sum(2 * s.out_features for s in layers)
    assert small_rows["ffa"]["upload"]["values"] == b_params


def test_rolora_sends_one_factor_a_round(small_rows: dict[str, dict[str, Any]]) -> None:
    # Rounds 1 and 2 train B then A: the mean over them is half of FedAvg's values each way
    full = small_rows["fedavg"]
    for direction in ("upload", "download"):
        assert 2 * small_rows["rolora"][direction]["values"] == full[direction]["values"]


def test_sparse_payloads_stay_within_1_10_of_the_information_bound(
    small_rows: dict[str, dict[str, Any]],
) -> None:
    ratios = [
        row[d]["sparse_bound_ratio"]
        for row in small_rows.values()
        for d in ("upload", "download")
        if row[d]["sparse_bound_ratio"] is not None
    ]
    # The bound is that of uniformly placed positions; importance masks of the (structured)
    # synthetic updates cluster, so an adaptive position code may land a little below it.
    assert ratios and all(0.9 <= r <= 1.10 for r in ratios), ratios


def test_sparse_methods_send_fewer_values_than_dense_ones(
    small_rows: dict[str, dict[str, Any]],
) -> None:
    for name in ("fedsrd", "fedsrd-e", "fed_dare"):
        assert small_rows[name]["upload"]["values"] < small_rows["fedavg"]["upload"]["values"]


def test_default_measures_one_block_and_scales_to_the_whole_model() -> None:
    # Execute
    (row,) = comm.comm_table(
        "smollm2-135m", rank=2, clients=1, targets="q_proj", methods=["fedavg"]
    )

    # Assert
    params = shapes.lora_params(shapes.layer_specs("smollm2-135m", "q_proj"), 2)
    assert (row["measured_blocks"], row["blocks"]) == (1, 30)
    assert row["lora_params"] == row["upload"]["values"] == params
    assert 4 * params < row["upload"]["bytes"] <= 4 * params + HEADER_PER_TENSOR * 2 * 30


def test_llama_3b_rank_64_reproduces_the_papers_dense_figures() -> None:
    # Execute
    (row,) = comm.comm_table("llama-3.2-3b", rank=64, clients=1, methods=["fedavg"], rounds=1)

    # Assert: 97,255,424 parameters, 371 MiB each way, 742 per round per client.
    assert row["lora_params"] == 97_255_424
    assert round(row["upload"]["mb"]) == round(row["download"]["mb"]) == 371
    # 2 directions x 4 bytes per parameter, in MiB, computed here from the count
    assert row["total_mb"] == pytest.approx(2 * 4 * 97_255_424 / 2**20, rel=1e-3)


def test_main_prints_json_and_a_labelled_table(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "--shape",
        "smollm2-135m",
        "--rank",
        "2",
        "--clients",
        "1",
        "--blocks",
        "1",
        "--methods",
        "fedavg",
    ]

    assert comm.main(argv + ["--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["unit_mb"].startswith("MiB") and data["rows"][0]["method"] == "fedavg"

    assert comm.main(argv) == 0
    text = capsys.readouterr().out
    assert "MiB" in text and "fedavg" in text


def test_unknown_method_is_reported_not_fatal(capsys: pytest.CaptureFixture[str]) -> None:
    status = comm.main(
        [
            "--shape",
            "smollm2-135m",
            "--rank",
            "2",
            "--clients",
            "1",
            "--blocks",
            "1",
            "--methods",
            "fedavg,nope",
        ]
    )
    out = capsys.readouterr().out
    assert status == 1
    assert "nope" in out and "unknown method" in out


def test_plug_in_rows_sparsify_the_upload_of_their_method(
    small_rows: dict[str, dict[str, Any]],
) -> None:
    for method in ("fedavg", "fedprox", "ffa", "flora", "flexlora", "florist"):
        plain, plugged = small_rows[method], small_rows[f"{method}+importance"]
        assert plugged["uplink"] == "importance"
        # Same tensors, sparse: at most 1 - 0.85 of the values, positions coded explicitly
        assert plugged["upload"]["values"] <= 0.15 * plain["upload"]["values"]
        assert all("dense" not in enc for enc in plugged["upload"]["encodings"].values())
        assert plugged["download"]["bytes"] == plain["download"]["bytes"] or method in (
            "flora",
            "flexlora",
            "florist",
        )


def test_fedsrd_ablation_rows_carry_their_options(small_rows: dict[str, dict[str, Any]]) -> None:
    assert small_rows["fedsrd:random"]["options"] == {"sparsifier": "random"}
    # a random mask travels as its seed, an importance mask as coded positions
    assert all(
        set(e) == {"seed"} for e in small_rows["fedsrd:random"]["upload"]["encodings"].values()
    )
    assert all("seed" not in e for e in small_rows["fedsrd"]["upload"]["encodings"].values())
    # dense decomposition broadcasts both factors in full
    dense_down = small_rows["fedsrd:dense-decompose"]["download"]
    assert dense_down["values"] == small_rows["fedavg"]["download"]["values"]


def test_no_method_sends_values_in_its_first_download(
    small_rows: dict[str, dict[str, Any]],
) -> None:
    # A fresh PEFT init travels as seeds and its init rule, B = 0 as empty entries (FLoRA and
    # merge-mode methods start from an empty stack): the first broadcast carries no values.
    for name in registry.names():
        first = small_rows[name]["first_download"]
        assert first["values"] == 0, name
        entries = sum(sum(c.values()) for c in first["encodings"].values())
        # JSON header only: a seeded entry (rule + 19-digit seed) costs about 260 bytes
        assert first["bytes"] <= 300 * entries + 128, name


def test_secure_rows_upload_their_masked_vector_at_four_bytes_a_value(
    small_rows: dict[str, dict[str, Any]],
) -> None:
    for method in ("fedavg", "ffa"):
        plain, secure = small_rows[method]["upload"], small_rows[f"{method}:secure"]["upload"]
        assert secure["values"] == plain["values"]  # every value of the change travels
        assert secure["bytes"] - secure["overhead_bytes"] == 4 * secure["values"]
        assert 0 < secure["overhead_bytes"] < 64 * 1024  # keys, shares, unmasking
    # FedSRD-e's projected terms: a dense m×r (B-round) or r×n (A-round) product per layer,
    # on average half of what FedAvg sends of both factors
    projected = small_rows["fedsrd-e:secure"]["upload"]["values"]
    assert 2 * projected == small_rows["fedavg"]["upload"]["values"]
