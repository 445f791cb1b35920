"""The one validator answers every bad value alike: the key, the rule, the value given."""

from __future__ import annotations

import math

import pytest

from fedlora.errors import ConfigError
from fedlora.validate import flag, number, one_of


@pytest.mark.parametrize(
    ("value", "bounds", "message"),
    [
        (1.5, {"at_least": 0.0, "below": 1.0}, "k: must be in [0, 1); got 1.5"),
        (0.0, {"above": 0.0, "at_most": 1.0}, "k: must be in (0, 1]; got 0.0"),
        (-1, {"at_least": 0.0, "below": math.inf}, "k: must be finite and >= 0; got -1"),
        (math.inf, {"at_least": 0.0, "below": math.inf}, "k: must be finite and >= 0; got inf"),
        (math.nan, {"above": 0.0}, "k: must be > 0; got nan"),
        (5, {"at_most": 3}, "k: must be <= 3; got 5"),
        (2.5, {"integer": True}, "k: must be an integer; got 2.5"),
        (True, {}, "k: must be a number; got True"),
        ("big", {}, "k: must be a number; got 'big'"),
    ],
)
def test_a_bad_number_names_its_key_its_range_and_its_value(
    value: object, bounds: dict[str, float], message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        number("k", value, **bounds)  # type: ignore[arg-type]
    assert str(err.value) == message


def test_values_inside_their_range_pass() -> None:
    number("k", 0, at_least=0.0, below=1.0)
    number("k", 1.0, above=0.0, at_most=1.0)
    number("k", 7, at_least=1, integer=True)
    one_of("k", "b", ["a", "b"])
    flag("k", False)


def test_a_mistyped_choice_is_answered_with_the_close_name() -> None:
    with pytest.raises(ConfigError, match=r"k: must be one of fresh, zeros; got 'fersh'.*fresh"):
        one_of("k", "fersh", ["fresh", "zeros"])


def test_a_flag_must_be_a_boolean() -> None:
    with pytest.raises(ConfigError, match=r"k: must be true or false; got 1"):
        flag("k", 1)
