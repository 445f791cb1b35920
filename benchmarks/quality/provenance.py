"""Where each result came from: every finished run kept as one JSON file in the benchmark's
results folder (committed), with the code it ran, its configuration, its per-round records
and when and under what load it ran; the report is computed from these files alone.

``code`` is the git tree hash of ``src/fedlora`` (what decides a result; a commit that only
touches docs or benchmarks keeps it), ``commit`` the commit checked out, ``dirty`` whether
``src/fedlora`` had uncommitted changes, ``environment`` the interpreter and the versions of
the packages that compute a result and the device (float results drift between
environments). A claim is not decided from rows made by different code or environments.

A kept record **is** a finished run: :func:`same_run` says whether it is the run a plan asks
for (its configuration agrees on every value the run sets), so a fresh clone reuses the
committed records and reruns none of them.
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
    """The interpreter's version, those of :data:`PACKAGES` (``"absent"`` if one is not
    installed) and the device the runs compute on (a CUDA device's name, else ``cpu``)."""
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    versions = {"python": platform.python_version(), "device": device}
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


def same_run(kept: Mapping[str, Any], config: Mapping[str, Any], overrides: Sequence[str]) -> bool:
    """Whether the ``kept`` record is the run of ``config`` made from ``overrides``: every
    dotted key the overrides set has the same value in both configurations (the library's
    defaults may have grown new keys since; what decides the numbers is the code, which the
    record keeps and a claim checks)."""
    theirs = kept.get("config")
    if not isinstance(theirs, Mapping):
        return False
    for item in overrides:
        key = item.split("=", 1)[0]
        if key in ("out_dir", "data.files"):  # where a run and its files lay is not what it is
            continue
        key = "method.name" if key == "method" else key
        a, b = _at(theirs, key), _at(config, key)
        if a is _MISSING or json.dumps(a, sort_keys=True) != json.dumps(b, sort_keys=True):
            return False
    return True


_MISSING = object()


def _at(doc: Mapping[str, Any], dotted: str) -> Any:
    value: Any = doc
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value
