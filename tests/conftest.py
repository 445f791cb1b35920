"""Shared fixtures: small JSONL client files and a tiny-model run config."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest


def write_client_files(folder: Path, clients: int, per_client: int = 16) -> list[str]:
    """Real-looking prompt/completion pairs, a different task per client."""
    rng = random.Random(0)
    paths = []
    for k in range(clients):
        path = folder / f"client{k}.jsonl"
        with path.open("w") as f:
            for _ in range(per_client):
                a, b = rng.randint(1, 99), rng.randint(1, 99)
                op = ["plus", "minus", "times"][k % 3]
                value = {"plus": a + b, "minus": a - b, "times": a * b}[op]
                f.write(
                    json.dumps(
                        {
                            "prompt": f"What is {a} {op} {b}?",
                            "completion": f"{a} {op} {b} is {value}.",
                        }
                    )
                    + "\n"
                )
        paths.append(str(path))
    return paths


@pytest.fixture
def client_files(tmp_path: Path) -> list[str]:
    return write_client_files(tmp_path, 3)


def tiny_overrides(out_dir: Path, files: list[str], **extra: object) -> list[str]:
    """key=value overrides for a fast tiny-model run on ``files``."""
    base = {
        "model.name": '"tiny-llama"',
        "data.clients": str(len(files)),
        "data.partition": '"files"',
        "data.files": json.dumps(files),
        "federation.rounds": "2",
        "train.local_steps": "2",
        "train.batch_size": "2",
        "train.seq_len": "32",
        "train.lr": "0.01",
        "lora.rank": "4",
        "lora.alpha": "8",
        "eval.batch_size": "8",
        "out_dir": json.dumps(str(out_dir)),
    }
    base.update({k: str(v) for k, v in extra.items()})
    return [f"{k}={v}" for k, v in base.items()]
