"""``log.tensorboard = true``: the scalars of each ``metrics.jsonl`` record, also written as
TensorBoard event files under ``RUN/tensorboard`` (step = round).

A record's nested keys become slash-separated tags (``eval/code/loss``,
``upload_bytes/0``); every finite number is a scalar, everything else (names, lists, flags)
stays in ``metrics.jsonl`` only. It wraps the run's reporter, so both runtimes write the same.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from fedlora.errors import ConfigError

Reporter = Callable[[str, dict[str, Any]], None]


def check_available() -> None:
    if importlib.util.find_spec("tensorboard") is None:
        raise ConfigError(
            "log.tensorboard = true needs the tensorboard package: "
            "pip install 'fedlora[tensorboard]'"
        )


def scalars(record: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    """Every finite number in ``record`` (nested), by slash-joined key."""
    for key, value in record.items():
        tag = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from scalars(value, tag + "/")
        elif (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and key != "round"
            and math.isfinite(value)
        ):
            yield tag, float(value)


def with_tensorboard(report: Reporter, folder: Path) -> Reporter:
    """``report``, also writing each finished round's scalars to event files in ``folder``."""
    check_available()
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(folder))

    def reporting(kind: str, info: dict[str, Any]) -> None:
        if kind == "round_done":
            for tag, value in scalars(info["record"]):
                writer.add_scalar(tag, value, global_step=int(info["round"]))
            writer.flush()
        elif kind == "done":
            writer.close()
        report(kind, info)

    return reporting
