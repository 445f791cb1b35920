"""bench server's target checks, evaluated on constructed measurements: ratios to the
machine's roofline on a CPU, seconds on a GPU, and the wire against copying its bytes."""

from __future__ import annotations

from benchmarks.server.spec import BenchConfig, MethodResult, Timing
from benchmarks.server.targets import check_targets


def _result(
    method: str, seconds: float, roofline: float | None = None, ranks: tuple[int, ...] = (64,) * 4
) -> MethodResult:
    return MethodResult(
        method, ranks, project_full=Timing(seconds, seconds, 3), roofline_s=roofline
    )


def _verdicts(config: BenchConfig, results: list[MethodResult]) -> dict[str, bool | None]:
    return {c.name: c.passed for c in check_targets(config, results)}


def test_cpu_targets_are_ratios_to_the_roofline_measured_in_the_same_run() -> None:
    # Prepare: FedSRD just above 1.1x its roofline, FedSRD-e below 1.5x, FLoRIST at 1.2x
    results = [
        _result("fedsrd", 5.6, roofline=5.0),
        _result("fedsrd-e", 1.4, roofline=1.0),
        _result("florist", 1.2, roofline=1.0),
    ]
    # Execute
    verdicts = _verdicts(BenchConfig(), results)
    # Assert: the same ratios on any shape; seconds alone decide nothing on a CPU
    assert verdicts["fedsrd server step <= 1.1x its roofline (CPU)"] is False
    assert verdicts["fedsrd-e server step <= 1.5x its roofline (CPU)"] is True
    assert verdicts["florist server step <= 1.2x its roofline (CPU)"] is True
    other_shape = _verdicts(BenchConfig(shape="tinyllama-1.1b"), results)
    assert other_shape["fedsrd server step <= 1.1x its roofline (CPU)"] is False
    gpu = "fedsrd whole llama-3.2-3b server step (r=64, K=4) <= 0.2 s on one GPU (H200)"
    assert verdicts[gpu] is None


def test_the_gpu_target_is_seconds_on_the_whole_llama_model() -> None:
    gpu = "fedsrd whole llama-3.2-3b server step (r=64, K=4) <= 0.2 s on one GPU (H200)"
    cuda = BenchConfig(device="cuda")
    assert _verdicts(cuda, [_result("fedsrd", 0.19)])[gpu] is True
    assert _verdicts(cuda, [_result("fedsrd", 0.21)])[gpu] is False
    assert (
        _verdicts(BenchConfig(device="cuda", model_blocks=2), [_result("fedsrd", 0.1)])[gpu] is None
    )
    assert (
        _verdicts(cuda, [_result("fedsrd", 0.1)])["fedsrd server step <= 1.1x its roofline (CPU)"]
        is None
    )


def test_the_wire_is_measured_against_copying_the_same_bytes() -> None:
    name = "fedsrd upload encode + decode <= 25x copying its bytes out and back"
    fast = _result("fedsrd", 1.0)
    fast.wire, fast.copy = Timing(0.2, 0.2, 3), Timing(0.01, 0.01, 3)
    slow = _result("fedsrd", 1.0)
    slow.wire, slow.copy = Timing(0.3, 0.3, 3), Timing(0.01, 0.01, 3)
    assert _verdicts(BenchConfig(), [fast])[name] is True
    assert _verdicts(BenchConfig(), [slow])[name] is False
    assert _verdicts(BenchConfig(), [_result("fedsrd", 1.0)])[name] is None
