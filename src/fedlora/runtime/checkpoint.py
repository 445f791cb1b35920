"""Round checkpoints: written atomically, verified on read, no pickle.

``checkpoints/round-NNNN/`` holds ``tensors.safetensors`` (server state ``state/<name>``,
client views ``view/<cid>/<name>``, this round's base merge ``merge/<layer>/L|R``) and
``meta.json`` (round, server meta, sha256 of the tensor file, and ``views``: each client's
id mapped to the client whose tensors hold its view). Clients that share one view object
(the driver's mirror gives clients alike one) store it once and share it again on read, so
a checkpoint of a thousand idle clients holds one view, not a thousand. The folder is written under a
temporary name and renamed, so a folder with the final name is complete unless tampered
with, which the hash detects.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from fedlora.errors import CheckpointError
from fedlora.methods.base import Factored, ServerState, Tensor

_NAME = re.compile(r"^round-(\d{4,})$")


@dataclass(frozen=True)
class Checkpoint:
    """Everything needed to continue after ``round``."""

    round: int
    state: ServerState
    views: dict[int, dict[str, Tensor]]
    merge: dict[str, Factored]
    extra: dict[str, Any]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write(root: Path, ckpt: Checkpoint) -> Path:
    """Write ``ckpt`` under ``root/round-NNNN`` atomically."""
    root.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, Tensor] = {}
    for name, t in ckpt.state.tensors.items():
        tensors[f"state/{name}"] = t.contiguous()
    owners: dict[int, int] = {}  # id(view) -> the first client holding it
    view_of: dict[str, int] = {}
    for cid, view in sorted(ckpt.views.items()):
        owner = owners.setdefault(id(view), cid)
        view_of[str(cid)] = owner
        if owner == cid:
            for name, t in view.items():
                tensors[f"view/{cid}/{name}"] = t.contiguous()
    for layer, (left, right) in ckpt.merge.items():
        tensors[f"merge/{layer}/L"] = left.contiguous()
        tensors[f"merge/{layer}/R"] = right.contiguous()
    tmp = Path(tempfile.mkdtemp(prefix=".round-", dir=root))
    tmp.chmod(0o755)
    save_file(tensors, str(tmp / "tensors.safetensors"))
    meta = {
        "round": ckpt.round,
        "state_round": ckpt.state.round,
        "state_meta": ckpt.state.meta,
        "views": view_of,
        "extra": ckpt.extra,
        "sha256": _sha256(tmp / "tensors.safetensors"),
    }
    with (tmp / "meta.json").open("w") as f:
        json.dump(meta, f, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    final = root / f"round-{ckpt.round:04d}"
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def rounds(root: Path) -> list[int]:
    """Rounds with a checkpoint folder (complete by construction), ascending."""
    if not root.is_dir():
        return []
    return sorted(int(m.group(1)) for p in root.iterdir() if (m := _NAME.match(p.name)))


def read(root: Path, round_: int) -> Checkpoint:
    """Read and verify the checkpoint of ``round_``."""
    folder = root / f"round-{round_:04d}"
    meta_path, st_path = folder / "meta.json", folder / "tensors.safetensors"
    if not meta_path.is_file() or not st_path.is_file():
        raise CheckpointError(f"checkpoint {folder} is incomplete (missing meta.json or tensors)")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"checkpoint {folder}/meta.json is corrupt: {exc}") from None
    if _sha256(st_path) != meta.get("sha256"):
        raise CheckpointError(f"checkpoint {folder} is corrupt: tensors.safetensors hash mismatch")
    try:
        tensors = load_file(str(st_path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"checkpoint {folder} is unreadable: {exc}") from None
    state_t: dict[str, Tensor] = {}
    # ``views`` maps each client to the client whose tensors hold its view (a plain list
    # of clients, each holding its own, in checkpoints written before views were shared).
    listed = meta["views"]
    view_of = (
        {int(c): int(o) for c, o in listed.items()}
        if isinstance(listed, dict)
        else {int(c): int(c) for c in listed}
    )
    if any(view_of.get(o) != o for o in view_of.values()):
        raise CheckpointError(f"checkpoint {folder}/meta.json: a view's owner holds none")
    views: dict[int, dict[str, Tensor]] = {o: {} for o in set(view_of.values())}
    merge_parts: dict[str, dict[str, Tensor]] = {}
    for key, t in tensors.items():
        kind, _, rest = key.partition("/")
        if kind == "state":
            state_t[rest] = t
        elif kind == "view":
            cid, _, name = rest.partition("/")
            if int(cid) not in views:
                raise CheckpointError(f"checkpoint {folder}: view tensor of unlisted {cid}")
            views[int(cid)][name] = t
        elif kind == "merge":
            layer, _, part = rest.rpartition("/")
            merge_parts.setdefault(layer, {})[part] = t
    merge = {layer: (p["L"], p["R"]) for layer, p in merge_parts.items()}
    state = ServerState(round=meta["state_round"], tensors=state_t, meta=meta["state_meta"])
    shared = {cid: views[owner] for cid, owner in view_of.items()}
    return Checkpoint(meta["round"], state, shared, merge, meta.get("extra", {}))
