"""``python -m benchmarks.client --clients``: the plan of runs, the figures read from each run's
metrics, the targets, and the runs themselves (children played in-process here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.client import report as client_report
from benchmarks.client import run as bench
from benchmarks.client import scale
from fedlora import config
from fedlora.errors import ConfigError
from fedlora.runtime.driver import sample_clients
from tests.bench.children import children_in_process


def test_the_plan_varies_registered_then_sampled_at_the_largest() -> None:
    assert scale.scale_plan((100, 10, 1000), (10, 5, 20)) == [
        (10, 10),
        (100, 10),
        (1000, 10),
        (1000, 5),
        (1000, 20),
    ]
    assert scale.scale_plan((3, 50), (10,)) == [(3, 3), (50, 10)]
    with pytest.raises(ConfigError, match="exceeds"):
        scale.scale_plan((10,), (20,))
    with pytest.raises(ConfigError, match="positive"):
        scale.scale_plan((0, 10), (5,))


def test_round_figures_are_medians_between_the_first_and_last_round() -> None:
    records = [{"round": 0, "eval": {}}] + [
        {
            "round_seconds": s,
            "train_seconds": {"0": s / 2, "1": 0.1},
            "server_seconds": s / 10,
            "tokens": {"0": 100, "1": 100 * s},
        }
        for s in (9.0, 1.0, 3.0, 2.0, 7.0)
    ]
    got = scale.round_figures(records)
    assert (got["round_s"], got["train_s"], got["server_s"]) == (2.0, 1.1, 0.2)
    assert got["tokens"] == 300.0
    # per 1k tokens: 1/200, 3/400, 2/300 -> median 2/300
    assert got["round_s_per_ktok"] == pytest.approx(1000 * 2 / 300)


def _run(registered: int, sampled: int, rss_mib: float, per_ktok: float, server_s: float):  # type: ignore[no-untyped-def]
    return scale.ScaleRun(
        "fedsrd",
        registered,
        sampled,
        int(rss_mib * 2**20),
        1.0,
        0.5,
        server_s,
        9.0,
        100.0,
        per_ktok,
    )


def test_checks_pass_and_fail_on_the_measured_numbers() -> None:
    good = [
        _run(10, 10, 500, 1.0, 0.1),
        _run(1000, 10, 520, 1.05, 0.1),
        _run(1000, 20, 520, 1.9, 0.21),
    ]
    verdicts = [c["passed"] for c in scale.scale_checks(good)]
    assert verdicts == [True, True, True]
    bad = [
        _run(10, 10, 500, 1.0, 0.1),
        _run(1000, 10, 540, 1.3, 0.1),
        _run(1000, 20, 540, 2.0, 0.5),
    ]
    checks = scale.scale_checks(bad)
    assert [c["passed"] for c in checks] == [False, False, False]
    assert checks[0]["value"] == pytest.approx(0.08)


def test_scale_runs_are_real_federations_whose_metrics_are_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: children run in-process (what they are given and report is the same)
    calls = children_in_process(monkeypatch, scale, tmp_path, seconds=1.5)
    overrides = ("train.seq_len=32", "lora.rank=4", "lora.alpha=8", "data.max_train_per_client=4")
    config = bench.ClientBenchConfig(
        model="tiny-llama",
        methods=("fedavg",),
        overrides=overrides,
        threads=1,
        skip_timing=True,
        scale_clients=(4, 40),
        scale_sampled=(2, 4),
    )
    # Execute
    report = bench.run_bench(config)
    # Assert: the plan's three runs, each with its counts last, figures from its metrics
    assert [(r.registered, r.sampled) for r in report.scale] == [(4, 2), (40, 2), (40, 4)]
    assert calls[1][-3:-1] == ["data.clients=40", "federation.clients_per_round=2"]
    assert all(r.round_s > r.server_s > 0 and r.peak_rss_bytes > 0 for r in report.scale)
    assert all(0 < r.train_s < r.round_s for r in report.scale)
    assert [c["check"].split(":")[0] for c in report.checks] == ["fedavg"] * 3
    text = client_report.format_table(report)
    assert "Registered clients" in text and "server ms/sampled" in text
    row = client_report.report_json(report)["scale"][0]
    assert row["non_train_s"] == pytest.approx(row["round_s"] - row["train_s"])


@pytest.mark.parametrize("sampled", [1, 2, 7])
def test_the_child_samples_exactly_the_number_asked(sampled: int, tmp_path: Path) -> None:
    args = scale.run_args("tiny-llama", "fedavg", 50, sampled, ("seed=3",), tmp_path / "r")
    cfg = config.load(None, args[1:])
    assert args[-1] == f"out_dir={json.dumps(str(tmp_path / 'r'))}"
    assert cfg.data.clients == 50 and cfg.seed == 3
    assert all(len(sample_clients(cfg, t)) == sampled for t in (1, 2, 3))
