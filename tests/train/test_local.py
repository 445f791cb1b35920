"""Local training follows the configured learning-rate schedule (train.lr_schedule)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from fedlora import config
from fedlora.methods.base import ClientStart
from fedlora.ops.schedule import step_lr
from fedlora.runtime.assemble import assemble
from fedlora.train.adapters import get_lora, slot_name
from fedlora.train.local import LocalRun, train_local
from tests.conftest import tiny_overrides, write_client_files


@pytest.mark.parametrize("schedule", ["constant", "cosine", "linear"])
def test_train_local_uses_one_scheduled_rate_per_step(schedule: str, tmp_path: Path) -> None:
    # Prepare: round 2 of 3, one warmup step
    files = write_client_files(tmp_path, 2)
    fed = assemble(config.load(None, tiny_overrides(tmp_path / "run", files)), lambda k, i: None)
    client = fed.setup.clients[0]
    slot = slot_name(client.rank, client.alpha)
    train = dataclasses.replace(
        fed.cfg.train, lr_schedule=schedule, warmup_steps=1, min_lr=fed.cfg.train.lr / 10
    )
    start = ClientStart(adapter=get_lora(fed.model, slot))
    # Execute
    result = train_local(
        fed.model, slot, start, fed.train_sets[0], train, fed.pad_id, LocalRun(5, round=2, rounds=3)
    )
    # Assert
    steps = train.local_steps
    expected = [step_lr(schedule, train.lr, train.min_lr, 1, 2, 3, s, steps) for s in range(steps)]
    assert list(result.lrs) == pytest.approx(expected)
