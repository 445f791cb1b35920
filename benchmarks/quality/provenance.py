"""Where each result came from: every finished run kept as one JSON file in the benchmark's
results folder (committed), with the code it ran, its configuration, its per-round records
and when and under what load it ran; the report is computed from these files alone.

``code`` is the git tree hash of ``src/fedlora`` (what decides a result; a commit that only
touches docs or benchmarks keeps it), ``commit`` the commit checked out, ``dirty`` whether
``src/fedlora`` had uncommitted changes, ``environment`` the interpreter and the versions of
the packages that compute a result (float results drift between environments). A report
refuses to mix runs of different ``code`` unless told (``--allow-mixed-code``).
"""

from __future__ import annotations

import json
import platform
import subprocess
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = "src/fedlora"
#: The packages whose versions a record keeps.
PACKAGES = ("torch", "transformers", "peft", "numpy", "accelerate", "safetensors", "tokenizers")


def _git(*args: str) -> str:
    try:
        out = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip()


def code_version() -> dict[str, Any]:
    """The commit checked out, the tree hash of the library and whether it is modified."""
    return {
        "commit": _git("rev-parse", "HEAD") or "unknown",
        "code": _git("rev-parse", f"HEAD:{LIBRARY}") or "unknown",
        "dirty": bool(_git("status", "--porcelain", "--", LIBRARY)),
        "environment": environment(),
    }


def environment() -> dict[str, str]:
    """The interpreter's version and those of :data:`PACKAGES` (``"absent"`` if one is not
    installed)."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def record_path(results: Path, slug: str, seed: int) -> Path:
    return results / "runs" / slug / f"seed{seed}.json"


def write_record(path: Path, doc: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)


def read_record(path: Path) -> dict[str, Any] | None:
    """A run's record, or None where there is none (or it is unreadable)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


def run_record(
    spec: Mapping[str, Any],
    config: Mapping[str, Any],
    records: Sequence[Mapping[str, Any]],
    made: Mapping[str, Any],
    version: Mapping[str, Any],
) -> dict[str, Any]:
    """One run's provenance: what ran (row, resolved configuration, code), every round's
    record (held-out scores where evaluated, bytes, server time) and how it ran."""
    return {
        "spec": dict(spec),
        "config": dict(config),
        "records": list(records),
        "made": dict(made),
        **version,
    }


class MixedCode(ValueError):
    """Runs of different library code in one report."""


def check_one_code(docs: Sequence[Mapping[str, Any]], allow_mixed: bool) -> list[str]:
    """The distinct ``code`` versions of ``docs``; more than one (or a run made from a
    modified tree) raises :class:`MixedCode` unless ``allow_mixed``."""
    versions = sorted({str(d.get("code")) + ("+dirty" if d.get("dirty") else "") for d in docs})
    if len(versions) > 1 and not allow_mixed:
        raise MixedCode(
            f"these runs were made by {len(versions)} versions of {LIBRARY} "
            f"({', '.join(v[:12] for v in versions)}); rerun the older ones, or pass "
            "--allow-mixed-code to report them together"
        )
    return versions
