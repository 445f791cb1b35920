"""The CUDA paths: a federation on the GPU in bfloat16, a 4-bit and an 8-bit base through
bitsandbytes, and the client benchmark's GPU figures. Skipped where no CUDA device exists
(and the bitsandbytes ones where it is not installed: ``pip install 'fedlora[gpu]'``)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from fedlora import config
from fedlora.cli import main
from fedlora.runtime.assemble import assemble
from fedlora.train.adapters import lora_layers
from tests.conftest import tiny_overrides

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
needs_bnb = pytest.mark.skipif(
    importlib.util.find_spec("bitsandbytes") is None, reason="needs bitsandbytes"
)


def _records(run: Path) -> list[dict[str, object]]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method", ["fedsrd", "flora"])
def test_bf16_federation_on_the_gpu(method: str, tmp_path: Path, client_files: list[str]) -> None:
    run = tmp_path / "run"
    overrides = [*tiny_overrides(run, client_files), "model.dtype=bfloat16", "train.device=cuda"]
    assert main(["run", *overrides, f"method={method}"]) == 0
    records = _records(run)
    assert len(records) == 3 and all(r["accepted"] == [0, 1, 2] for r in records[1:])
    # and the same run on the CPU trains to nearby losses (not identical: other kernels)
    cpu = tmp_path / "cpu"
    cpu_overrides = [*tiny_overrides(cpu, client_files), "model.dtype=bfloat16", "train.device=cpu"]
    assert main(["run", *cpu_overrides, f"method={method}"]) == 0
    for got, want in zip(records[1:], _records(cpu)[1:], strict=True):
        for cid, loss in want["train_loss"].items():  # type: ignore[attr-defined]
            assert got["train_loss"][cid] == pytest.approx(loss, rel=0.05)  # type: ignore[index]


def test_gpu_model_keeps_float32_factors(tmp_path: Path, client_files: list[str]) -> None:
    cfg = config.load(
        None, [*tiny_overrides(tmp_path, client_files), "model.dtype=bfloat16", "train.device=cuda"]
    )
    fed = assemble(cfg, lambda kind, info: None)
    for layer in lora_layers(fed.model).values():
        assert layer.get_base_layer().weight.device.type == "cuda"
        assert layer.get_base_layer().weight.dtype == torch.bfloat16
        assert all(p.dtype == torch.float32 for p in layer.lora_A.parameters())


@needs_bnb
@pytest.mark.parametrize("bits", ["4bit", "8bit"])
def test_quantized_base_trains_and_merges_beside(
    bits: str, tmp_path: Path, client_files: list[str]
) -> None:
    run = tmp_path / "run"
    overrides = [*tiny_overrides(run, client_files), f"model.quantize={bits}", "method=flora"]
    assert main(["run", *overrides, "train.gradient_checkpointing=true"]) == 0
    records = _records(run)
    assert all(r["accepted"] == [0, 1, 2] for r in records[1:])
    assert records[-1]["eval"]


@needs_bnb
def test_quantized_base_layers_are_k_bit(tmp_path: Path, client_files: list[str]) -> None:
    cfg = config.load(None, [*tiny_overrides(tmp_path, client_files), "model.quantize=4bit"])
    fed = assemble(cfg, lambda kind, info: None)
    names = {type(layer.get_base_layer()).__name__ for layer in lora_layers(fed.model).values()}
    assert names == {"Linear4bit"}


def test_bench_client_reports_gpu_memory(tmp_path: Path) -> None:
    from benchmarks.client import run as bench
    from tests.conftest import write_client_files

    files = write_client_files(tmp_path, 2)
    overrides = tiny_overrides(tmp_path / "run", files, **{"train.local_steps": "2"})
    report = bench.run_bench(
        bench.ClientBenchConfig(
            model="tiny-llama",
            methods=("fedavg",),
            repeats=1,
            overrides=(*overrides, "model.dtype=bfloat16", "train.device=cuda"),
            threads=1,
        )
    )
    peaks = report.methods[0].peak_gpu_bytes
    assert peaks["bare"] > 0 and peaks["fedlora"] > 0
