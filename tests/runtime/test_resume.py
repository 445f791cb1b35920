"""Resume after SIGKILL gives bit-identical adapters and metrics (apart from timings);
checkpoints are atomic and corrupt ones are refused with a clear message."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from fedlora import config
from fedlora.cli import main
from fedlora.errors import CheckpointError
from fedlora.runtime import simulation
from tests.conftest import tiny_overrides

ROUNDS = 4


def without_timings(value: Any) -> Any:
    """Metrics with every wall-clock field removed."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if "seconds" not in k}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def metrics(run: Path) -> list[Any]:
    return [
        without_timings(json.loads(x)) for x in (run / "metrics.jsonl").read_text().splitlines()
    ]


def adapter_bytes(run: Path) -> bytes:
    return (run / "adapter" / "adapter_model.safetensors").read_bytes()


def _overrides(run: Path, files: list[str], method: str) -> list[str]:
    return tiny_overrides(run, files, **{"federation.rounds": ROUNDS}) + [f"method={method}"]


def _kill_mid_run(run: Path, files: list[str], method: str, after_round: int) -> None:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2] / "src"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedlora.cli", "run", *_overrides(run, files, method)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        path = run / "metrics.jsonl"
        while time.monotonic() < deadline:
            if path.exists() and any(
                json.loads(x)["round"] >= after_round
                for x in path.read_text().splitlines()
                if x.strip()
            ):
                break
            if proc.poll() is not None:
                pytest.fail(f"the run ended (code {proc.returncode}) before it could be killed")
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize("method", ["fedsrd", "florist"])
def test_resume_after_sigkill_is_bit_identical(
    method: str, tmp_path: Path, client_files: list[str]
) -> None:
    straight = tmp_path / "straight"
    simulation.run(config.load(None, _overrides(straight, client_files, method)))
    killed = tmp_path / "killed"
    _kill_mid_run(killed, client_files, method, after_round=1)
    assert len((killed / "metrics.jsonl").read_text().splitlines()) < ROUNDS + 1

    assert main(["run", "--resume", str(killed)]) == 0

    assert adapter_bytes(killed) == adapter_bytes(straight)
    assert metrics(killed) == metrics(straight)


def test_same_seed_same_everything(tmp_path: Path, client_files: list[str]) -> None:
    for name in ("a", "b"):
        simulation.run(config.load(None, _overrides(tmp_path / name, client_files, "fed_dare")))
    assert adapter_bytes(tmp_path / "a") == adapter_bytes(tmp_path / "b")
    assert metrics(tmp_path / "a") == metrics(tmp_path / "b")


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_corrupt_last_checkpoint_falls_back_to_the_one_before(
    tmp_path: Path, client_files: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: the 3-round run, and a 2-round run whose last checkpoint is corrupted
    cfg = config.load(
        None, tiny_overrides(tmp_path / "whole", client_files, **{"federation.rounds": 3})
    )
    simulation.run(cfg)
    run = tmp_path / "run"
    simulation.run(config.load(None, tiny_overrides(run, client_files)))
    _flip_a_byte(run / "checkpoints" / "round-0002" / "tensors.safetensors")

    # Execute: resume to round 3 (round 2 is replayed from round 1's checkpoint)
    code = main(["run", "--resume", str(run), "federation.rounds=3"])

    # Assert: it says so, and ends where the uninterrupted run ends
    shown = capsys.readouterr()
    assert code == 0, shown.err
    said = shown.out
    assert "resuming from round 1" in said and "round-0002" in said and "corrupt" in said
    assert adapter_bytes(run) == adapter_bytes(tmp_path / "whole")
    assert metrics(run) == metrics(tmp_path / "whole")


def test_only_the_last_two_checkpoints_are_kept_and_two_corrupt_ones_stop_the_resume(
    tmp_path: Path, client_files: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    simulation.run(config.load(None, tiny_overrides(run, client_files, **{"federation.rounds": 3})))
    root = run / "checkpoints"
    assert sorted(p.name for p in root.iterdir() if p.name.startswith("round")) == [
        "round-0002",
        "round-0003",
    ]
    _flip_a_byte(root / "round-0003" / "tensors.safetensors")
    (root / "round-0002" / "meta.json").write_text("{")

    code = main(["run", "--resume", str(run), "federation.rounds=4"])

    err = capsys.readouterr().err
    assert code == 2 and "no usable checkpoint" in err
    assert "round-0003" in err and "round-0002/meta.json is corrupt" in err


def test_a_checkpoint_that_does_not_fit_the_run_is_refused(
    tmp_path: Path, client_files: list[str]
) -> None:
    # Prepare: a finished run whose last (only kept) checkpoints hold NaN or a wrong shape
    from safetensors.torch import load_file, save_file

    from fedlora.runtime import checkpoint

    run = tmp_path / "run"
    simulation.run(config.load(None, tiny_overrides(run, client_files)))
    root = run / "checkpoints"
    for r, spoil in ((2, "nan"), (1, "shape")):
        path = root / f"round-{r:04d}" / "tensors.safetensors"
        tensors = load_file(str(path))
        name = sorted(k for k in tensors if k.startswith("state/"))[0]
        tensors[name] = tensors[name].clone()
        if spoil == "nan":
            tensors[name].view(-1)[0] = float("nan")
        else:
            tensors[name] = tensors[name][:, :-1].contiguous()
        save_file(tensors, str(path))
        meta_path = root / f"round-{r:04d}" / "meta.json"
        meta = json.loads(meta_path.read_text())
        meta["sha256"] = checkpoint._sha256(path)
        meta_path.write_text(json.dumps(meta))

    # Execute / Assert: both are refused, naming what is wrong with each
    with pytest.raises(CheckpointError) as info:
        simulation.run(
            config.load(None, tiny_overrides(run, client_files, **{"federation.rounds": 3})),
            resume=True,
        )
    assert "NaN or Inf" in str(info.value) and "layer" in str(info.value)


def test_interrupted_checkpoint_write_leaves_no_checkpoint(tmp_path: Path) -> None:
    from fedlora.methods.base import ServerState
    from fedlora.runtime import checkpoint

    root = tmp_path / "ck"
    root.mkdir()
    (root / ".round-abc").mkdir()  # what a kill during write leaves behind
    assert checkpoint.rounds(root) == []
    path = checkpoint.write(root, checkpoint.Checkpoint(1, ServerState(1), {}, [{}]))
    (path / "meta.json").unlink()
    with pytest.raises(CheckpointError, match="incomplete"):
        checkpoint.read(root, 1)
