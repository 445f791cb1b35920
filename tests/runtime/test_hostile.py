"""A dishonest participant on Flower (the local grid: real ClientApps, real messages): node 1
lies or breaks the protocol in one way per test. Each test asserts that the server survives,
that the reason is in metrics.jsonl and, where the attacker is dropped, that the final
adapter equals that of an honest run without it (in-process, its training failing in the
same rounds: the two runtimes are bit-identical)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.app import Context, Message, RecordDict

from fedlora import config
from fedlora.ops.seeds import Stream, client_seed
from fedlora.runtime import simulation, steps
from fedlora.runtime.flower.server import ServerOptions, serve
from fedlora.wire import decode, encode
from tests.conftest import tiny_overrides
from tests.runtime.adapters import distance, products
from tests.runtime.local_grid import LocalGrid

BAD = 1
ROUNDS = 2


def records(run: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def same_adapter(a: Path, b: Path) -> bool:
    pa, pb = products(a), products(b)
    return pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)


def cfg_of(out: Path, files: list[str], *extra: str) -> config.RunConfig:
    return config.load(None, tiny_overrides(out, files) + list(extra))


def honest_without_bad(
    out: Path, files: list[str], rounds: set[int], monkeypatch: pytest.MonkeyPatch, *extra: str
) -> Path:
    """The in-process run in which client 1's training fails in ``rounds``."""
    cfg = cfg_of(out, files, *extra)
    bad_seeds = {client_seed(cfg.seed, Stream.TRAIN, r, BAD) for r in rounds}
    real = steps.train_local
    with monkeypatch.context() as m:

        def failing(*args: Any, **kw: Any) -> Any:
            if args[6].seed in bad_seeds:
                raise RuntimeError("left out")
            return real(*args, **kw)

        m.setattr(steps, "train_local", failing)
        simulation.run(cfg)
    return out


def attacked(
    out: Path,
    files: list[str],
    tamper: Callable[[Message, Message, Context], Message | None],
    *extra: str,
    options: ServerOptions | None = None,
) -> list[dict[str, Any]]:
    grid = LocalGrid(files)

    def only_bad(msg: Message, reply: Message, ctx: Context) -> Message | None:
        if ctx.node_config["partition-id"] != BAD:
            return reply
        return tamper(msg, reply, ctx)

    grid.tamper = only_bad
    serve(grid, cfg_of(out, files, *extra), options=options)
    return records(out)


def train_reply(edit: Callable[[Any], None]) -> Callable[[Message, Message, Context], Message]:
    """A tamper that edits the fedlora record of every train reply."""

    def tamper(msg: Message, reply: Message, ctx: Context) -> Message:
        if msg.metadata.message_type == "train" and not reply.has_error():
            edit(reply.content.config_records["fedlora"])
        return reply

    return tamper


def reupload(edit: Callable[[dict[str, Any]], dict[str, Any]]) -> Callable[[Any], None]:
    """Edit the decoded upload of a train reply and put it back on the wire."""

    def change(rec: Any) -> None:
        if "upload" in rec:
            rec["upload"] = encode(edit(decode(rec["upload"])))

    return change


# --------------------------------------------------------------------------- weights


def test_a_forged_sample_count_is_capped(
    tmp_path: Path, client_files: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the honest run, and node 1 reporting 10^15 training examples
    honest = tmp_path / "honest"
    serve(LocalGrid(client_files), cfg_of(honest, client_files))

    def forge(rec: Any) -> None:
        rec["n_samples"] = 10**15

    # Execute: with the cap (the default) and without it
    capped = attacked(tmp_path / "capped", client_files, train_reply(forge))
    attacked(tmp_path / "free", client_files, train_reply(forge), "federation.max_weight_ratio=0")

    # Assert: the count is capped and recorded; the update stays near the honest one
    for rec in capped[1:]:
        assert "reported 1000000000000000" in rec["weight_capped"]["1"]
        assert rec["accepted"] == [0, 1, 2]
    near, far = distance(tmp_path / "capped", honest), distance(tmp_path / "free", honest)
    assert near < 0.6 * far, (near, far)


# --------------------------------------------------------------------------- changes


def _inflate(payload: dict[str, Any]) -> dict[str, Any]:
    return {k: v * 1e3 if k.endswith(".B") else v for k, v in payload.items()}


def test_an_oversized_change_is_clipped_or_refused(
    tmp_path: Path, client_files: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    without = honest_without_bad(tmp_path / "without", client_files, {1, 2}, monkeypatch)

    clipped = attacked(tmp_path / "clipped", client_files, train_reply(reupload(_inflate)))
    refused = attacked(
        tmp_path / "refused",
        client_files,
        train_reply(reupload(_inflate)),
        "federation.clip_action=refuse",
    )

    for rec in clipped[1:]:
        assert rec["clipped"]["1"]["scale"] < 0.1 and rec["accepted"] == [0, 1, 2]
    for rec in refused[1:]:
        assert "above the round's bound" in rec["dropped"]["1"] and rec["accepted"] == [0, 2]
    assert same_adapter(tmp_path / "refused", without)


# --------------------------------------------------------------------------- identity


def _keypair() -> tuple[str, bytes]:
    key = ec.generate_private_key(ec.SECP384R1())
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    return public.decode(), private


def test_a_second_claim_of_a_client_id_serves_neither_node(
    tmp_path: Path, client_files: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: an impostor node also claims client 1 (with data of its own)
    without = honest_without_bad(tmp_path / "without", client_files, {1, 2}, monkeypatch)
    impostor = {"partition-id": BAD, "data-file": client_files[0]}
    grid = LocalGrid(client_files, extra=[impostor])

    # Execute
    serve(grid, cfg_of(tmp_path / "flower", client_files))

    # Assert: both claimants are refused and recorded; client 1 is served by nobody
    recs = records(tmp_path / "flower")
    assert set(recs[1]["nodes_refused"]) == {"1001", "1003"}
    assert all("no SuperNode serves" in r["dropped"]["1"] for r in recs[1:])
    assert same_adapter(tmp_path / "flower", without)


def test_with_node_keys_only_the_key_holder_serves_its_client(
    tmp_path: Path, client_files: list[str]
) -> None:
    # Prepare: a key per client, each honest node holding its own; the impostor its own key
    pairs = [_keypair() for _ in range(4)]
    paths = []
    for k, (_, private) in enumerate(pairs):
        paths.append(str(tmp_path / f"node{k}.key"))
        Path(paths[-1]).write_bytes(private)
    keys = json.dumps([public for public, _ in pairs[:3]])
    impostor = {"partition-id": BAD, "data-file": client_files[BAD], "auth-key": paths[3]}
    honest = tmp_path / "honest"
    serve(LocalGrid(client_files), cfg_of(honest, client_files))
    grid = LocalGrid(client_files, extra=[impostor], auth_keys=paths[:3])

    # Execute
    serve(grid, cfg_of(tmp_path / "flower", client_files, f"federation.node_keys={keys}"))

    # Assert: the impostor is refused and recorded; the run is the honest one
    recs = records(tmp_path / "flower")
    assert "without signing with client 1's key" in recs[1]["nodes_refused"]["1003"]
    assert all(r["accepted"] == [0, 1, 2] for r in recs[1:])
    assert same_adapter(tmp_path / "flower", honest)


def test_with_node_keys_an_altered_reply_is_refused(
    tmp_path: Path, client_files: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: node 1's signed replies are altered on the way (a forged count)
    pairs = [_keypair() for _ in range(3)]
    paths = []
    for k, (_, private) in enumerate(pairs):
        paths.append(str(tmp_path / f"node{k}.key"))
        Path(paths[-1]).write_bytes(private)
    keys = json.dumps([public for public, _ in pairs])
    without = honest_without_bad(tmp_path / "without", client_files, {1, 2}, monkeypatch)
    grid = LocalGrid(client_files, auth_keys=paths)

    def forge(msg: Message, reply: Message, ctx: Context) -> Message:
        if ctx.node_config["partition-id"] == BAD and msg.metadata.message_type == "train":
            reply.content.config_records["fedlora"]["n_samples"] = 10**6
        return reply

    grid.tamper = forge

    # Execute
    serve(grid, cfg_of(tmp_path / "flower", client_files, f"federation.node_keys={keys}"))

    # Assert
    recs = records(tmp_path / "flower")
    assert all("not signed with client 1's key" in r["dropped"]["1"] for r in recs[1:])
    assert same_adapter(tmp_path / "flower", without)


# --------------------------------------------------------------------------- replay


def test_a_replayed_reply_is_dropped(
    tmp_path: Path, client_files: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: in round 2, node 1's reply is its round-1 reply, relabelled as round 2
    without = honest_without_bad(tmp_path / "without", client_files, {2}, monkeypatch)
    kept: dict[str, RecordDict] = {}

    def replay(msg: Message, reply: Message, ctx: Context) -> Message:
        if msg.metadata.message_type != "train":
            return reply
        if "first" not in kept:
            kept["first"] = reply.content
            return reply
        stale = kept["first"]
        stale.config_records["fedlora"]["round"] = 2
        return Message(stale, reply_to=msg)

    # Execute
    recs = attacked(tmp_path / "flower", client_files, replay)

    # Assert
    assert recs[1]["accepted"] == [0, 1, 2]
    assert "does not echo this round's nonce" in recs[2]["dropped"]["1"]
    assert same_adapter(tmp_path / "flower", without)


# --------------------------------------------------------------------------- parsing


NESTED = "[" * 30_000 + "]" * 30_000  # under the length limit: refused for its depth


def test_deeply_nested_json_drops_the_reply(
    tmp_path: Path, client_files: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    without = honest_without_bad(tmp_path / "without", client_files, {1, 2}, monkeypatch)

    def nest(rec: Any) -> None:
        rec["upload_report"] = NESTED

    recs = attacked(tmp_path / "flower", client_files, train_reply(nest))

    assert all("nests deeper" in r["dropped"]["1"] for r in recs[1:])
    assert same_adapter(tmp_path / "flower", without)


def test_deeply_nested_scores_drop_the_evaluation_only(
    tmp_path: Path, client_files: list[str]
) -> None:
    honest = tmp_path / "honest"
    serve(LocalGrid(client_files), cfg_of(honest, client_files))

    def nest(msg: Message, reply: Message, ctx: Context) -> Message:
        if msg.metadata.message_type == "evaluate":
            reply.content.config_records["fedlora"]["scores"] = NESTED
        return reply

    recs = attacked(tmp_path / "flower", client_files, nest)

    assert all("nests deeper" in r["eval_dropped"]["1"] for r in recs)
    assert all("client1" not in r["eval"] for r in recs)
    assert same_adapter(tmp_path / "flower", honest)


def _bomb(payload: dict[str, Any]) -> bytes:
    """Every expected tensor as a sparse entry whose Rice parameter is 31."""
    from fedlora.wire import container as ct

    tensors: dict[str, Any] = {ct.VALUES_KEY: []}
    description = {}
    for name, value in sorted(payload.items()):
        numel = math.prod(value.shape)
        tensors[ct.VALUES_KEY].append(torch.ones(numel))
        tensors[ct.positions_key(name)] = torch.zeros(numel * 4, dtype=torch.uint8)
        description[name] = {
            "kind": "sparse",
            "shape": list(value.shape),
            "dtype": "float32",
            "nnz": numel,
            "positions": {"encoding": "rice", "param": 31},
        }
    return ct.write(tensors, description)


def test_a_position_code_bomb_drops_the_upload(
    tmp_path: Path, client_files: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # FedSRD: its uploads are changes, which may travel sparse (a sparse entry of a whole
    # factor is refused before its positions are read)
    fedsrd = "method=fedsrd"
    without = honest_without_bad(tmp_path / "without", client_files, {1, 2}, monkeypatch, fedsrd)

    def bomb(rec: Any) -> None:
        if "upload" in rec:
            rec["upload"] = _bomb(decode(rec["upload"]))

    recs = attacked(tmp_path / "flower", client_files, train_reply(bomb), fedsrd)

    assert all("Rice parameter 31 outside" in r["dropped"]["1"] for r in recs[1:])
    assert same_adapter(tmp_path / "flower", without)


def test_an_oversized_reply_is_refused_unread(
    tmp_path: Path, client_files: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    without = honest_without_bad(
        tmp_path / "without", client_files, {1, 2}, monkeypatch, "federation.max_reply_mb=1"
    )

    def pad(rec: Any) -> None:
        rec["padding"] = b"\x00" * (2 << 20)

    recs = attacked(
        tmp_path / "flower", client_files, train_reply(pad), "federation.max_reply_mb=1"
    )

    assert all("above the limit of 1048576" in r["dropped"]["1"] for r in recs[1:])
    assert same_adapter(tmp_path / "flower", without)


def test_a_silent_node_is_dropped_at_the_deadline(
    tmp_path: Path, client_files: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    without = honest_without_bad(tmp_path / "without", client_files, {1, 2}, monkeypatch)

    def silent(msg: Message, reply: Message, ctx: Context) -> Message | None:
        return None if msg.metadata.message_type == "train" else reply

    recs = attacked(
        tmp_path / "flower", client_files, silent, options=ServerOptions(round_timeout=1.0)
    )

    assert all("no reply within round-timeout" in r["dropped"]["1"] for r in recs[1:])
    assert same_adapter(tmp_path / "flower", without)


def test_a_nan_upload_is_dropped(
    tmp_path: Path, client_files: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    without = honest_without_bad(tmp_path / "without", client_files, {1, 2}, monkeypatch)

    def poison(payload: dict[str, Any]) -> dict[str, Any]:
        name = sorted(payload)[0]
        bad = payload[name].clone()
        bad.view(-1)[0] = float("nan")
        return {**payload, name: bad}

    recs = attacked(tmp_path / "flower", client_files, train_reply(reupload(poison)))

    assert all("non-finite" in r["dropped"]["1"] for r in recs[1:])
    assert same_adapter(tmp_path / "flower", without)


# --------------------------------------------------------------------------- leaks


def test_methods_that_broadcast_individual_updates_are_refused_on_flower(
    tmp_path: Path, client_files: list[str]
) -> None:
    from fedlora.errors import ConfigError

    for extra in (["method=flora"], ["method=fedex", "method.fedex.compress=false"]):
        with pytest.raises(ConfigError, match="allow_individual_updates"):
            serve(LocalGrid(client_files), cfg_of(tmp_path / extra[-1], client_files, *extra))
    with pytest.raises(ConfigError, match="one client per round"):
        serve(
            LocalGrid(client_files),
            cfg_of(tmp_path / "one", client_files, "federation.clients_per_round=0.2"),
        )


def test_a_round_with_one_valid_upload_is_skipped_on_flower(
    tmp_path: Path, client_files: list[str]
) -> None:
    serve(LocalGrid(client_files, dead={1, 2}), cfg_of(tmp_path / "flower", client_files))

    recs = records(tmp_path / "flower")
    assert all(r["skipped"] and "fewer than the 2 required" in r["skip_reason"] for r in recs[1:])
