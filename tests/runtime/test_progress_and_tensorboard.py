"""Progress shows where someone watches and stays out of logs; ``log.tensorboard`` writes the
scalars of metrics.jsonl as TensorBoard event files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fedlora.cli import main
from fedlora.runtime.tensorboard import scalars
from fedlora.train import progress
from tests.conftest import tiny_overrides


@pytest.fixture(autouse=True)
def _restore_progress_mode() -> object:
    yield
    progress.set_mode("auto")


def test_tensorboard_events_hold_the_metrics_scalars(
    tmp_path: Path, client_files: list[str]
) -> None:
    # Execute
    run = tmp_path / "run"
    assert main(["run", *tiny_overrides(run, client_files), "log.tensorboard=true"]) == 0
    # Assert: every finite number of every record is a scalar at step = round
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"eval/client0/loss", "train_loss/0", "upload_bytes/1"} <= tags
    for record in records:
        for tag, value in scalars(record):
            steps = {e.step: e.value for e in events.Scalars(tag)}
            assert steps[record["round"]] == pytest.approx(value, rel=1e-6)


def test_scalars_skip_what_is_not_a_number() -> None:
    record = {"round": 3, "method": "fedavg", "ok": True, "a": {"b": 1.5, "c": [1, 2]}, "n": None}
    assert dict(scalars(record)) == {"a/b": 1.5}
    assert dict(scalars({"x": float("nan"), "y": 2})) == {"y": 2.0}


def test_progress_on_draws_local_steps_and_auto_stays_out_of_logs(
    tmp_path: Path, client_files: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute: captured output is not a terminal, so "auto" draws nothing ...
    assert main(["run", *tiny_overrides(tmp_path / "a", client_files)]) == 0
    quiet = capsys.readouterr()
    # ... and "on" draws the bars (local steps with their loss, evaluation items)
    assert main(["run", *tiny_overrides(tmp_path / "b", client_files), "log.progress=on"]) == 0
    shown = capsys.readouterr()
    # Assert
    assert "local steps" not in quiet.err and "eval loss" not in quiet.err
    assert "local steps" in shown.err and "loss=" in shown.err and "eval loss" in shown.err
    # a log still shows each client's local run as one line (no silent stretch)
    assert "round 1 client 0: train loss" in quiet.out


def test_progress_mode_is_checked() -> None:
    with pytest.raises(ValueError, match="log.progress: must be one of"):
        progress.set_mode("loud")
