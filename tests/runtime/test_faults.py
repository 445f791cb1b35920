"""Injected faults in the in-process runtime: a bad client is dropped with a logged reason,
the round aggregates the rest, and too few valid clients skip the round without changing
the global state."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from fedlora import config
from fedlora.methods.registry import names
from fedlora.runtime import checkpoint, simulation, steps
from tests.conftest import tiny_overrides
from tests.runtime.adapters import distance

BAD = 1  # the faulty client


def _run(tmp: Path, files: list[str], *extra: str) -> list[dict[str, Any]]:
    cfg = config.load(None, tiny_overrides(tmp, files, **{"federation.rounds": 2}) + list(extra))
    simulation.run(cfg)
    return [json.loads(x) for x in (tmp / "metrics.jsonl").read_text().splitlines()]


def _send_garbage_for_bad_client(monkeypatch: pytest.MonkeyPatch, garbage: bytes) -> None:
    real_send = steps.send

    def send(payload: Any, cfg: Any) -> steps.Transfer:
        tx = real_send(payload, cfg)
        # Uploads are the only payloads sent from client_step; mark them by call stack.
        import inspect

        caller = inspect.stack()[1].function
        if caller == "client_step" and send.cid == BAD:
            return steps.Transfer(garbage, tx.params, tx.encodings)
        return tx

    real_step = steps.client_step

    def client_step(side: Any, turn: Any, *args: Any, **kw: Any) -> steps.ClientOutcome:
        send.cid = turn.client.cid
        return real_step(side, turn, *args, **kw)

    send.cid = -1
    monkeypatch.setattr(steps, "send", send)
    monkeypatch.setattr(simulation, "client_step", client_step)


@pytest.mark.parametrize("method", names())
def test_hostile_upload_is_dropped_and_the_round_goes_on(
    method: str, tmp_path: Path, client_files: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _send_garbage_for_bad_client(monkeypatch, b"\x00\x01not a payload" * 7)

    records = _run(tmp_path, client_files, f"method={method}")

    for rec in records[1:]:
        assert rec["accepted"] == [0, 2]
        assert "invalid upload" in rec["dropped"][str(BAD)]
        assert not rec["skipped"]
    tensors = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert all(torch.isfinite(t).all() for t in tensors.values())


def test_client_crash_in_training_is_dropped_and_stays_in_sync(
    tmp_path: Path, client_files: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_train = steps.train_local
    calls = {"n": 0}

    def flaky(model: Any, slot: str, start: Any, examples: Any, *a: Any, **kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:  # round 1, client 1
            raise RuntimeError("disk full")
        return real_train(model, slot, start, examples, *a, **kw)

    monkeypatch.setattr(steps, "train_local", flaky)

    records = _run(tmp_path, client_files, "method=fedsrd")

    assert records[1]["accepted"] == [0, 2]
    assert "disk full" in records[1]["dropped"]["1"]
    # In round 2 the crashed client is back, in sync with the server (its view applied the
    # broadcast even though its training failed).
    assert records[2]["accepted"] == [0, 1, 2] and records[2]["dropped"] == {}


def test_too_few_valid_clients_skip_the_round_and_keep_the_state(
    tmp_path: Path, client_files: list[str]
) -> None:
    # Every client times out: no valid upload, below min_clients=1 -> both rounds skipped.
    records = _run(tmp_path, client_files, "method=florist", "federation.client_timeout_s=1e-9")

    assert all(r["skipped"] for r in records[1:])
    assert all("exceeded" in why for r in records[1:] for why in r["dropped"].values())
    # The global model is the initial one: the evaluation did not move.
    assert records[2]["eval"] == records[1]["eval"]


def test_one_huge_update_is_clipped_and_does_not_wreck_the_model(
    tmp_path: Path, client_files: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _run(tmp_path / "honest", client_files, "method=fedavg")

    from fedlora.methods.fedavg import FedAvg

    real_upload = FedAvg.upload

    def huge(self: FedAvg, start: Any, trained: Any, client: Any, seed: int) -> Any:
        payload = real_upload(self, start, trained, client, seed)
        if client.cid == BAD:
            payload = {k: v * 1e4 for k, v in payload.items()}
        return payload

    monkeypatch.setattr(FedAvg, "upload", huge)
    attacked = _run(tmp_path / "attacked", client_files, "method=fedavg")
    _run(tmp_path / "unbounded", client_files, "method=fedavg", "federation.clip_ratio=0")

    for rec in attacked[1:]:
        assert rec["accepted"] == [0, 1, 2] and rec["clipped"]["1"]["scale"] < 1e-2
        assert set(rec["clipped"]) == {"1"}
    # The bound keeps the global update near the honest run's; without it the one client
    # sets the update alone.
    bounded = distance(tmp_path / "attacked", tmp_path / "honest")
    free = distance(tmp_path / "unbounded", tmp_path / "honest")
    assert bounded < 5 and free > 100 * bounded, (bounded, free)


def _fail_round_two(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every client fails in round 2 (train calls 4..6 of 3 clients)."""
    real_train = steps.train_local
    calls = {"n": 0}

    def down_in_round_two(model: Any, slot: str, *a: Any, **kw: Any) -> Any:
        calls["n"] += 1
        if 4 <= calls["n"] <= 6:
            raise RuntimeError("network partition")
        return real_train(model, slot, *a, **kw)

    monkeypatch.setattr(steps, "train_local", down_in_round_two)


@pytest.mark.parametrize("method", ["fedsrd", "fed_dare"])
def test_a_synced_method_runs_on_after_a_skipped_round(
    method: str, tmp_path: Path, client_files: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: round 2 is skipped after its broadcast (round 1's delta) reached every view
    _fail_round_two(monkeypatch)
    # Execute
    records = _run(tmp_path, client_files, f"method={method}", "federation.rounds=3")
    # Assert: round 3 accepts every client: no view went out of sync with the server
    assert records[2]["skipped"] and not records[3]["skipped"]
    assert records[3]["accepted"] == [0, 1, 2], records[3]["dropped"]


@pytest.mark.parametrize(
    "variant", [["method=flora"], ["method=fedex"], ["method=florist", "method.florist.mode=merge"]]
)
def test_a_skipped_round_does_not_merge_the_last_aggregate_twice(
    variant: list[str], tmp_path: Path, client_files: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: every client fails in round 2 (train calls 4..6), so round 2 is skipped after
    # its broadcast (which merges round 1's aggregate into every base) went out
    _fail_round_two(monkeypatch)
    # Execute
    records = _run(tmp_path, client_files, *variant, "federation.rounds=3")
    # Assert: round 2 skipped; round 3's broadcast merges nothing already merged, so the
    # merges replayed on resume are round 1's aggregate once (round 2) and nothing (round 3)
    assert records[2]["skipped"] and not records[3]["skipped"]
    merges = checkpoint.read(tmp_path / "checkpoints", 3).merges[1:]
    assert merges[0], "round 2's broadcast carries round 1's aggregate"
    assert merges[1] == {}, "round 3 merged round 1's aggregate a second time"
