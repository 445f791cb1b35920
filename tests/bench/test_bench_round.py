"""``python -m benchmarks.round``: the demo rounds are read from a real run's records, the paper
setting is built from measured steps and the server benchmark, and the arithmetic that
combines them is the module docstring's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.round import run as round_cost
from fedlora import config
from fedlora.shapes import model_shape
from tests.conftest import tiny_overrides, write_client_files

PAPER_TOML = """
[lora]
rank = 4
alpha = 8
target_modules = "all-linear"
[data]
clients = 2
[train]
local_steps = 3
batch_size = 2
grad_accum_steps = 2
seq_len = 16
"""


def test_round_cost_measures_both_settings_and_combines_them(tmp_path: Path) -> None:
    # Prepare: a tiny demo federation and a small "paper" setting on SmolLM2's shape
    files = write_client_files(tmp_path, 2)
    demo = config.load(None, tiny_overrides(tmp_path / "unused", files))
    paper_path = tmp_path / "paper.toml"
    paper_path.write_text(PAPER_TOML)
    paper = config.load(paper_path, [])
    # Execute
    report = round_cost.run_bench(demo, paper, "smollm2-135m", ["fedavg", "fedsrd"], 1, 1)
    # Assert: demo figures from the run's own records, parts within the round
    assert [d.method for d in report.demo] == ["fedavg", "fedsrd"]
    for d in report.demo:
        assert d.rounds == [1]
        assert 0 < d.train_s < d.round_s and 0 < d.server_s < d.round_s
        assert d.rest_s == pytest.approx(d.round_s - d.train_s - d.client_other_s - d.server_s)
    # the paper rounds: 3 x 2 x 2 = 12 sequences per client, depth extended to 30 layers
    assert set(report.step_s) == {1, 2} and all(s > 0 for s in report.step_s.values())
    step = report.step_s[1] + 29 * (report.step_s[2] - report.step_s[1])
    for p in report.paper:
        assert p.client_train_s == pytest.approx(12 * step)
        assert p.round_s == pytest.approx(p.client_train_s + 2 * p.wire_s + p.server_s)
    hw = round_cost.on_paper_hardware(report)
    fedsrd = next(p for p in report.paper if p.method == "fedsrd")
    assert hw["fedsrd"] == pytest.approx((1.92 * 60 + fedsrd.server_s + 2 * fedsrd.wire_s) / 60)
    data = round_cost.report_json(report)
    assert data["paper_round_ratio"] == pytest.approx(
        fedsrd.round_s / next(p for p in report.paper if p.method == "fedavg").round_s
    )
    text = round_cost.format_table(report)
    assert "FedSRD / FedAvg round time" in text and "paper min" in text
    json.dumps(data)  # JSON-ready


def test_a_longer_decoder_costs_more_per_step() -> None:
    # The per-layer cost is the difference of two measured depths; it must be positive for
    # the extrapolation to mean anything (4 layers against 1, so noise cannot flip it).
    shape = model_shape("smollm2-135m")
    one = round_cost.train_step_seconds(shape, 1, 4, 8.0, 32, repeats=3)
    four = round_cost.train_step_seconds(shape, 4, 4, 8.0, 32, repeats=3)
    assert four > one > 0


def test_missing_config_is_a_clear_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code = round_cost.main(["--config", str(tmp_path / "nope.toml")])
    assert code == 2 and "nope.toml not found" in capsys.readouterr().err
