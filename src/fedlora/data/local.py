"""Any local dataset, read offline with Hugging Face ``datasets``: JSON, JSONL, Parquet, CSV
or a ``save_to_disk`` folder, turned into rows (plain dicts) with one clear error for what
cannot be read.

Nothing here reaches a hub: the packaged ``json``/``csv``/``parquet`` builders read local
files, and ``load_from_disk`` a local folder. A row-level problem in a JSON Lines file (bad
JSON, a row that is not an object) is named by its line, found by a strict read before the
Arrow reader sees the file.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from fedlora.data.cache import cache_root
from fedlora.errors import DataError

log = logging.getLogger(__name__)

Row = dict[str, Any]
SUFFIXES = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


def kind_of(path: Path) -> str:
    """``json``, ``parquet``, ``csv`` or ``disk`` (a ``save_to_disk`` folder)."""
    if path.is_dir():
        if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
            return "disk"
        raise DataError(f"{path}: a folder, but not one written by datasets' save_to_disk")
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DataError(
            f"{path}: unknown data file type {path.suffix!r}; use .json, .jsonl, .parquet, "
            ".csv or a save_to_disk folder"
        )
    return kind


def _json_rows_strictly(path: Path) -> list[Row]:
    """A JSON array of objects, or JSON Lines, read line by line to name a bad row."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad_row = raw[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}: row {bad_row}: not valid UTF-8") from None
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
        rows = data
        where = "item"
    else:
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}: row {number}: not valid JSON ({exc.msg})") from None
            if not isinstance(rows[-1], dict):
                raise DataError(f"{path}: row {number}: expected a JSON object")
        return rows
    for i, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise DataError(f"{path}: {where} {i}: expected a JSON object")
    return list(rows)


def read_rows(path: str | os.PathLike[str]) -> list[Row]:
    """Every row of the local dataset at ``path``, in file order.

    Raises
    ------
    DataError
        Naming the file (and row, for JSON Lines) when it is missing, empty, of an unknown
        type or unreadable.
    """
    file = Path(path).expanduser()
    if not file.exists():
        raise DataError(f"{file}: file not found")
    kind = kind_of(file)
    if kind != "disk" and file.stat().st_size == 0:
        raise DataError(f"{file}: the file is empty")
    if kind == "json":
        # A strict line-by-line read first: it names a bad row (datasets' Arrow reader
        # would log a traceback and name none) and refuses rows that reader lets through
        # (a non-object array item, invalid UTF-8); the rows used are datasets' own.
        _json_rows_strictly(file)
    rows = _with_datasets(file, kind)
    if not rows:
        raise DataError(f"{file}: the dataset has no rows")
    return rows


def datasets_cache() -> Path:
    """Where the ``datasets`` library may write while reading a user's file: under fedlora's
    cache (``FEDLORA_CACHE``), never ``~/.cache/huggingface``. Each read works in a folder of
    its own there and removes it: the rows are kept in memory, and an Arrow copy of every
    version of every file read would otherwise pile up."""
    return cache_root() / "datasets"


def _with_datasets(file: Path, kind: str) -> list[Row]:
    import datasets

    datasets.disable_progress_bars()
    try:
        if kind == "disk":
            loaded = datasets.load_from_disk(str(file))
            if isinstance(loaded, datasets.DatasetDict):
                if "train" not in loaded:
                    raise DataError(f"{file}: a DatasetDict without a 'train' split")
                loaded = loaded["train"]
        else:
            # The builder writes an Arrow copy, lock and info files to its cache folder: a
            # scratch folder under fedlora's, gone once the rows are in memory.
            read = {
                "json": datasets.Dataset.from_json,
                "csv": datasets.Dataset.from_csv,
                "parquet": datasets.Dataset.from_parquet,
            }[kind]
            scratch = datasets_cache()
            scratch.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix="read-", dir=scratch) as work:
                loaded = read(str(file), keep_in_memory=True, cache_dir=work)
    except DataError:
        raise
    except Exception as exc:  # pyarrow and datasets raise many types for a bad file
        raise DataError(f"{file}: cannot read it as {kind}: {type(exc).__name__}: {exc}") from None
    return [dict(row) for row in loaded]
