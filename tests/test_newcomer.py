"""A newcomer's first hour: clients have names, a resumed run says so and keeps
counting, errors point at the fix, cut examples are warned about, outputs follow the umask,
caches stay where the user put them, and the units are said."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from fedlora.cli import main
from fedlora.data.local import datasets_cache, read_rows
from tests.conftest import tiny_overrides

TOPICS = ("cooking", "travel", "science")


def _chats(path: Path, n: int = 36) -> Path:
    rows = [
        {
            "topic": TOPICS[i % 3],
            "messages": [
                {"role": "user", "content": f"Question {i} about {TOPICS[i % 3]}?"},
                {"role": "assistant", "content": f"Answer {i}."},
            ],
        }
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _column_run(tmp: Path, data: Path, *extra: str) -> list[str]:
    return [
        'model.name="tiny-llama"',
        f"data.dataset={json.dumps(str(data))}",
        'data.format="messages"',
        'data.partition="column"',
        'data.label_column="topic"',
        "federation.rounds=1",
        "train.local_steps=1",
        "train.batch_size=2",
        "train.seq_len=48",
        "lora.rank=2",
        "lora.alpha=4",
        f"out_dir={json.dumps(str(tmp / 'run'))}",
        *extra,
    ]


def test_a_column_split_counts_its_clients_and_names_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute: no data.clients; three topic values
    assert main(["run", *_column_run(tmp_path, _chats(tmp_path / "chats.jsonl"))]) == 0
    out = capsys.readouterr().out
    # Assert: three clients, each named by its value, on the console and in the run folder
    run = tmp_path / "run"
    assert json.loads((run / "config.json").read_text())["data"]["clients"] == 3
    clients = json.loads((run / "clients.json").read_text())
    assert [c["client"] for c in clients] == [0, 1, 2]
    for c, topic in zip(clients, sorted(TOPICS), strict=True):
        assert f"topic = {topic} (12 rows)" in c["source"]
        assert f"client {c['client']}: {c['source']}" in out
    assert "fedlora run: method=fedavg model=tiny-llama clients=3 rounds=1" in out


def test_a_missing_label_column_lists_the_fields_and_prints_no_run_header(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _chats(tmp_path / "chats.jsonl")
    code = main(["run", *_column_run(tmp_path, data, 'data.label_column="topc"')])
    captured = capsys.readouterr()
    assert code == 2
    assert "no field 'topc'" in captured.err
    assert "(did you mean 'topic'?)" in captured.err and "messages, topic" in captured.err
    assert "fedlora run:" not in captured.out and not (tmp_path / "run").exists()


def test_resume_says_where_and_counts_bytes_from_the_start(
    tmp_path: Path, client_files: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a 2-round run, then the same run with its last checkpoint removed
    run = tmp_path / "run"
    assert main(["run", *tiny_overrides(run, client_files)]) == 0
    whole = capsys.readouterr().out
    for folder in (run / "checkpoints").glob("round-0002"):
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()
    # Execute
    assert main(["run", "--resume", str(run)]) == 0
    resumed = capsys.readouterr().out
    # Assert: the header says where it resumes; the totals equal the whole run's
    assert f"fedlora run: resuming at round 2 from {run}" in resumed
    total = [line for line in whole.splitlines() if line.startswith("cumulative MB")]
    assert total and total == [
        line for line in resumed.splitlines() if line.startswith("cumulative MB")
    ]


def test_cut_examples_are_warned_about(
    tmp_path: Path, client_files: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    overrides = tiny_overrides(tmp_path / "run", client_files, **{"train.seq_len": 8})
    assert main(["run", *overrides, "federation.rounds=1"]) == 0
    out = capsys.readouterr().out
    assert "are longer than train.seq_len = 8 tokens and are cut" in out


def test_outputs_follow_the_umask(tmp_path: Path, client_files: list[str]) -> None:
    old = os.umask(0o022)
    try:
        run = tmp_path / "run"
        assert main(["run", *tiny_overrides(run, client_files), "federation.rounds=1"]) == 0
    finally:
        os.umask(old)
    for path in [run / "adapter", *(run / "adapter").iterdir(), *(run / "checkpoints").rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o755 if path.is_dir() else 0o644), (path, oct(mode))


def test_reading_a_dataset_writes_only_under_fedloras_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDLORA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    rows = read_rows(str(_chats(tmp_path / "chats.jsonl")))
    assert len(rows) == 36
    assert datasets_cache() == tmp_path / "cache" / "datasets"
    assert not (tmp_path / "hf").exists() and not (tmp_path / "hf-home").exists()
    # and leaves nothing there: the rows are in memory, no Arrow copy or lock is kept
    assert list(datasets_cache().iterdir()) == []


def test_fedlora_data_says_which_counts_are_rows_and_which_examples(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _chats(tmp_path / "chats.jsonl")
    assert main(["data", *_column_run(tmp_path, data)]) == 0
    out = capsys.readouterr().out
    assert "training examples" in out and "labels (rows)" in out


def test_a_mistyped_method_is_answered_without_importing_torch() -> None:
    import subprocess
    import sys

    from fedlora.methods.registry import NAMES, names

    code = (
        "import sys\n"
        "from fedlora import config\n"
        "from fedlora.errors import ConfigError\n"
        "try:\n"
        "    config.load(None, ['method=fedsrdd'])\n"
        "except ConfigError as exc:\n"
        "    print(exc)\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    said, torch_loaded = out.stdout.strip().splitlines()
    assert "unknown method 'fedsrdd'" in said and "fedsrd" in said
    assert torch_loaded == "False"
    assert sorted(NAMES) == names()  # the list the answer names is the registry's
