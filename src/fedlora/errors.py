"""Exceptions shared by every layer.

Each one carries a message meant for a person: it names the key, path, tensor or client
that is wrong and says what is wrong with it. The CLI prints ``str(error)`` on one line and
exits with status 2 for any :class:`FedloraError`.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class FedloraError(Exception):
    """Base class of every error that ``fedlora`` raises on purpose."""


class ConfigError(FedloraError, ValueError):
    """A configuration value, option or file is invalid."""


class PayloadError(FedloraError, ValueError):
    """A payload on the wire is malformed, hostile, or does not fit the receiver."""


class CheckpointError(FedloraError):
    """A checkpoint is missing, partial or corrupt."""


class DataError(FedloraError, ValueError):
    """A data file or data source is missing, empty or malformed."""


def did_you_mean(word: str, known: Iterable[str], prefix: str = "") -> str:
    """`` (did you mean 'x'?)`` for the known name closest to ``word``, or nothing."""
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f" (did you mean {prefix + close[0]!r}?)" if close else ""
