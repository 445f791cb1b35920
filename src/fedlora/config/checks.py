"""The one check every configuration section makes of its values."""

from __future__ import annotations

from fedlora.errors import ConfigError


def check(cond: bool, key: str, msg: str) -> None:
    """Raise :class:`ConfigError` naming the dotted ``key`` unless ``cond``."""
    if not cond:
        raise ConfigError(f"{key}: {msg}")
