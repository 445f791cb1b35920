"""Round checkpoints: written atomically and durably, verified on read, no pickle.

``checkpoints/round-NNNN/`` holds ``tensors.safetensors`` (server state ``state/<name>``,
client views ``view/<cid>/<name>``) and ``meta.json`` (round, server meta, sha256 of the
tensor file, ``views``: each client's id mapped to the client whose tensors hold its view,
and ``merges``: the sha256 of every round's base merge so far). Clients that share one view
object (the driver's mirror gives clients alike one) store it once and share it again on
read. Only the last :data:`KEEP` round folders are kept.

A base merge is needed for every round (they are replayed in order onto a fresh base), so
each round's is its own file, ``checkpoints/merges/round-NNNN.safetensors``, kept for the
whole run and checked against the hashes the round's meta lists.

Every file is written under a temporary name, flushed to disk (``fsync``), renamed, and its
folder synced, so a crash leaves either the previous checkpoint or the new one, never half
of one; anything else a crash or a hand can do to a checkpoint, the hashes detect.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from fedlora.errors import CheckpointError
from fedlora.files import follow_umask
from fedlora.methods.base import Factored, ServerState, Tensor

_NAME = re.compile(r"^round-(\d{4,})$")
KEEP = 2
"""Round checkpoints kept: the newest, and one to fall back on if it cannot be read."""
META_KEYS = ("round", "state_round", "state_meta", "views", "sha256", "merges", "extra")


@dataclass(frozen=True)
class Checkpoint:
    """Everything needed to continue after ``round``: ``merges`` holds every round's base
    merge (rounds 1..``round``) when read; when written, the new round's is its last."""

    round: int
    state: ServerState
    views: dict[int, dict[str, Tensor]]
    merges: list[dict[str, Factored]]
    extra: dict[str, Any] = field(default_factory=dict)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _sync(path: Path) -> None:
    """Flush a file, or a folder's entries, to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _save(tensors: dict[str, Tensor], path: Path) -> str:
    """Write ``tensors`` durably at ``path`` (under a temporary name first); its sha256."""
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: t.contiguous() for k, t in tensors.items()}, str(tmp))
    follow_umask(tmp)  # safetensors creates its files 0600
    _sync(tmp)
    digest = _sha256(tmp)
    os.replace(tmp, path)
    _sync(path.parent)
    return digest


def _merge_path(root: Path, round_: int) -> Path:
    return root / "merges" / f"round-{round_:04d}.safetensors"


def write(root: Path, ckpt: Checkpoint) -> Path:
    """Write round ``ckpt.round`` (its merge is ``ckpt.merges[-1]``) and keep the last
    :data:`KEEP` round folders."""
    (root / "merges").mkdir(parents=True, exist_ok=True)
    merge = ckpt.merges[-1] if ckpt.merges else {}
    parts = {f"{layer}/L": left for layer, (left, _) in merge.items()}
    parts.update({f"{layer}/R": right for layer, (_, right) in merge.items()})
    merge_hash = _save(parts, _merge_path(root, ckpt.round))
    previous = _previous_merges(root, ckpt.round)
    tensors: dict[str, Tensor] = {f"state/{name}": t for name, t in ckpt.state.tensors.items()}
    owners: dict[int, int] = {}  # id(view) -> the first client holding it
    view_of: dict[str, int] = {}
    for cid, view in sorted(ckpt.views.items()):
        owner = owners.setdefault(id(view), cid)
        view_of[str(cid)] = owner
        if owner == cid:
            tensors.update({f"view/{cid}/{name}": t for name, t in view.items()})
    tmp = Path(tempfile.mkdtemp(prefix=".round-", dir=root))
    meta = {
        "round": ckpt.round,
        "state_round": ckpt.state.round,
        "state_meta": ckpt.state.meta,
        "views": view_of,
        "extra": ckpt.extra,
        "sha256": _save(tensors, tmp / "tensors.safetensors"),
        "merges": [*previous, merge_hash],
    }
    with (tmp / "meta.json").open("w") as f:
        json.dump(meta, f, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    follow_umask(tmp)
    _sync(tmp)
    final = root / f"round-{ckpt.round:04d}"
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _sync(root)
    for old in rounds(root)[:-KEEP]:
        shutil.rmtree(root / f"round-{old:04d}", ignore_errors=True)
    return final


def _previous_merges(root: Path, round_: int) -> list[str]:
    """The merge hashes of rounds before ``round_``, as round ``round_ - 1``'s meta lists them."""
    if round_ <= 1:
        return []
    return list(_meta(root / f"round-{round_ - 1:04d}")["merges"])


def rounds(root: Path) -> list[int]:
    """Rounds with a checkpoint folder, ascending."""
    if not root.is_dir():
        return []
    return sorted(int(m.group(1)) for p in root.iterdir() if (m := _NAME.match(p.name)))


def _meta(folder: Path) -> dict[str, Any]:
    meta_path = folder / "meta.json"
    if not meta_path.is_file() or not (folder / "tensors.safetensors").is_file():
        raise CheckpointError(f"checkpoint {folder} is incomplete (missing meta.json or tensors)")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint {folder}/meta.json is corrupt: {exc}") from None
    missing = [k for k in META_KEYS if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise CheckpointError(f"checkpoint {folder}/meta.json lacks {', '.join(missing)}")
    return meta  # type: ignore[no-any-return]


def _load(path: Path, digest: Any, what: str) -> dict[str, Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{what} {path} is missing")
    if _sha256(path) != digest:
        raise CheckpointError(f"{what} {path} is corrupt: hash mismatch")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{what} {path} is unreadable: {exc}") from None


def _views(folder: Path, meta: dict[str, Any], tensors: dict[str, Tensor]) -> dict[int, Any]:
    try:
        view_of = {int(c): int(o) for c, o in meta["views"].items()}
    except (AttributeError, TypeError, ValueError):
        raise CheckpointError(f"checkpoint {folder}/meta.json: views is malformed") from None
    if any(view_of.get(o) != o for o in view_of.values()):
        raise CheckpointError(f"checkpoint {folder}/meta.json: a view's owner holds none")
    views: dict[int, dict[str, Tensor]] = {o: {} for o in set(view_of.values())}
    for key, t in tensors.items():
        cid, _, name = key.partition("/")
        if not cid.isdigit() or int(cid) not in views:
            raise CheckpointError(f"checkpoint {folder}: view tensor of unlisted client {cid}")
        views[int(cid)][name] = t
    return {cid: views[owner] for cid, owner in view_of.items()}


def read(root: Path, round_: int) -> Checkpoint:
    """Read and verify the checkpoint of ``round_`` and every merge it lists."""
    folder = root / f"round-{round_:04d}"
    meta = _meta(folder)
    tensors = _load(folder / "tensors.safetensors", meta["sha256"], "checkpoint tensors")
    if meta["round"] != round_ or len(meta["merges"]) != round_:
        raise CheckpointError(f"checkpoint {folder}/meta.json is not that of round {round_}")
    state_t = {k.partition("/")[2]: t for k, t in tensors.items() if k.startswith("state/")}
    view_t = {k.partition("/")[2]: t for k, t in tensors.items() if k.startswith("view/")}
    if len(state_t) + len(view_t) != len(tensors):
        raise CheckpointError(f"checkpoint {folder}: a tensor is neither state nor view")
    merges: list[dict[str, Factored]] = []
    for r, digest in enumerate(meta["merges"], start=1):
        parts = _load(_merge_path(root, r), digest, "base merge")
        layers = {key.rpartition("/")[0] for key in parts}
        try:
            merges.append({layer: (parts[f"{layer}/L"], parts[f"{layer}/R"]) for layer in layers})
        except KeyError:
            raise CheckpointError(f"base merge of round {r} has a half merge") from None
    state = ServerState(round=meta["state_round"], tensors=state_t, meta=meta["state_meta"])
    return Checkpoint(meta["round"], state, _views(folder, meta, view_t), merges, meta["extra"])
