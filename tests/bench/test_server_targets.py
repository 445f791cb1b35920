"""bench server's target checks, evaluated on constructed measurements."""

from __future__ import annotations

from benchmarks.server.spec import BenchConfig, MethodResult, Timing
from benchmarks.server.targets import check_targets


def _result(method: str, seconds: float, ranks: tuple[int, ...] = (64,) * 4) -> MethodResult:
    return MethodResult(method, ranks, project_full=Timing(seconds, seconds, 3))


def _verdicts(config: BenchConfig, results: list[MethodResult]) -> dict[str, bool | None]:
    return {c.name: c.passed for c in check_targets(config, results)}


def test_whole_model_targets_are_issue_15s_seconds() -> None:
    # Prepare: FedSRD just above its 4 s, FedSRD-e just below its 1 s
    config = BenchConfig()
    results = [_result("fedsrd", 4.05), _result("fedsrd-e", 0.98)]
    # Execute
    verdicts = _verdicts(config, results)
    # Assert
    assert verdicts["fedsrd whole llama-3.2-3b server step (r=64, K=4) <= 4 s"] is False
    assert verdicts["fedsrd-e whole llama-3.2-3b server step (r=64, K=4) <= 1 s"] is True
    assert not any("x fedsrd-e's" in name or "x fedavg's" in name for name in verdicts)


def test_targets_of_another_shape_are_not_applicable() -> None:
    verdicts = _verdicts(BenchConfig(shape="tinyllama-1.1b"), [_result("fedsrd", 1.0)])
    assert verdicts["fedsrd whole llama-3.2-3b server step (r=64, K=4) <= 4 s"] is None


def test_florist_target_needs_its_configuration() -> None:
    ranks = (64, 32, 16, 16, 8, 8, 4, 4, 4, 4)
    config = BenchConfig(shape="tinyllama-1.1b", targets=("q_proj", "v_proj"), ranks=ranks)
    name = "florist tinyllama-1.1b q/v, 10 clients r=64..4: server step <= 0.4 s"
    assert _verdicts(config, [_result("florist", 0.39, ranks)])[name] is True
    assert _verdicts(config, [_result("florist", 0.41, ranks)])[name] is False
    assert _verdicts(BenchConfig(), [_result("florist", 0.1)])[name] is None
