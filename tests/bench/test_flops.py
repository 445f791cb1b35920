"""The flop counter counts each dense kernel with its textbook operation count, sees kernels
inside a real server step, and the machine rates are measured at the step's heaviest shapes."""

from __future__ import annotations

import pytest
import torch

from benchmarks.common.flops import count_flops, machine_rates, roofline_seconds


def test_each_kernel_is_counted_with_its_operation_count() -> None:
    a, b = torch.randn(3, 4), torch.randn(4, 5)
    tall = torch.randn(10, 4)
    square = torch.randn(6, 6)
    assert count_flops(lambda: a @ b).total == 2 * 3 * 4 * 5
    assert count_flops(lambda: torch.addmm(torch.zeros(3, 5), a, b)).total == 2 * 3 * 4 * 5
    assert count_flops(lambda: torch.zeros(3, 5).addmm_(a, b)).total == 2 * 3 * 4 * 5
    batch_a, batch_b = torch.randn(2, 3, 4), torch.randn(2, 4, 5)
    assert (
        count_flops(lambda: torch.zeros(2, 3, 5).baddbmm_(batch_a, batch_b)).total
        == 2 * 2 * 3 * 4 * 5
    )
    assert (
        count_flops(lambda: torch.zeros(3, 5).addbmm_(batch_a, batch_b)).total == 2 * 2 * 3 * 4 * 5
    )
    r_only = 2 * 10 * 16 - 2 * 64 / 3
    assert count_flops(lambda: torch.linalg.qr(tall, mode="r")).total == pytest.approx(r_only)
    assert count_flops(lambda: torch.linalg.qr(tall.T)).total == pytest.approx(2 * r_only)
    svd = 6 * 10 * 16 + 20 * 64
    assert count_flops(lambda: torch.linalg.svd(tall, full_matrices=False)).total == svd
    assert count_flops(lambda: torch.linalg.eigh(square @ square.T)).total == 2 * 6**3 + 9 * 6**3
    assert count_flops(lambda: (a + 1).relu()).total == 0  # elementwise work is not counted


def test_a_batched_factorisation_counts_every_matrix_of_its_batch() -> None:
    tall, square = torch.randn(5, 10, 4), torch.randn(3, 6, 6)
    r_only = 2 * 10 * 16 - 2 * 64 / 3
    assert count_flops(lambda: torch.linalg.qr(tall, mode="r")).total == pytest.approx(5 * r_only)
    svd = 6 * 10 * 16 + 20 * 64
    assert count_flops(lambda: torch.linalg.svd(tall, full_matrices=False)).total == 5 * svd
    gram = square @ square.mT  # counted as a batched product: 3 × 2·6³
    assert count_flops(lambda: torch.linalg.eigh(gram)).total == 3 * 9 * 6**3
    assert count_flops(lambda: square @ square.mT).total == 3 * 2 * 6**3


def test_a_server_step_is_counted_and_rated() -> None:
    from benchmarks.common.synthetic import make_setup, synthetic_round
    from fedlora.methods.base import LayerSpec
    from fedlora.methods.registry import build

    setup = make_setup((LayerSpec("l0", in_features=48, out_features=64),), (4, 4, 4))
    method = build("fedsrd", {}, setup=setup)
    inputs = synthetic_round(method, 0)
    counter = count_flops(lambda: method.aggregate(inputs.state, inputs.uploads))
    assert counter.total > 0
    assert counter.heaviest("qr") is not None and counter.heaviest("matmul") is not None
    rates = machine_rates(counter)
    # its pseudo-inverses' Grams are float64 products, rated apart from the float32 ones
    assert counter.heaviest("matmul-f64") is not None
    assert set(rates) == {"matmul", "matmul-f64", "qr"} and all(v > 0 for v in rates.values())


def test_float64_products_are_timed_at_their_own_rate() -> None:
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    counter = count_flops(lambda: (a @ b, a.double() @ b.double()))
    flops = 2 * 8 * 16 * 4
    assert dict(counter.by_kernel) == {
        ("matmul", (8, 16, 4)): flops,
        ("matmul-f64", (8, 16, 4)): flops,
    }
    seconds = roofline_seconds(counter, {"matmul": 2.0, "matmul-f64": 0.5})
    assert seconds == pytest.approx(flops / 2e9 + flops / 0.5e9)
    assert roofline_seconds(counter, {"matmul": 2.0}) is None  # a rate it needs is missing


def test_fedsrd_e_step_counts_every_product_it_runs() -> None:
    # FedSRD-e's B-round per layer: the float64 Gram A·Aᵀ (r×n by n×r), one r×n by n×r
    # product per client (Y_k), B by an r×r coefficient, then one m×r by r×r product per
    # client accumulated in place (addmm_), and the r×r algebra.
    from benchmarks.common.synthetic import make_setup, synthetic_round
    from fedlora.methods.base import LayerSpec
    from fedlora.methods.registry import build

    m, n, r, clients = 64, 48, 4, 3
    setup = make_setup((LayerSpec("l0", in_features=n, out_features=m),), (r,) * clients)
    method = build("fedsrd-e", {}, setup=setup)
    inputs = synthetic_round(method, 0)
    counter = count_flops(lambda: method.aggregate(inputs.state, inputs.uploads))
    assert inputs.state.round == 0  # round 1 updates B
    f32 = {shape: f for (kernel, shape), f in counter.by_kernel.items() if kernel == "matmul"}
    assert f32[(r, n, r)] == clients * 2 * r * n * r
    assert f32[(m, r, r)] == (1 + clients) * 2 * m * r * r
    assert counter.by_kernel[("matmul-f64", (r, n, r))] == 2 * r * n * r
