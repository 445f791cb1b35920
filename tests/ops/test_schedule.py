"""Learning-rate schedules: each against its formula written out, and train_local uses them."""

from __future__ import annotations

import math

import pytest

from fedlora import config
from fedlora.errors import ConfigError
from fedlora.ops.schedule import round_lr, step_lr


def test_constant_is_flat_and_warmup_ramps_from_the_first_step() -> None:
    assert [step_lr("constant", 0.1, 0.0, 0, 3, 5, s, 4) for s in range(4)] == [0.1] * 4
    ramp = [step_lr("constant", 0.1, 0.0, 2, 1, 5, s, 4) for s in range(4)]
    assert ramp == pytest.approx([0.05, 0.1, 0.1, 0.1])


def test_cosine_runs_over_the_federation_and_is_flat_within_a_round() -> None:
    lr, low, rounds = 2e-4, 1e-5, 10
    for t in range(1, rounds + 1):
        expected = low + 0.5 * (lr - low) * (1 + math.cos(math.pi * (t - 1) / rounds))
        assert round_lr("cosine", lr, low, t, rounds) == pytest.approx(expected, rel=1e-12)
        steps = [step_lr("cosine", lr, low, 0, t, rounds, s, 3) for s in range(3)]
        assert steps == pytest.approx([expected] * 3, rel=1e-12)
    assert round_lr("cosine", lr, low, 1, rounds) == pytest.approx(lr)
    # strictly falling from round to round
    values = [round_lr("cosine", lr, low, t, rounds) for t in range(1, rounds + 1)]
    assert all(a > b for a, b in zip(values, values[1:], strict=False))


def test_linear_decays_within_each_local_run_and_restarts() -> None:
    # Hugging Face's linear schedule after a 1-step warmup over 5 steps: (S - s) / (S - W)
    got = [step_lr("linear", 1.0, 0.0, 1, 4, 9, s, 5) for s in range(5)]
    assert got == pytest.approx([1.0, 1.0, 0.75, 0.5, 0.25])
    assert step_lr("linear", 1.0, 0.0, 0, 1, 9, 0, 5) == step_lr("linear", 1.0, 0.0, 0, 7, 9, 0, 5)
    assert [step_lr("linear", 1.0, 0.0, 0, 1, 1, s, 4) for s in range(4)] == pytest.approx(
        [1.0, 0.75, 0.5, 0.25]
    )


def test_bad_schedule_values_are_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError, match="train.lr_schedule"):
        config.load(None, ["train.lr_schedule=step"])
    with pytest.raises(ConfigError, match="train.warmup_steps"):
        config.load(None, ["train.warmup_steps=-1"])
    with pytest.raises(ConfigError, match="train.min_lr"):
        config.load(None, ["train.lr=1e-4", "train.min_lr=1e-3"])
    with pytest.raises(ValueError, match="outside"):
        round_lr("cosine", 1.0, 0.0, 0, 5)
