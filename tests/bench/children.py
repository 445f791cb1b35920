"""Benchmark subprocess children played in this process (a fresh interpreter per child costs
tens of seconds on a loaded machine); what they are given and report is the same."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks.common import rss


def children_in_process(
    monkeypatch: pytest.MonkeyPatch, module: Any, folder: Path, seconds: float = 0.0
) -> list[list[str]]:
    """Replace ``module.child_report`` by :func:`rss.child_main` called here; returns the list
    that records every child's arguments."""
    calls: list[list[str]] = []

    def in_process(args, timeout_s, threads):  # type: ignore[no-untyped-def]
        calls.append(list(args))
        report = folder / f"report{len(calls)}.json"
        assert rss.child_main([str(report), *args]) == 0
        return json.loads(report.read_text()), seconds

    monkeypatch.setattr(module, "child_report", in_process)
    return calls
