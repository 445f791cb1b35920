"""The one validator of configuration values: choices, ranges, types.

Each check raises :class:`~fedlora.errors.ConfigError` (a ``ValueError``) whose message starts
with the dotted key it was given, so that a bad value anywhere (a config section, a method's
options, a command's flag) is answered the same way: ``key: must be …; got …``.
"""

from __future__ import annotations

from collections.abc import Iterable

from fedlora.errors import ConfigError, did_you_mean


def check(cond: bool, key: str, msg: str) -> None:
    """Raise ``ConfigError("key: msg")`` unless ``cond``."""
    if not cond:
        raise ConfigError(f"{key}: {msg}")


def one_of(key: str, value: object, choices: Iterable[object]) -> None:
    """``value`` must be one of ``choices`` (a close name is suggested)."""
    options = list(choices)
    if value in options:
        return
    hint = did_you_mean(value, [str(c) for c in options]) if isinstance(value, str) else ""
    raise ConfigError(
        f"{key}: must be one of {', '.join(str(c) for c in options)}; got {value!r}{hint}"
    )


def flag(key: str, value: object) -> None:
    """``value`` must be ``true`` or ``false``."""
    check(isinstance(value, bool), key, f"must be true or false; got {value!r}")


def number(
    key: str,
    value: object,
    *,
    above: float | None = None,
    at_least: float | None = None,
    below: float | None = None,
    at_most: float | None = None,
    integer: bool = False,
) -> None:
    """``value`` must be a number (an integer if ``integer``) within the bounds given; a bad
    value is answered with the whole range, e.g. ``must be in [0, 1); got 1.5``."""
    kind = "an integer" if integer else "a number"
    ok = isinstance(value, int) if integer else isinstance(value, int | float)
    check(ok and not isinstance(value, bool), key, f"must be {kind}; got {value!r}")
    assert isinstance(value, int | float)
    low = above if above is not None else at_least
    high = below if below is not None else at_most
    inside = (
        (above is None or value > above)
        and (at_least is None or value >= at_least)
        and (below is None or value < below)
        and (at_most is None or value <= at_most)
    )
    if not inside:
        span = _range(low, above is not None, high, below is not None)
        raise ConfigError(f"{key}: must be {span}; got {value!r}")


def _range(low: float | None, open_low: bool, high: float | None, open_high: bool) -> str:
    if low is not None and high is not None and high != float("inf"):
        return f"in {'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
    finite = "finite and " if high == float("inf") else ""
    if low is not None:
        return f"{finite}{'>' if open_low else '>='} {low:g}"
    assert high is not None
    return f"{'<' if open_high else '<='} {high:g}"
