"""Peak resident memory of real processes: a model-only child and short federations.

Each child is a fresh interpreter that reports its own ``VmHWM`` (Linux): the parent's view
(``ru_maxrss`` from ``wait4``) would also count the parent's resident set copied at fork time.
Since every simulated client shares one base model, adding clients should add far less than
one model copy each.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedlora.errors import FedloraError

RSS_OVERRIDES: tuple[str, ...] = (
    "federation.rounds=1",
    "train.local_steps=1",
    "data.max_eval_per_domain=4",
    "data.max_train_per_client=16",
    "eval.every=1000000",
)
"""The short federation whose peak RSS is read (the user's ``--set`` overrides come after)."""


@dataclass(frozen=True)
class RssRun:
    """Peak resident set of one subprocess (``clients`` None: the model is only loaded)."""

    clients: int | None
    peak_rss_bytes: int
    seconds: float
    dtype: str = "float32"
    """The base model's ``model.dtype``."""


@dataclass(frozen=True)
class RssResult:
    model: str
    param_bytes: int
    """Parameter bytes of the model in float32."""
    runs: list[RssRun]


def _src_pythonpath() -> str:
    """PYTHONPATH for children: this package's source root first (works uninstalled too)."""
    root = str(Path(__file__).resolve().parents[2])
    rest = os.environ.get("PYTHONPATH", "")
    return root + (os.pathsep + rest if rest else "")


def _vmhwm_bytes() -> int | None:
    """This process's resident-set high-water mark (Linux ``VmHWM``), or None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def child_main(argv: Sequence[str]) -> int:
    """Body of an RSS child: ``REPORT load MODEL DTYPE`` or ``REPORT run KEY=VALUE...``.

    Writes ``{"vmhwm_bytes": ..., "param_bytes": ...}`` to REPORT on the way out. The child
    reads its own ``VmHWM`` because the parent's view (``ru_maxrss`` from ``wait4``) also
    counts the parent's resident set copied at fork time, which here is two loaded models.
    """
    report_path, mode, *rest = argv
    info: dict[str, Any] = {}
    code = 1
    try:
        if mode == "load":
            from fedlora.models import resolve_model
            from fedlora.models.placement import DTYPES

            model, _ = resolve_model(rest[0], dtype=DTYPES[rest[1]])
            params = list(model.parameters())
            info["param_bytes"] = sum(p.numel() * p.element_size() for p in params)
            info["param_count"] = sum(p.numel() for p in params)
            # Weights may be memory-mapped from safetensors: read every one so the baseline
            # holds the whole model resident, as any forward pass would.
            with torch.no_grad():
                for p in params:
                    p.sum()
            code = 0
        else:
            from fedlora import config
            from fedlora.runtime.simulation import run

            run(config.load(None, list(rest)))
            code = 0
    finally:
        info["vmhwm_bytes"] = _vmhwm_bytes()
        Path(report_path).write_text(json.dumps(info), encoding="utf-8")
    return code


_CHILD = (
    "import sys\nfrom benchmarks.common.rss import child_main\nsys.exit(child_main(sys.argv[1:]))\n"
)


def child_report(
    args: Sequence[str], timeout_s: float, threads: int
) -> tuple[dict[str, Any], float]:
    """Run :func:`child_main` with ``args`` in a fresh interpreter; return (report, seconds)."""
    env = dict(os.environ, PYTHONPATH=_src_pythonpath(), OMP_NUM_THREADS=str(threads))
    with tempfile.TemporaryDirectory(prefix="fedlora-rss-") as tmp:
        report = Path(tmp) / "report.json"
        began = time.perf_counter()
        try:
            proc = subprocess.run(
                [sys.executable, "-c", _CHILD, str(report), *args],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise FedloraError(f"RSS child {args[0]} timed out after {timeout_s:g} s") from None
        seconds = time.perf_counter() - began
        if proc.returncode != 0 or not report.exists():
            tail = proc.stderr.decode(errors="replace").strip().splitlines()[-1:]
            raise FedloraError(
                f"RSS child {args[0]} exited with {proc.returncode}: "
                f"{tail[0] if tail else '(no stderr)'}"
            )
        info: dict[str, Any] = json.loads(report.read_text(encoding="utf-8"))
    if info.get("vmhwm_bytes") is None:
        raise FedloraError("this system does not report VmHWM in /proc/self/status")
    return info, seconds


def measure_rss(
    model: str,
    clients: Sequence[int],
    overrides: Sequence[str] = (),
    dtypes: Sequence[str] = ("float32",),
    timeout_s: float = 3600.0,
    threads: int = 1,
    progress: Callable[[str], None] = lambda text: None,
) -> RssResult:
    """Peak RSS of a model-only child and of a short federation per client count, for each
    base ``model.dtype`` in ``dtypes``.

    Each child is a fresh interpreter (:func:`child_main`: the model loader, or
    ``fedlora run``), one after the other, and reports its own ``VmHWM``. ``overrides`` (``key=value``) follow :data:`RSS_OVERRIDES`;
    the client count and the (temporary) run folder come last and always win.
    """
    runs: list[RssRun] = []
    param_bytes = 0
    for dtype in dtypes:
        progress(f"RSS: loading {model} alone in {dtype}")
        info, seconds = child_report(["load", model, dtype], timeout_s, threads)
        param_bytes = 4 * int(info["param_count"])  # in float32, whatever dtype loaded
        runs.append(RssRun(None, int(info["vmhwm_bytes"]), seconds, dtype))
        for k in clients:
            progress(f"RSS: {model} federation with {k} clients, base in {dtype}")
            with tempfile.TemporaryDirectory(prefix="fedlora-rss-run-") as tmp:
                args = [
                    "run",
                    f"model.name={json.dumps(model)}",
                    *RSS_OVERRIDES,
                    *overrides,
                    f"model.dtype={dtype}",
                    f"data.clients={k}",
                    f"out_dir={json.dumps(str(Path(tmp) / 'run'))}",
                ]
                info, seconds = child_report(args, timeout_s, threads)
            runs.append(RssRun(k, int(info["vmhwm_bytes"]), seconds, dtype))
    return RssResult(model=model, param_bytes=param_bytes, runs=runs)
