"""`fedlora run` end to end on the tiny model: the run folder, metrics, adapter, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel

from fedlora.cli import main
from fedlora.models import resolve_model
from tests.conftest import tiny_overrides

METRIC_FIELDS = {
    "round",
    "method",
    "train_loss",
    "eval",
    "upload_bytes",
    "download_bytes",
    "upload_params",
    "download_params",
    "server_seconds",
    "encodings",
    "dropped",
}


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_rounds_write_metrics_checkpoints_and_a_loadable_adapter(
    tmp_path: Path, client_files: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"

    code = main(["run", *tiny_overrides(run, client_files)])

    assert code == 0
    out = capsys.readouterr().out
    assert "round" in out and "MB_up" in out and str(run / "adapter") in out
    records = _records(run)
    assert [r["round"] for r in records] == [0, 1, 2]
    for rec in records[1:]:
        assert set(rec) >= METRIC_FIELDS
        assert set(rec["upload_bytes"]) == {"0", "1", "2"}
        assert all(b > 0 for b in rec["upload_bytes"].values())
        assert set(rec["eval"]) == {"client0", "client1", "client2"}
    assert (run / "config.json").is_file()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "merges",
        "round-0001",
        "round-0002",
    ]

    base, _ = resolve_model("tiny-llama", seed=0)
    ids = torch.tensor([[3, 4, 5, 6, 7, 8]])
    with torch.no_grad():
        before = base(input_ids=ids).logits.clone()
        tuned = PeftModel.from_pretrained(base, run / "adapter").eval()
        after = tuned(input_ids=ids).logits
    assert not torch.allclose(before, after, atol=1e-6)


def test_bad_config_value_is_one_line_and_exit_2(
    tmp_path: Path, client_files: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["run", *tiny_overrides(tmp_path / "r", client_files), "train.lr=-3"])
    err = capsys.readouterr().err
    assert code == 2
    assert "train.lr" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_missing_client_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = [str(tmp_path / "nope0.jsonl"), str(tmp_path / "nope1.jsonl")]
    code = main(["run", *tiny_overrides(tmp_path / "r", files)])
    err = capsys.readouterr().err
    assert code == 2 and "nope0.jsonl" in err


def test_a_folder_holding_another_run_is_refused(
    tmp_path: Path, client_files: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert main(["run", *tiny_overrides(run, client_files, **{"federation.rounds": 1})]) == 0
    code = main(["run", *tiny_overrides(run, client_files, **{"train.lr": 0.5})])
    assert code == 2 and "different run" in capsys.readouterr().err
