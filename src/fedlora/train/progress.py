"""Progress bars for long work (local steps, evaluation items, the server step), drawn only
where someone watches: on a terminal, never in a log file or CI (``log.progress = "auto"``).

The mode is the process's, set once by the command line from ``log.progress``
(:func:`set_mode`); library code just opens :func:`progress` around a loop.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

from tqdm import tqdm

from fedlora.validate import one_of

MODES = ("auto", "on", "off")
_mode = {"value": "auto"}


def set_mode(mode: str) -> None:
    """``auto`` (bars on a terminal outside CI), ``on`` or ``off``."""
    one_of("log.progress", mode, MODES)
    _mode["value"] = mode


def enabled() -> bool:
    mode = _mode["value"]
    if mode != "auto":
        return mode == "on"
    return sys.stderr.isatty() and not os.environ.get("CI")


class Bar:
    """One bar; ``advance`` moves it and shows the latest figures (``loss=…``)."""

    def __init__(self, total: int, desc: str, on: bool) -> None:
        self._bar = tqdm(total=total, desc=desc, leave=False, disable=not on, dynamic_ncols=True)

    def advance(self, n: int = 1, **figures: Any) -> None:
        if figures:
            shown = {k: f"{v:.4g}" if isinstance(v, float) else v for k, v in figures.items()}
            self._bar.set_postfix(shown, refresh=False)
        self._bar.update(n)

    def close(self) -> None:
        self._bar.close()


@contextlib.contextmanager
def progress(total: int, desc: str) -> Iterator[Bar]:
    """A bar of ``total`` units for the block (invisible when progress is off)."""
    bar = Bar(total, desc, enabled())
    try:
        yield bar
    finally:
        bar.close()
