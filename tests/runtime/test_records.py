"""Every field of a metrics.jsonl record is a field of its record type, documented in
docs/metrics.md, and the lines a run writes have exactly those fields."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from fedlora import config
from fedlora.runtime import simulation
from fedlora.runtime.records import SCHEMA, RoundRecord, StartRecord
from tests.conftest import tiny_overrides

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
WRAPPED = {"evaluation"}  # written as eval, eval_seconds, eval_dropped, transport_bytes.eval_*


def documented() -> set[str]:
    return {
        name
        for row in re.findall(r"^\| ([^|]+) \|", DOC.read_text(), flags=re.M)
        for name in re.findall(r"`([a-z_]+)`", row)
    }


def test_every_record_field_is_documented() -> None:
    fields = {f.name for cls in (RoundRecord, StartRecord) for f in dataclasses.fields(cls)}
    written = (fields - WRAPPED) | {"eval", "eval_seconds", "eval_dropped"}
    assert written - documented() == set()


def test_a_runs_lines_are_its_records(tmp_path: Path, client_files: list[str]) -> None:
    # Prepare / Execute: a 2-round run, evaluated every round
    simulation.run(config.load(None, tiny_overrides(tmp_path, client_files)))
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]

    # Assert: every line says its schema; round records hold every always-written field and
    # nothing that is not a record field
    assert all(rec["schema"] == SCHEMA for rec in lines)
    round_fields = {f.name for f in dataclasses.fields(RoundRecord)} - WRAPPED
    evaluated = {"eval", "eval_seconds", "eval_dropped"}
    for rec in lines[1:]:
        assert set(rec) <= round_fields | evaluated
        assert set(RoundRecord.ALWAYS) <= set(rec)
        assert {"round", "sampled", "accepted", "skipped", "eval", "round_seconds"} <= set(rec)
    assert set(lines[0]) <= {"round", "method", "schema", "transport_bytes"} | evaluated
