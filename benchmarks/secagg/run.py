"""What secure aggregation adds to a round, side by side with the plain round.

Each federation (a model shape, its LoRA rank, N clients, a method) plays the same trained
round twice through the round driver with synthetic clients
(:mod:`fedlora.runtime.synthetic`: the real hooks, seed streams and wire): plainly, and under
``federation.secure_aggregation = "secagg+"`` (the real key agreement, Shamir shares,
encryption and ChaCha20 masks, every client's side played in this process one after another).
The table gives both rounds' seconds, the extra seconds and their ratio, the bytes a client
uploads both ways, and the machine's load before and after; ``--json`` writes every figure.
Clients run one after another here, so the extra seconds are the sum of every client's
masking plus the server's unmasking: on a deployment, the clients' parts run in parallel.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

from benchmarks.common.measure import load_average
from fedlora import shapes
from fedlora.config import DataConfig, EvalConfig, FederationConfig, RunConfig, SecAggConfig
from fedlora.methods.base import ClientSpec, Setup
from fedlora.methods.registry import build
from fedlora.runtime.driver import run_round
from fedlora.runtime.run_folder import RunState
from fedlora.runtime.synthetic import SyntheticServer, SyntheticTransport

CASES = ((4, 0), (16, 0), (16, 5))
"""(clients, num_shares): every client a neighbour of every other (SecAgg) at 4 and 16
clients, and SecAgg+'s ring of 5 at 16."""


def one_round(setup: Setup, method: str, secure: bool, num_shares: int) -> dict[str, Any]:
    """Seconds and per-client upload bytes of one trained round (the round driver's)."""
    federation = FederationConfig(
        rounds=2,
        clip_ratio=0.0,
        max_weight_ratio=0.0,
        weighting="uniform",
        secure_aggregation="secagg+" if secure else "none",
        secagg=SecAggConfig(num_shares=num_shares),
    )
    cfg = RunConfig(
        data=DataConfig(clients=len(setup.clients)), federation=federation, eval=EvalConfig(every=3)
    )
    fedlora_method = build(method, setup=setup)
    server = SyntheticServer(cfg, fedlora_method, setup)
    transport = SyntheticTransport(server, train_rounds=1)
    rs = RunState(0, fedlora_method.init_server(), {c.cid: None for c in setup.clients})
    began = time.perf_counter()
    record = run_round(server, rs, transport, lambda kind, info: None)
    seconds = time.perf_counter() - began
    if record.skipped:
        raise RuntimeError(f"{method}: the round was skipped: {record.skip_reason}")
    up = sum(record.upload_bytes.values()) / len(record.upload_bytes)
    moved = {
        c: record.transport_bytes["sent"][c] + record.transport_bytes["received"][c]
        for c in record.upload_bytes
    }
    return {
        "seconds": seconds,
        "server_seconds": record.server_seconds,
        "upload_bytes": up,
        "moved_bytes": sum(moved.values()) / len(moved),
    }


def measure(shape: str, rank: int, method: str, blocks: int) -> list[dict[str, Any]]:
    layers = shapes.layer_specs(shape, None, blocks)
    rows = []
    for clients, num_shares in CASES:
        setup = Setup(
            layers=layers,
            clients=tuple(ClientSpec(k, rank, 2.0 * rank) for k in range(clients)),
            weighting="uniform",
        )
        plain = one_round(setup, method, False, num_shares)
        secure = one_round(setup, method, True, num_shares)
        rows.append(
            {
                "clients": clients,
                "num_shares": num_shares or clients,
                "plain": plain,
                "secure": secure,
                "extra_seconds": secure["seconds"] - plain["seconds"],
                "ratio": secure["seconds"] / plain["seconds"],
            }
        )
    return rows


def render(head: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    lines = [
        f"{head['method']} on {head['shape']} ({head['blocks']} blocks), LoRA rank "
        f"{head['rank']}; load {head['load_before']:.2f} before, {head['load_after']:.2f} after",
        "",
        f"{'clients':>7} {'shares':>6} {'plain s':>8} {'secure s':>9} {'extra s':>8} "
        f"{'ratio':>6} {'up KB plain':>12} {'up KB secure':>13} {'moved KB secure':>16}",
    ]
    for r in rows:
        p, s = r["plain"], r["secure"]
        lines.append(
            f"{r['clients']:>7} {r['num_shares']:>6} {p['seconds']:>8.2f} {s['seconds']:>9.2f} "
            f"{r['extra_seconds']:>8.2f} {r['ratio']:>6.2f} {p['upload_bytes'] / 1024:>12.1f} "
            f"{s['upload_bytes'] / 1024:>13.1f} {s['moved_bytes'] / 1024:>16.1f}"
        )
    lines += [
        "",
        "Clients are played one after another in this process: the extra seconds are every "
        "client's masking plus the server's unmasking (on a deployment the clients' parts "
        "run in parallel). 'moved' counts every message of the round both ways.",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.secagg", description=__doc__)
    p.add_argument("--shape", default="smollm2-135m", choices=shapes.names())
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--blocks", type=int, default=4)
    p.add_argument("--method", default="fedavg")
    p.add_argument("--json", type=Path, default=None, help="also write every figure here")
    args = p.parse_args(argv)
    before = load_average()[0]
    rows = measure(args.shape, args.rank, args.method, args.blocks)
    head = {
        "command": "python -m benchmarks.secagg " + " ".join(argv),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "shape": args.shape,
        "rank": args.rank,
        "blocks": args.blocks,
        "method": args.method,
        "load_before": before,
        "load_after": load_average()[0],
        "machine": {"platform": platform.platform(), "processor": platform.processor()},
    }
    print(render(head, rows))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**head, "rows": rows}, indent=2) + "\n")
    return 0
