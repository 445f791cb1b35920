"""Clients that keep own parts (FedSA-LoRA's B): kept on the client's side, never sent,
surviving rounds and resumes in both runtimes; each client scores and writes its own model."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from fedlora import config
from fedlora.errors import CheckpointError
from fedlora.runtime import simulation
from fedlora.runtime.flower.server import serve
from fedlora.runtime.own_parts import KEEP, OwnParts, client_folder, run_token
from tests.conftest import tiny_overrides
from tests.runtime.local_grid import LocalGrid

TIMING = {
    "server_seconds",
    "train_seconds",
    "client_overhead_seconds",
    "round_seconds",
    "eval_seconds",
}


def _records(run: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _strip(rec: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in rec.items() if k not in TIMING and k != "transport_bytes"}


def _client_adapters(root: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Each client's own model as written on its side, by client folder name."""
    found = sorted(root.glob("run-*/client-*/adapter/adapter_model.safetensors"))
    return {p.parent.parent.name: load_file(str(p)) for p in found}


def _cfg(out: Path, files: list[str], *extra: str) -> config.RunConfig:
    return config.load(None, tiny_overrides(out, files) + ["method=fedsa", *extra])


def test_the_store_keeps_the_newest_parts_and_reads_strictly_before(tmp_path: Path) -> None:
    store = OwnParts(tmp_path / "c")
    assert store.before(5) is None
    for r in (1, 2, 4, 5, 7, 9):
        store.save(r, {"x": torch.full((2,), float(r))})
    kept = sorted(int(p.stem.split("-")[1]) for p in (tmp_path / "c").glob("round-*"))
    assert kept == [4, 5, 7, 9] and len(kept) == KEEP
    assert float(store.before(9)["x"][0]) == 7.0  # a replayed round 9 sees round 7's part
    assert float(store.before(10)["x"][0]) == 9.0
    assert store.before(4) is None  # pruned: nothing older is kept


def test_a_run_token_is_kept_across_resumes_and_checked(tmp_path: Path) -> None:
    token = run_token(tmp_path, resume=False)
    assert run_token(tmp_path, resume=True) == token
    with pytest.raises(CheckpointError, match="missing"):
        run_token(tmp_path / "other", resume=True)
    with pytest.raises(ValueError, match="malformed"):
        client_folder(tmp_path, "../../etc", 0)


def test_in_process_b_stays_on_the_client_and_each_client_writes_its_model(
    tmp_path: Path, client_files: list[str]
) -> None:
    # Execute
    simulation.run(_cfg(tmp_path / "run", client_files))
    # Assert: uploads are A alone (B's values never travel)
    records = _records(tmp_path / "run")
    a_values = None
    for rec in records[1:]:
        assert set(rec["encodings"]["upload"]["0"]) == {"A"}
        a_values = a_values or rec["upload_params"]["0"]
    # each client kept its B per round and wrote its own model: s·B_k·Ā on its side
    adapters = _client_adapters(tmp_path / "run" / "clients")
    assert sorted(adapters) == ["client-0", "client-1", "client-2"]
    shared = load_file(str(tmp_path / "run" / "adapter" / "adapter_model.safetensors"))
    products = {}
    for name, tensors in adapters.items():
        (b_key,) = [k for k in tensors if k.endswith("q_proj.lora_B.weight")][:1]
        a_key = b_key.replace("lora_B", "lora_A")
        products[name] = tensors[b_key].double() @ tensors[a_key].double()
    assert not torch.equal(products["client-0"], products["client-1"])  # models of their own
    assert all(k in shared for k in adapters["client-0"])
    # clients score their own models: their scores differ from the shared (base) model's
    final = records[-1]["eval"]
    assert final["client0"] != records[0]["eval"]["client0"]


@pytest.mark.slow
def test_flower_keeps_b_on_the_node_and_matches_in_process_through_a_resume(
    tmp_path: Path, client_files: list[str]
) -> None:
    # Prepare: 3 rounds in-process; on Flower 2 rounds, then a resume on fresh nodes that
    # keep the same state-dir (their process memory is gone, their disk is not)
    sim = _cfg(tmp_path / "sim", client_files, "federation.rounds=3")
    flw = _cfg(tmp_path / "flower", client_files, "federation.rounds=3")
    nodes = [str(tmp_path / f"node-{k}") for k in range(3)]
    simulation.run(sim)
    two = dataclasses.replace(flw, federation=dataclasses.replace(flw.federation, rounds=2))
    serve(LocalGrid(client_files, state_dirs=nodes), two)
    # Execute
    serve(LocalGrid(client_files, state_dirs=nodes), flw, resume=True)
    # Assert: the same records and, client by client, the same own model, bit for bit
    ra, rb = _records(tmp_path / "sim"), _records(tmp_path / "flower")
    assert [_strip(r) for r in ra] == [_strip(r) for r in rb]
    mine = _client_adapters(tmp_path / "sim" / "clients")
    theirs: dict[str, dict[str, torch.Tensor]] = {}
    for node in nodes:
        theirs.update(_client_adapters(Path(node)))
    assert sorted(mine) == sorted(theirs) == ["client-0", "client-1", "client-2"]
    for name in mine:
        assert all(torch.equal(mine[name][k], theirs[name][k]) for k in mine[name])
    # nothing of a client's own part reached the server's folder
    assert not (tmp_path / "flower" / "clients").exists()


def test_a_node_without_a_state_dir_is_told_what_to_set(
    tmp_path: Path, client_files: list[str]
) -> None:
    serve(LocalGrid(client_files), _cfg(tmp_path / "flower", client_files, "federation.rounds=1"))
    rec = _records(tmp_path / "flower")[1]
    assert rec["skipped"]
    assert all("state-dir" in why for why in rec["dropped"].values())
