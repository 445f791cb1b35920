"""A real Flower deployment on 127.0.0.1: one SuperLink and two SuperNodes, each its own
process group on free ports, all stopped at the end even on failure.

FedSRD and FLoRIST run 2 rounds each through ``run_flower(runtime="flower")`` with every
client id bound to its node's key, and give the in-process runtime's adapter and bytes per
client; an impostor SuperNode claiming client 0 without its key is refused; then a
SuperNode is SIGKILLed while it holds a round's message and the run completes with the
other client.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from safetensors.torch import load_file

from fedlora import config
from fedlora.runtime import simulation
from fedlora.runtime.flower.launch import flower_env, run_flower
from fedlora.runtime.flower.server import ServerOptions
from tests.conftest import tiny_overrides, write_client_files

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 90.0
RUN_TIMEOUT = 900.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (Flower detaches some children into new sessions)."""
    kids, out, todo = _children(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def kill_tree(pid: int, sig: int = signal.SIGKILL) -> None:
    for p in tree(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(os.getpgid(p), sig)


def write_key(path: Path) -> str:
    """Write a new SuperNode key (OpenSSH, as ``flower-supernode`` takes it); its public key."""
    key = ec.generate_private_key(ec.SECP384R1())
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return public.decode()


@dataclass
class Cluster:
    """A SuperLink and SuperNodes started by this test (only these are ever signalled)."""

    root: Path
    env: dict[str, str]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    address: str = ""
    public_keys: list[str] = field(default_factory=list)

    def start(self, name: str, cmd: list[str]) -> None:
        log = (self.root / f"{name}.log").open("wb")
        self.procs[name] = subprocess.Popen(
            cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def superlink(self) -> None:
        port = free_port()
        self.address = f"127.0.0.1:{port}"
        self.start(
            "superlink",
            [
                str(BIN / "flower-superlink"),
                "--insecure",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--disable-runtime-dependency-installation",
            ],
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert self.procs["superlink"].poll() is None, self.log("superlink")[-3000:]
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"SuperLink did not listen on {port}: {self.log('superlink')[-3000:]}")

    def supernode(self, k: int, n: int, data_file: str, key: str, name: str = "") -> None:
        self.start(
            name or f"supernode{k}",
            [
                str(BIN / "flower-supernode"),
                "--insecure",
                "--superlink",
                self.address,
                "--port",
                str(free_port()),
                "--max-wait-time",
                "120",
                "--node-config",
                f'partition-id={k} num-partitions={n} data-file="{data_file}" auth-key="{key}"',
            ],
        )

    def stop(self) -> None:
        for proc in self.procs.values():
            kill_tree(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            kill_tree(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@contextlib.contextmanager
def running_cluster(tmp_path: Path, mp: pytest.MonkeyPatch, nodes: int) -> Iterator[Cluster]:
    """A SuperLink and ``nodes`` SuperNodes with keys, all stopped on the way out."""
    # Every Flower process finds the venv's entry points (the SuperLink spawns
    # `flower-superexec` by name) and imports fedlora from this checkout.
    pythonpath = os.pathsep.join([str(REPO / "src"), str(REPO)])
    mp.setenv("PATH", f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    mp.setenv("PYTHONPATH", pythonpath)
    mp.setenv("HF_HUB_OFFLINE", "1")
    root = tmp_path / "cluster"
    root.mkdir()
    c = Cluster(root=root, env=flower_env(root / "flwr-home"))
    try:
        c.superlink()
        # Each SuperNode reads only its own file (node config data-file); the runs' configs
        # name files that do not exist, so the ServerApp cannot read any client's data.
        (root / "node-data").mkdir()
        own = write_client_files(root / "node-data", nodes)
        for k in range(nodes):
            c.public_keys.append(write_key(root / f"node{k}.key"))
            c.supernode(k, nodes, own[k], str(root / f"node{k}.key"))
        yield c
    finally:
        c.stop()


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    with running_cluster(tmp_path, monkeypatch, 2) as c:
        yield c


def _records(run: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _adapter(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


def _cfg(out: Path, files: list[str], *extra: str) -> config.RunConfig:
    return config.load(None, tiny_overrides(out, files) + list(extra))


OPTIONS = ServerOptions(join_timeout=START_TIMEOUT)


def test_deployment_matches_in_process_and_survives_a_killed_supernode(
    cluster: Cluster, tmp_path: Path
) -> None:
    files = write_client_files(tmp_path, 2)  # the same content the SuperNodes hold
    absent = [str(tmp_path / "not-on-the-server" / Path(f).name) for f in files]

    keys = f"federation.node_keys={json.dumps(cluster.public_keys)}"
    # --- FedSRD and FLoRIST: same adapter and bytes per client as in-process (every reply
    # signed with its node's key)
    for method in ("fedsrd", "florist"):
        sim = _cfg(tmp_path / f"sim-{method}", files, f"method={method}")
        flw = _cfg(tmp_path / f"flower-{method}", absent, f"method={method}", keys)

        simulation.run(sim)
        run_flower(
            flw,
            runtime="flower",
            superlink=cluster.address,
            resume=False,
            options=OPTIONS,
            timeout=RUN_TIMEOUT,
        )

        a, b = _adapter(tmp_path / f"sim-{method}"), _adapter(tmp_path / f"flower-{method}")
        assert a.keys() == b.keys()
        for k in a:
            rel = float((a[k] - b[k]).norm() / a[k].norm().clamp_min(1e-30))
            assert rel < 1e-4, (method, k, rel)
        ra, rb = _records(tmp_path / f"sim-{method}"), _records(tmp_path / f"flower-{method}")
        assert [r["round"] for r in rb] == [0, 1, 2]
        for x, y in zip(ra[1:], rb[1:], strict=True):
            assert y["accepted"] == [0, 1]
            assert x["upload_bytes"] == y["upload_bytes"]
            assert x["download_bytes"] == y["download_bytes"]

    # --- An impostor SuperNode claims client 0 without its key: refused, the run goes on
    write_key(cluster.root / "impostor.key")
    cluster.supernode(0, 2, files[1], str(cluster.root / "impostor.key"), "impostor")
    lied = _cfg(tmp_path / "flower-impostor", absent, "method=fedsrd", keys, "federation.rounds=1")
    run_flower(
        lied,
        runtime="flower",
        superlink=cluster.address,
        resume=False,
        options=OPTIONS,
        timeout=RUN_TIMEOUT,
    )
    first = _records(tmp_path / "flower-impostor")[1]
    assert first["accepted"] == [0, 1]
    assert any(
        "without signing with client 0's key" in why for why in first["nodes_refused"].values()
    )

    # --- Kill SuperNode 1 while it holds round 1's message: the round ends without it (the
    # operator accepts that a one-upload round shows client 0 its own update, nobody else's)
    kill = _cfg(
        tmp_path / "flower-kill",
        absent,
        "method=fedsrd",
        keys,
        "federation.min_clients=1",
        "federation.allow_individual_updates=true",
    )
    seen = cluster.log("supernode1").count("Receiving: train message")
    errors: list[BaseException] = []

    def run() -> None:
        try:
            run_flower(
                kill,
                runtime="flower",
                superlink=cluster.address,
                resume=False,
                options=OPTIONS,
                timeout=RUN_TIMEOUT,
            )
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    deadline = time.monotonic() + RUN_TIMEOUT
    while cluster.log("supernode1").count("Receiving: train message") == seen:
        assert worker.is_alive() and time.monotonic() < deadline, "round 1 never reached node 1"
        time.sleep(0.1)
    kill_tree(cluster.procs["supernode1"].pid, signal.SIGKILL)
    worker.join(timeout=RUN_TIMEOUT)

    assert not worker.is_alive() and not errors, errors
    records = _records(tmp_path / "flower-kill")
    assert [r["round"] for r in records] == [0, 1, 2]
    assert records[1]["accepted"] == [0] and "1" in records[1]["dropped"]
    assert records[2]["accepted"] == [0] and not records[2]["skipped"]
    assert (tmp_path / "flower-kill" / "adapter" / "adapter_model.safetensors").is_file()


def _shares_sent(log: str) -> bool:
    """Whether a SuperNode's log shows its second secure reply (its shares) delivered."""
    last = log.rfind("Sending: query.secagg")
    return log.count("Sending: query.secagg") >= 2 and "Sent successfully" in log[last:]


def test_secure_aggregation_on_a_deployment_survives_a_node_killed_mid_protocol(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Four SuperNodes, secure FedAvg, threshold 3: node 3 is SIGKILLed between two messages,
    # once its keys and its shares are out, and the round completes with the other three
    # clients' sum (node 3's pairwise masks rebuilt from its key shares).
    with running_cluster(tmp_path, monkeypatch, 4) as c:
        absent = [str(tmp_path / "not-on-the-server" / f"client{k}.jsonl") for k in range(4)]
        cfg = _cfg(
            tmp_path / "secure",
            absent,
            "method=fedavg",
            "federation.rounds=1",
            'federation.secure_aggregation="secagg+"',
            'federation.weighting="uniform"',
            f"federation.node_keys={json.dumps(c.public_keys)}",
        )
        errors: list[BaseException] = []

        def run() -> None:
            try:
                run_flower(
                    cfg,
                    runtime="flower",
                    superlink=c.address,
                    resume=False,
                    options=ServerOptions(join_timeout=START_TIMEOUT, round_timeout=120.0),
                    timeout=RUN_TIMEOUT,
                )
            except BaseException as exc:
                errors.append(exc)

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        deadline = time.monotonic() + RUN_TIMEOUT
        while not _shares_sent(c.log("supernode3")):
            assert worker.is_alive() and time.monotonic() < deadline, "no secure stage at node 3"
            time.sleep(0.1)
        kill_tree(c.procs["supernode3"].pid, signal.SIGKILL)
        worker.join(timeout=RUN_TIMEOUT)

    assert not worker.is_alive() and not errors, errors
    (_, first) = _records(tmp_path / "secure")
    assert not first["skipped"], first["skip_reason"]
    assert first["secure_aggregation"]["alive"] == [0, 1, 2]
    assert "secure aggregation" in first["dropped"]["3"]
    assert (tmp_path / "secure" / "adapter" / "adapter_model.safetensors").is_file()
