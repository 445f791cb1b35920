"""``python -m benchmarks.server`` at a tiny size, so the benchmark cannot rot.

No wall-time assertions: timings on a shared 2-core machine mean nothing in a test. What is
asserted is what must hold at any size: every registered method is measured and listed, each
agrees with its dense reference, the memory probe counts what it should, and the dense
reference (which forms m×n matrices) is caught by the same probe that clears the methods.
"""

from __future__ import annotations

import io
import json

import pytest
import torch

from benchmarks.common.memory import measure
from benchmarks.server import dense_reference as ref
from benchmarks.server.run import BenchConfig, format_table, main, report_json, run_bench
from fedlora.methods import registry

TINY = BenchConfig(
    shape="smollm2-135m",
    targets=("q_proj", "v_proj"),
    ranks=(4, 4),
    blocks=1,
    model_blocks=2,
    repeats=1,
    ref_repeats=1,
    threads=1,  # no timing is asserted; one thread avoids OpenMP stalls on a busy machine
)


@pytest.fixture(scope="module")
def tiny_report():  # type: ignore[no-untyped-def]
    return run_bench(TINY, progress=lambda _: None)


def test_every_registered_method_is_measured_and_matches_its_dense_reference(tiny_report) -> None:  # type: ignore[no-untyped-def]
    # Prepare
    expected = set(registry.names())
    # Execute
    data = json.loads(json.dumps(report_json(tiny_report)))
    # Assert
    methods = {m["method"]: m for m in data["methods"]}
    assert set(methods) == expected
    for name, m in methods.items():
        if registry.entry(name)[0].keeps_own_parts:  # FedSA: no global update to compare
            assert m["rel_error"] is None
            continue
        assert m["rel_error"] is not None, f"{name} has no dense reference"
        assert m["rel_error"] < 1e-4, (name, m["rel_error"])
        assert m["project_subset"]["runs"] == 1 and m["project_full"]["median"] > 0
        assert m["stacked_bytes"] > 0
        # one client's upload of the whole model went through the wire and back
        assert m["upload_bytes"] > 0 and m["wire"]["median"] > 0
        # the roofline: counted flops, the rate they ran at, this machine's rate
        # (FedAvg-like steps are elementwise only: zero counted flops is their true count)
        assert m["flops"] >= 0 and m["gflop_per_s"] >= 0 and m["whole_model_s"] > 0
        assert all(v > 0 for v in m["machine_gflop_per_s"].values())
        if name in ("fedsrd", "florist", "flexlora"):
            assert m["flops"] > 0 and set(m["machine_gflop_per_s"]) >= {"matmul"}


def test_table_has_a_row_per_method_and_every_target_line(tiny_report) -> None:  # type: ignore[no-untyped-def]
    # Execute
    table = format_table(tiny_report)
    # Assert
    rows = {line.split()[0] for line in table.splitlines()[3:] if line and not line.startswith(" ")}
    assert set(registry.names()) <= rows
    assert "targets:" in table
    for name in registry.names():
        assert f"{name}: peak <=" in table
        if not registry.entry(name)[0].keeps_own_parts:
            assert f"{name}: rel. error vs dense reference" in table
    # The GPU's seconds do not apply to a CPU run and must say so, not pass; the ratios to
    # the roofline and to copying the upload are measured on any shape.
    assert "n/a   fedsrd whole llama-3.2-3b server step (r=64, K=4) <= 0.2 s on one GPU" in table
    assert "fedsrd server step <= 1.1x its roofline (CPU): " in table
    assert "n/a   fedsrd server step <= 1.1x its roofline" not in table
    assert "fedsrd upload encode + decode <= 25x copying its bytes" in table


def test_memory_probe_sees_dense_reference_but_no_method_forms_an_m_by_n_matrix(
    tiny_report,
) -> None:  # type: ignore[no-untyped-def]
    # Assert
    for r in tiny_report.results:
        assert r.memory is not None
        assert r.memory.dense_shapes == (), (r.method, r.memory.dense_shapes)
        if registry.entry(r.method)[0].keeps_own_parts:  # no dense reference (see above)
            continue
        assert r.reference_memory is not None
        # Every reference returns dense m×n updates: the probe must notice.
        assert r.reference_memory.dense_shapes, r.method


def test_main_prints_json_and_rejects_an_unknown_shape() -> None:
    # Prepare
    out = io.StringIO()
    argv = [
        "--shape",
        "smollm2-135m",
        "--targets",
        "q_proj",
        "--rank",
        "2",
        "--clients",
        "2",
        "--blocks",
        "1",
        "--model-blocks",
        "1",
        "--methods",
        "fedavg,florist",
        "--repeats",
        "1",
        "--threads",
        "1",
        "--json",
        "--quiet",
    ]
    # Execute
    status = main(argv, out=out)
    bad = main(["--shape", "no-such-model", "--quiet"], out=io.StringIO())
    # Assert
    assert status == 0
    data = json.loads(out.getvalue())
    assert [m["method"] for m in data["methods"]] == ["fedavg", "florist"]
    assert bad == 2


def test_memory_probe_counts_new_storages_not_views_and_releases_freed_ones() -> None:
    # Prepare
    base = torch.zeros(100, 10)

    def step() -> torch.Tensor:
        view = base[:50]  # a view of an input: no new memory
        tmp = torch.ones(1000)  # 4000 bytes ...
        del tmp  # ... released: the next 4000 must not stack on top of it
        tmp = torch.ones(1000)
        kept = view * 2  # 50×10 float32 = 2000 bytes, alive together with tmp
        del tmp
        return kept

    # Execute
    use = measure(step, watch=[(50, 10)]).use
    # Assert
    assert use.peak_tensor_bytes == 4000 + 2000
    assert use.largest_tensor_bytes == 4000
    assert use.dense_shapes == ((50, 10),)


def _inputs(uploads, starts, ranks, options=None, round_=1):  # type: ignore[no-untyped-def]
    return ref.LayerInputs(
        uploads=tuple(uploads),
        starts=tuple(starts),
        n_samples=tuple(10 * (k + 1) for k in range(len(uploads))),
        ranks=tuple(ranks),
        alphas=tuple(2.0 * r for r in ranks),
        round=round_,
        options=options or {},
    )


def test_florist_reference_at_tau_one_is_the_weighted_sum_of_client_products() -> None:
    # Prepare: two clients of ranks 3 and 2 on a 6×5 layer, float64
    gen = torch.Generator().manual_seed(1)
    pairs = [
        (
            torch.randn(r, 5, generator=gen, dtype=torch.float64),
            torch.randn(6, r, generator=gen, dtype=torch.float64),
        )
        for r in (3, 2)
    ]
    ups = [{"A": a, "B": b} for a, b in pairs]
    inp = _inputs(ups, pairs, (3, 2), {"tau": 1.0})
    # p = (10, 20) / 30, s_k = 2
    expected = (1 / 3) * 2 * pairs[0][1] @ pairs[0][0] + (2 / 3) * 2 * pairs[1][1] @ pairs[1][0]
    # Execute
    got = ref.florist(inp)
    # Assert
    assert torch.allclose(got, expected, atol=1e-10)


def test_fedsrd_e_reference_projects_the_aggregate_onto_the_row_space_of_a() -> None:
    # Prepare: B^0 = 0, so round 1 gives s·W·pinv(A)·A with W = Σ p_k ΔB_k (A + ΔA_k)
    gen = torch.Generator().manual_seed(2)
    a0 = torch.randn(2, 6, generator=gen, dtype=torch.float64)
    b0 = torch.zeros(4, 2, dtype=torch.float64)
    ups = [
        {
            "dA": torch.randn(2, 6, generator=gen, dtype=torch.float64),
            "dB": torch.randn(4, 2, generator=gen, dtype=torch.float64),
        }
        for _ in range(2)
    ]
    inp = _inputs(ups, [(a0, b0)] * 2, (2, 2))
    w = (1 / 3) * ups[0]["dB"] @ (a0 + ups[0]["dA"]) + (2 / 3) * ups[1]["dB"] @ (a0 + ups[1]["dA"])
    q, _ = torch.linalg.qr(a0.T)  # orthonormal basis of A's row space
    expected = 2.0 * w @ q @ q.T
    # Execute
    got = ref.fedsrd_e(inp)
    # Assert
    assert torch.allclose(got, expected, atol=1e-10)


def test_relative_error_and_stacked_bytes() -> None:
    # Prepare
    x = torch.tensor([[3.0, 0.0], [0.0, 4.0]])
    # Execute / Assert
    assert ref.relative_error(x, x) == 0.0
    assert ref.relative_error(torch.zeros(2, 2), x) == pytest.approx(1.0)
    assert ref.stacked_bytes([4, 2], out_features=10, in_features=6) == 6 * 16 * 4


def test_device_moves_every_tensor_of_the_inputs_and_refuses_a_missing_gpu() -> None:
    # Prepare: real synthetic round inputs of FedSRD (dense and sparse tensors, seeds)
    from benchmarks.common.synthetic import make_setup, synthetic_round
    from benchmarks.server import run as server_bench
    from fedlora.methods import registry
    from fedlora.methods.base import LayerSpec
    from fedlora.ops.sparse import Sparse

    method = registry.build("fedsrd", setup=make_setup((LayerSpec("l0", 12, 10),), (4, 4)))
    inputs = synthetic_round(method)
    # Execute: to the meta device, which no computation could have put them on
    moved = server_bench.on_device(inputs.uploads, torch.device("meta"))
    # Assert
    sparse = [v for u in moved for v in u.payload.values() if isinstance(v, Sparse)]
    assert sparse and all(s.values.is_meta and s.indices.is_meta for s in sparse)
    assert [u.cid for u in moved] == [u.cid for u in inputs.uploads]
    if not torch.cuda.is_available():
        with pytest.raises(server_bench.ConfigError, match="needs a CUDA GPU"):
            server_bench.resolve("cuda")
    with pytest.raises(server_bench.ConfigError, match="--device"):
        server_bench.BenchConfig(device="tpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["fedavg", "fedsrd", "fedsrd-e", "florist", "flexlora"])
def test_a_server_step_on_cuda_gives_the_cpu_step(name: str) -> None:
    from benchmarks.common.synthetic import make_setup, synthetic_round
    from benchmarks.server import run as server_bench
    from fedlora.methods.base import LayerSpec

    setup = make_setup((LayerSpec("l0", 96, 80), LayerSpec("l1", 80, 96)), (8, 8, 8))
    options = {"p_down": 0.0} if name.startswith("fedsrd") else {}
    method = registry.build(name, options, setup=setup)
    inputs = synthetic_round(method)
    cuda = torch.device("cuda")
    on_cpu = method.aggregate(inputs.state, inputs.uploads)
    on_gpu = server_bench.run_on(
        cuda,
        lambda: method.aggregate(
            server_bench.on_device(inputs.state, cuda),
            server_bench.on_device(inputs.uploads, cuda),
        ),
    )()
    cpu_dense = server_bench.global_dense(method, on_cpu)
    gpu_dense = server_bench.global_dense(
        method, server_bench.on_device(on_gpu, torch.device("cpu"))
    )
    for layer, ref_dense in cpu_dense.items():
        assert ref.relative_error(gpu_dense[layer], ref_dense) < 1e-4
