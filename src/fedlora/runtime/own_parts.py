"""A client's own parts, kept on its side between rounds (``Method.keeps_own_parts``).

What a client keeps and never sends (FedSA-LoRA's ``B``) is written after each round it trains
to ``round-NNNN.safetensors`` in its own folder: in-process under the run folder
(``clients/run-<token>/client-<k>/``), on Flower under the SuperNode's ``state-dir`` with the
same layout, so it survives the node's process, a restart and a resumed run. The token names
the run (``run-token`` in the run folder, kept across resumes), so two runs never read each
other's parts.

A resumed run replays rounds after its last checkpoint, so a client may already hold a part
from a round about to be replayed: :meth:`OwnParts.before` reads the newest part strictly
before the round being trained, and the newest :data:`KEEP` are kept. Files are written to a
temporary name, flushed and renamed, so a crash never leaves a half-written part.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

from safetensors.torch import load_file, save_file

from fedlora.errors import CheckpointError
from fedlora.files import follow_umask
from fedlora.methods.base import Tensor

KEEP = 4
"""Parts kept per client: enough for a resume that falls back past an unusable checkpoint."""

_NAME = re.compile(r"round-(\d{4,})\.safetensors")
_TOKEN = re.compile(r"[0-9a-f]{16,64}")


def run_token(out: Path, resume: bool) -> str:
    """The run's token: read from ``out/run-token`` when resuming (or when present), else
    created there."""
    path = out / "run-token"
    if path.exists():
        token = path.read_text().strip()
        if not _TOKEN.fullmatch(token):
            raise CheckpointError(f"{path} does not hold a run token")
        return token
    if resume:
        raise CheckpointError(f"{path} is missing: this run's clients' own parts cannot be found")
    token = secrets.token_hex(16)
    path.write_text(token + "\n")
    return token


def check_token(token: str) -> str:
    """``token`` if it is a well-formed run token (it becomes part of a path on the client)."""
    if not _TOKEN.fullmatch(token):
        raise ValueError(f"malformed run token {token[:80]!r}")
    return token


def client_folder(root: Path, token: str, cid: int) -> Path:
    """Where client ``cid`` of run ``token`` keeps its own parts under ``root``."""
    return root / f"run-{check_token(token)}" / f"client-{int(cid)}"


class OwnParts:
    """One client's own parts, one file per round it trained, in ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _rounds(self) -> list[int]:
        if not self.folder.is_dir():
            return []
        found = (_NAME.fullmatch(p.name) for p in self.folder.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def save(self, round_: int, tensors: dict[str, Tensor]) -> None:
        """Keep ``tensors`` as this client's part after ``round_``."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"round-{round_:04d}.safetensors"
        tmp = path.with_suffix(".tmp")
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
        follow_umask(tmp)
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        tmp.replace(path)
        for old in self._rounds()[:-KEEP]:
            (self.folder / f"round-{old:04d}.safetensors").unlink(missing_ok=True)

    def before(self, round_: int) -> dict[str, Tensor] | None:
        """The newest part kept before ``round_`` (None: the client has not trained yet)."""
        earlier = [r for r in self._rounds() if r < round_]
        if not earlier:
            return None
        path = self.folder / f"round-{earlier[-1]:04d}.safetensors"
        try:
            return load_file(str(path))
        except Exception as exc:
            raise CheckpointError(f"{path} cannot be read: {exc}") from None
