"""An explicit timing hook for a client's round.

A benchmark that wants to see where a round's time goes passes a :data:`Timer` to
:func:`fedlora.train.local.train_local` and :func:`fedlora.runtime.steps.client_step`; each
phase is entered as ``with timer("phase"): ...``. Phases: ``swap_in`` (adapter copied into
the PEFT slot, slot activated, factors marked trainable), ``live_lora`` (the view handed to a
regulariser), ``collate`` (per micro-batch), ``swap_out`` (trained factors copied out),
``client_start``, ``upload`` and ``upload_encode``. The default times nothing and costs a
no-op context per phase; no module global is ever replaced.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager

Timer = Callable[[str], AbstractContextManager[None]]
"""``timer(phase)`` returns a context manager that times the block it guards."""


def untimed(phase: str) -> AbstractContextManager[None]:
    """The default :data:`Timer`: times nothing."""
    return contextlib.nullcontext()
