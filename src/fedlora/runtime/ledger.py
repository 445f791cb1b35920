"""The privacy ledger: every noisy release of a DP run, written before it can reach a client.

``privacy-ledger.jsonl`` in the run folder holds one :class:`~fedlora.runtime.accounting.Release`
per line, appended and flushed to disk (``fsync``) as soon as a round's noisy aggregate is
committed, before the evaluation that sends it to clients and before the next round's
broadcast. The ledger is never cut back: a run killed after a release and resumed from an
earlier checkpoint redoes that round with fresh noise, and both releases are counted. The
checkpoint keeps the releases up to its round too; on resume the longer of the two counts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from fedlora.errors import CheckpointError
from fedlora.runtime.accounting import Release

LEDGER = "privacy-ledger.jsonl"


def append(path: Path, release: Release) -> None:
    """Add ``release`` to the ledger at ``path``, durably."""
    with path.open("a") as f:
        f.write(json.dumps(release.to_json(), sort_keys=True, allow_nan=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read(path: Path) -> list[Release]:
    """Every release in the ledger (none if there is no ledger); a line cut by a crash while
    it was being written is the last and is dropped, any other bad line refuses."""
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    out = []
    for i, line in enumerate(lines):
        try:
            out.append(Release.from_json(json.loads(line)))
        except (ValueError, KeyError, TypeError) as exc:
            if i == len(lines) - 1:
                break
            raise CheckpointError(f"{path}: line {i + 1} is not a release ({exc})") from None
    return out


def releases_at_resume(path: Path, checkpointed: list[Release]) -> list[Release]:
    """The releases a resumed run has made: the ledger's, or the checkpoint's when the ledger
    holds fewer (it was lost); the checkpoint never holds releases the ledger does not."""
    written = read(path)
    return written if len(written) >= len(checkpointed) else list(checkpointed)
