"""The Flower ServerApp/ClientApp over an in-process Grid give the in-process runtime's
results bit for bit: same adapter, same bytes per client, same records; clients that miss a
round, restart or fail are dropped for that round and re-synchronised."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.app import Context, Message, RecordDict
from safetensors.torch import load_file

from fedlora import config
from fedlora.errors import PayloadError
from fedlora.methods.registry import names
from fedlora.ops.seeds import Stream, client_seed
from fedlora.runtime import simulation, steps
from fedlora.runtime.flower import client_app
from fedlora.runtime.flower.protocol import (
    Instruction,
    Memory,
    config_for_nodes,
    instruction_content,
    pack_memory,
    read_instruction,
    read_report,
    report_content,
    unpack_memory,
)
from fedlora.runtime.flower.server import serve
from fedlora.runtime.flower.server_app import decode_config, encode_config, settings
from fedlora.runtime.outcome import ClientOutcome, Transfer
from tests.conftest import tiny_overrides
from tests.runtime.local_grid import LocalGrid

TIMING = {
    "server_seconds",
    "train_seconds",
    "client_overhead_seconds",
    "round_seconds",
    "eval_seconds",
}
TRANSPORT = "transport_bytes"
"""What the runtime itself moved (Flower adds config and re-sync blobs): checked on its own."""


def _records(run: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _adapter(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


def _strip(rec: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in rec.items() if k not in TIMING and k != TRANSPORT}


def _pair(tmp: Path, files: list[str], *extra: str) -> tuple[config.RunConfig, config.RunConfig]:
    base = tiny_overrides(tmp / "sim", files) + list(extra)
    sim = config.load(None, base)
    flw = config.load(None, tiny_overrides(tmp / "flower", files) + list(extra))
    return sim, flw


# --------------------------------------------------------------------------- message format


def test_memory_round_trips_bit_exactly_with_none_view_and_empty_merges() -> None:
    # Prepare: odd dtypes, a merge-less round, and the None-vs-empty view distinction
    gen = torch.Generator().manual_seed(0)
    view = {
        "a.b": torch.randn(4, 16, generator=gen, dtype=torch.float64),
        "c": torch.randn(3, generator=gen).to(torch.bfloat16),
    }
    merge = {"layers.0.q": (torch.randn(16, 2, generator=gen), torch.randn(2, 16, generator=gen))}
    memories = [Memory(0, None, ()), Memory(2, {}, ({}, merge)), Memory(5, view, (merge, {}))]

    # Execute
    back = [unpack_memory(pack_memory(m)) for m in memories]

    # Assert
    for m, b in zip(memories, back, strict=True):
        assert b.round == m.round and (b.view is None) == (m.view is None)
        assert set(b.view or {}) == set(m.view or {})
        for name, t in (m.view or {}).items():
            assert b.view is not None and b.view[name].dtype == t.dtype
            assert torch.equal(b.view[name], t)
        assert len(b.merges) == len(m.merges)
        for mb, mm in zip(b.merges, m.merges, strict=True):
            assert set(mb) == set(mm)
            assert all(torch.equal(mb[k][i], mm[k][i]) for k in mm for i in (0, 1))


@pytest.mark.parametrize("cut", [3, 20, -1])
def test_corrupt_memory_is_refused(cut: int) -> None:
    blob = pack_memory(Memory(1, {"x": torch.ones(4, 4)}, ()))

    with pytest.raises(PayloadError):
        unpack_memory(blob[:cut])


def test_instruction_and_report_round_trip() -> None:
    ins = Instruction(
        round=3, cid=1, train=True, config='{"seed": 1}', broadcast=b"\x00\x01", sync=b"memory"
    )
    rep = ClientOutcome(
        cid=1,
        round=3,
        # what an upload holds is the server's to count when it decodes it, not the node's
        upload=Transfer(b"\xff" * 7, 0, {}),
        n_samples=9,
        train_loss=0.5,
        tokens=40,
        train_seconds=1.5,
        overhead_seconds=0.25,
        nonce="n1",
    )

    assert read_instruction(instruction_content(ins)) == ins
    assert read_report(report_content(rep)) == rep
    assert read_instruction(instruction_content(Instruction(1, 0, False, "{}", b""))).sync is None


def test_run_config_carries_the_whole_config(tmp_path: Path, client_files: list[str]) -> None:
    cfg = config.load(
        None, [*tiny_overrides(tmp_path, client_files), "method=fedsrd", "method.fedsrd.p_down=0.5"]
    )
    toml = tmp_path / "run.toml"
    toml.write_text('seed = 3\n[method]\nname = "florist"\n')

    from_b64, resume, opts = settings(
        {"fedlora-config": encode_config(cfg), "resume": True, "round-timeout": 12.5}
    )
    from_file, _, _ = settings({"config-file": str(toml), "overrides": "federation.rounds=4"})

    assert from_b64 == cfg and decode_config(encode_config(cfg)) == cfg
    assert resume and opts.round_timeout == 12.5
    assert (from_file.seed, from_file.method.name, from_file.federation.rounds) == (3, "florist", 4)
    with pytest.raises(config.ConfigError):
        settings({})


# --------------------------------------------------------------------------- whole runs

FAST = {"fedsrd"}
HETERO = {"fedavg", "fedprox", "florist", "flora", "flexlora", "local"}


@pytest.mark.parametrize(
    "method", [m if m in FAST else pytest.param(m, marks=pytest.mark.slow) for m in names()]
)
def test_flower_run_equals_in_process_run(
    method: str, tmp_path: Path, client_files: list[str]
) -> None:
    # Prepare: hetero ranks where the method supports them (per-client broadcasts); 2 of 3
    # clients train each round, so one client only applies the broadcast
    extra = [f"method={method}", "federation.clients_per_round=2"] + (
        ["lora.ranks=[4, 2, 2]"] if method in HETERO else []
    )
    if method == "flora":  # its broadcast is every client's own factors: opted into here
        extra.append("federation.allow_individual_updates=true")
    sim, flw = _pair(tmp_path, client_files, *extra)
    nodes = [str(tmp_path / f"node-{k}") for k in range(3)]

    # Execute
    simulation.run(sim)
    grid = LocalGrid(client_files, state_dirs=nodes)
    serve(grid, flw)

    # Assert: same adapter bits, same records (bytes per client included) but timings
    a, b = _adapter(tmp_path / "sim"), _adapter(tmp_path / "flower")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ra, rb = _records(tmp_path / "sim"), _records(tmp_path / "flower")
    assert [_strip(r) for r in ra] == [_strip(r) for r in rb]
    assert all(len(r["sampled"]) == 2 for r in rb[1:])
    assert all(set(r["upload_bytes"]) == {str(c) for c in r["sampled"]} for r in rb[1:])
    assert all(set(r["download_bytes"]) == {"0", "1", "2"} for r in rb[1:])
    assert [kind for kind, _ in grid.log].count("query") == 3
    # Bytes are the truth: Flower's record counts every byte of every message it handed to
    # Flower and got back; in-process, only the payloads move
    for r in rb[1:]:
        for cid in ("0", "1", "2"):
            sent, back = grid.sizes[(r["round"], int(cid))]
            assert r[TRANSPORT]["sent"][cid] == sent
            assert r[TRANSPORT]["received"][cid] == back
            # the broadcast and the run's config JSON both crossed; so did an upload
            config_json = len(json.dumps(config_for_nodes(config.to_dict(flw)), sort_keys=True))
            assert sent > r["download_bytes"][cid] + config_json
            if cid in r["upload_bytes"]:
                assert back > r["upload_bytes"][cid]
    for r in ra[1:]:
        assert r[TRANSPORT]["sent"] == r["download_bytes"]
        assert {k: v for k, v in r[TRANSPORT]["received"].items() if v} == r["upload_bytes"]


def test_records_are_identical_with_a_failing_client_in_both_runtimes(
    tmp_path: Path, client_files: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: client 1's training fails in round 1 in both runtimes (the ClientApps of the
    # local grid run in this process, so one patch reaches both)
    sim, flw = _pair(tmp_path, client_files, "method=fedsrd")
    real_train = steps.train_local
    bad_seed = client_seed(sim.seed, Stream.TRAIN, 1, 1)

    def failing_train(*args: Any, **kw: Any) -> Any:
        if args[6].seed == bad_seed:
            raise RuntimeError("injected failure")
        return real_train(*args, **kw)

    monkeypatch.setattr(steps, "train_local", failing_train)
    # Execute
    simulation.run(sim)
    serve(LocalGrid(client_files), flw)
    # Assert: whole records, the drop and its reason included, match
    ra, rb = _records(tmp_path / "sim"), _records(tmp_path / "flower")
    assert ra[1]["accepted"] == [0, 2] and "injected failure" in ra[1]["dropped"]["1"]
    assert [_strip(r) for r in ra] == [_strip(r) for r in rb]


def test_the_server_reads_no_client_data(tmp_path: Path, client_files: list[str]) -> None:
    # Prepare: the server's config names client files that do not exist on its machine; each
    # node has its own file (node config data-file), as in a real deployment
    elsewhere = [str(tmp_path / "on-the-clients-only" / Path(f).name) for f in client_files]
    sim = config.load(None, tiny_overrides(tmp_path / "sim", client_files))
    flw = config.load(None, tiny_overrides(tmp_path / "flower", elsewhere))
    simulation.run(sim)
    grid = LocalGrid(client_files)

    # Execute
    serve(grid, flw)

    # Assert: the run completes with the in-process records, held-out scores of each
    # client's own data included (scored on that client and sent back)
    ra, rb = _records(tmp_path / "sim"), _records(tmp_path / "flower")
    assert [_strip(r) for r in ra] == [_strip(r) for r in rb]
    assert all({"client0", "client1", "client2"} <= set(r["eval"]) for r in rb)
    assert [kind for kind, _ in grid.log].count("evaluate") == 3 * 3  # rounds 0, 1, 2
    assert not any(Path(f).exists() for f in elsewhere)


def test_a_client_reports_only_its_own_held_out_scores(
    tmp_path: Path, client_files: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: node 1 also claims a (forged) score of client 0's set
    _, flw = _pair(tmp_path, client_files, "federation.rounds=1")
    original = client_app.app

    def lying_app(msg: Message, ctx: Context) -> Message:
        reply = original(msg, ctx)
        if msg.metadata.message_type == "evaluate" and ctx.node_config["partition-id"] == 1:
            rec = reply.content.config_records["fedlora"]
            scores = json.loads(rec["scores"])
            scores["client0"] = {"loss": -1.0}  # (the server must ignore this)
            rec["scores"] = json.dumps(scores)
        return reply

    monkeypatch.setattr(client_app, "app", lying_app)
    # Execute
    serve(LocalGrid(client_files), flw)
    # Assert: client 0's score is client 0's own
    for r in _records(tmp_path / "flower"):
        assert r["eval"]["client0"]["loss"] > 0


def test_dead_node_is_dropped_and_the_round_completes(
    tmp_path: Path, client_files: list[str]
) -> None:
    _, flw = _pair(tmp_path, client_files, "method=fedsrd", "federation.min_clients=2")

    serve(LocalGrid(client_files, dead={1}), flw)

    records = _records(tmp_path / "flower")
    assert [r["accepted"] for r in records[1:]] == [[0, 2], [0, 2]]
    assert all("node is down" in r["dropped"]["1"] for r in records[1:])
    assert not any(r["skipped"] for r in records[1:])
    assert (tmp_path / "flower" / "adapter" / "adapter_model.safetensors").is_file()


def test_too_few_answers_skip_the_round(tmp_path: Path, client_files: list[str]) -> None:
    _, flw = _pair(tmp_path, client_files, "method=fedsrd", "federation.min_clients=3")

    serve(LocalGrid(client_files, dead={2}), flw)

    records = _records(tmp_path / "flower")
    assert all(r["skipped"] and r["accepted"] == [0, 1] for r in records[1:])


@pytest.mark.slow
def test_restarted_node_is_resynchronised_and_matches_in_process_failure(
    tmp_path: Path, client_files: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: in Flower, node 1 loses its memory before round 2 (a SuperNode restart), so
    # it answers out-of-sync in round 2 and is re-synchronised in round 3. In-process,
    # client 1's training fails in round 2. Both lose exactly client 1's round-2 upload.

    sim, flw = _pair(tmp_path, client_files, "method=fedsrd", "federation.rounds=3")
    bad_seed = client_seed(sim.seed, Stream.TRAIN, 2, 1)
    real_train = steps.train_local

    def failing_train(*args: Any, **kw: Any) -> Any:
        if args[6].seed == bad_seed:
            raise RuntimeError("injected failure")
        return real_train(*args, **kw)

    def wipe(grid: LocalGrid, msg: Message) -> None:
        if msg.metadata.message_type == "train" and msg.metadata.group_id == "2":
            grid.contexts[1001].state = RecordDict()

    grid = LocalGrid(client_files)
    grid.before_push = wipe

    # Execute
    serve(grid, flw)
    monkeypatch.setattr(steps, "train_local", failing_train)
    simulation.run(sim)

    # Assert
    rb = _records(tmp_path / "flower")
    assert "out of sync" in rb[2]["dropped"]["1"] and rb[2]["accepted"] == [0, 2]
    assert rb[3]["accepted"] == [0, 1, 2]
    ra = _records(tmp_path / "sim")
    assert ra[2]["accepted"] == [0, 2]
    a, b = _adapter(tmp_path / "sim"), _adapter(tmp_path / "flower")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_resumed_flower_run_resynchronises_fresh_nodes(
    tmp_path: Path, client_files: list[str]
) -> None:
    # Prepare: the in-process run of 2 rounds, and a Flower run stopped after round 1
    sim, flw = _pair(tmp_path, client_files, "method=fedsrd")
    simulation.run(sim)
    serve(
        LocalGrid(client_files),
        dataclasses.replace(flw, federation=dataclasses.replace(flw.federation, rounds=1)),
    )

    # Execute: resume on SuperNodes that remember nothing (a new Flower run)
    grid = LocalGrid(client_files)
    serve(grid, flw, resume=True)

    # Assert
    a, b = _adapter(tmp_path / "sim"), _adapter(tmp_path / "flower")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["round"] for r in _records(tmp_path / "flower")] == [0, 1, 2]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[" * 30_000 + "]" * 30_000, "nests deeper"),
        ('{"a": {"b": {"c": {"d": {"e": 1}}}}}', "nests deeper"),
        ("{" + '"k": 1, ' * 20_000 + '"z": 0}', "characters long"),
        ('{"loss": NaN}', "not JSON"),
        ('{"ratio": [1, Infinity]}', "not JSON"),
        ('{"' + "k" * 200 + '": 1}', "key of 200 characters"),
        ("{not json", "not JSON"),
    ],
)
def test_a_hostile_json_field_is_refused_before_it_is_parsed(text: str, problem: str) -> None:
    content = report_content(ClientOutcome(cid=0, round=1))
    content.config_records["fedlora"]["upload_report"] = text

    with pytest.raises(PayloadError, match=problem):
        read_report(content)


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    rep = ClientOutcome(cid=0, round=1, report={"note": "[[[[[[[[[[{{{{{"})
    assert read_report(report_content(rep)).report == {"note": "[[[[[[[[[[{{{{{"}


def test_nodes_see_no_data_path_and_no_other_clients_file(client_files: list[str]) -> None:
    cfg = config.load(
        None,
        tiny_overrides(Path("/srv/run"), client_files) + ['eval.tasks=["/srv/secret-eval.jsonl"]'],
    )

    seen = json.dumps(config_for_nodes(config.to_dict(cfg)))

    assert not any(f in seen for f in client_files)
    assert "/srv" not in seen and config.from_dict(json.loads(seen)).data.clients == 3


def test_a_node_reads_only_the_data_its_own_config_names(client_files: list[str]) -> None:
    from fedlora.errors import ConfigError
    from fedlora.runtime.flower.client import node_data

    cfg = config.load(None, tiny_overrides(Path("/srv/run"), client_files))
    as_sent = config.from_dict(config_for_nodes(config.to_dict(cfg)))

    with pytest.raises(ConfigError, match="names a data path"):
        node_data(cfg, client_files[0])  # a config that names paths is not obeyed
    with pytest.raises(ConfigError, match="names no data-file"):
        node_data(as_sent, None)
    assert node_data(as_sent, client_files[1]).files == (client_files[1],) * 3


def test_a_deployment_beyond_loopback_needs_node_keys_unless_told_otherwise(
    tmp_path: Path, client_files: list[str]
) -> None:
    from fedlora.errors import ConfigError
    from fedlora.runtime.flower.launch import run_config_args, run_flower
    from fedlora.runtime.flower.server import ServerOptions, require_identity

    cfg = config.load(None, tiny_overrides(tmp_path, client_files))
    open_door = config.load(
        None, [*tiny_overrides(tmp_path, client_files), "federation.allow_unauthenticated=true"]
    )

    with pytest.raises(ConfigError, match="federation.node_keys: a deployment whose SuperLink"):
        run_flower(cfg, runtime="flower", superlink="10.1.2.3:9093", resume=False)
    with pytest.raises(ConfigError, match="federation.allow_unauthenticated"):
        require_identity(cfg, loopback=False)  # a ServerApp started by `flwr run` by hand
    require_identity(cfg, loopback=True)
    require_identity(open_door, loopback=False)
    assert "superlink-loopback=true" in run_config_args(cfg, False, ServerOptions(), True)
    assert "superlink-loopback=false" in run_config_args(cfg, False, ServerOptions())
