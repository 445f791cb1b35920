"""WordNet 3.0 glosses from the Debian package ``wordnet-base`` (WordNet licence, free use).

A ``.deb`` is an ``ar`` archive whose ``data.tar.xz`` member holds the database under
``usr/share/wordnet``. For each part of speech, ``index.<pos>`` lists a lemma's synsets most
frequent sense first, with ``tagsense_cnt`` (how many of its senses occur in the sense-tagged
SemCor corpus); ``data.<pos>`` holds each synset at a byte offset, ending in ``| gloss``. A
word is kept if it is a plain lower-case word of at least three letters with at least one
tagged sense (so common English, not ``Canis_familiaris``), with the gloss of its first
sense, minus the quoted usage examples.
"""

from __future__ import annotations

import io
import re
import tarfile
from pathlib import Path

from fedlora.data.provision import Record, Source
from fedlora.errors import DataError

SOURCE = Source(
    client="apt",
    name="wordnet-base",
    version="1:3.0-37",
    sha256="61060d960f9ada8fa120872312eccd3ecebfbab8c4579e4f5a74e1cf67620752",
    size=6_467_132,
)
FORMAT_VERSION = 1  # bump when extract() output changes
PARTS = {"noun": "noun", "verb": "verb", "adj": "adjective", "adv": "adverb"}
DB_DIR = "usr/share/wordnet"

_WORD = re.compile(r"^[a-z]{3,}$")
_AR_MAGIC = b"!<arch>\n"


def ar_members(blob: bytes) -> dict[str, bytes]:
    """Split a Unix ``ar`` archive (the outer layer of a ``.deb``) into named members."""
    if not blob.startswith(_AR_MAGIC):
        raise DataError("not an ar archive (a .deb starts with '!<arch>')")
    members: dict[str, bytes] = {}
    pos = len(_AR_MAGIC)
    while pos + 60 <= len(blob):
        header = blob[pos : pos + 60]
        name = header[:16].decode("ascii").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        start = pos + 60
        members[name] = blob[start : start + size]
        pos = start + size + (size % 2)  # members are padded to an even offset
    return members


def parse_index_line(line: str) -> tuple[str, int, list[int]] | None:
    """Parse one ``index.<pos>`` line into (lemma, tagsense_cnt, synset offsets).

    Returns None for the licence header lines, which start with spaces.
    """
    if not line or line.startswith(" "):
        return None
    fields = line.split()
    pointer_count = int(fields[3])
    rest = fields[4 + pointer_count :]
    tagged = int(rest[1])
    return fields[0], tagged, [int(x) for x in rest[2:]]


def gloss_at(data: bytes, offset: int) -> str:
    """Return the definition part of the gloss of the synset at ``offset`` in ``data.<pos>``."""
    end = data.index(b"\n", offset)
    line = data[offset:end].decode("utf-8", errors="replace")
    _, _, gloss = line.partition(" | ")
    definition = gloss.split('; "')[0].strip()
    return definition.rstrip(";").strip()


def records_from_db(files: dict[str, bytes]) -> list[Record]:
    """Build records from the WordNet database files (``index.noun``, ``data.noun``, ...).

    Returns records with keys ``id`` (``<word>.<pos>``), ``word``, ``pos`` and ``gloss``.
    """
    records: list[Record] = []
    for short, pos in PARTS.items():
        index, data = files[f"index.{short}"], files[f"data.{short}"]
        for line in index.decode("utf-8", errors="replace").splitlines():
            parsed = parse_index_line(line)
            if parsed is None:
                continue
            lemma, tagged, offsets = parsed
            if tagged < 1 or not _WORD.match(lemma) or not offsets:
                continue
            gloss = gloss_at(data, offsets[0])
            if gloss:
                records.append({"id": f"{lemma}.{pos}", "word": lemma, "pos": pos, "gloss": gloss})
    return records


def extract(archive: Path) -> list[Record]:
    """Read the WordNet database out of the ``.deb`` and build the records."""
    members = ar_members(archive.read_bytes())
    inner = next((name for name in members if name.startswith("data.tar")), None)
    if inner is None or inner.endswith(".zst"):
        raise DataError(f"{archive.name}: no readable data.tar member (found {sorted(members)})")
    wanted = {f"{kind}.{short}" for short in PARTS for kind in ("index", "data")}
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(members[inner]), mode="r:*") as tar:
            for member in tar:
                name = member.name.removeprefix("./")
                base = name.rsplit("/", 1)[-1]
                if member.isfile() and name.startswith(DB_DIR) and base in wanted:
                    handle = tar.extractfile(member)
                    if handle is not None:
                        files[base] = handle.read()
    except (tarfile.TarError, OSError) as exc:
        raise DataError(f"{archive.name}: cannot read {inner}: {exc}") from exc
    missing = wanted - files.keys()
    if missing:
        raise DataError(f"{archive.name}: WordNet files missing: {sorted(missing)}")
    return records_from_db(files)
