"""Real-scale options on the CPU: a bfloat16 base, the all-linear adapter with dropout,
gradient checkpointing, the device option, and the quantize option's refusal without CUDA.

Only the base changes precision: LoRA factors, payloads and the server stay float32. A run in
bfloat16 reruns bit-identically and its merged export matches base + adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import AutoPeftModelForCausalLM, PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from fedlora import config
from fedlora.cli import main
from fedlora.methods.base import ClientStart
from fedlora.models import resolve_model
from fedlora.runtime.assemble import assemble
from fedlora.train.adapters import get_lora, lora_layers, slot_name
from fedlora.train.local import LocalRun, train_local
from tests.conftest import tiny_overrides, write_client_files

MLP = {"gate_proj", "up_proj", "down_proj"}
ATTENTION = {"q_proj", "k_proj", "v_proj", "o_proj"}


def _metrics(run: Path) -> list[dict[str, object]]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if "seconds" not in k} for r in rows]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return write_client_files(tmp_path_factory.mktemp("data"), 3)


@pytest.fixture(scope="module")
def bf16_run(tmp_path_factory: pytest.TempPathFactory, files: list[str]) -> Path:
    """FLoRA (it merges into the base every round) on a bfloat16 base, all-linear, dropout."""
    run = tmp_path_factory.mktemp("bf16") / "run"
    assert main(["run", *tiny_overrides(run, files), "model.dtype=bfloat16", "method=flora"]) == 0
    return run


def test_defaults_are_the_papers_adapter() -> None:
    cfg = config.load(None)
    assert cfg.lora.target_modules == ("all-linear",) and cfg.lora.peft_targets == "all-linear"
    assert cfg.lora.dropout == 0.05
    assert config.load(None, ["lora.target_modules=q_proj"]).lora.peft_targets == ["q_proj"]


def test_bfloat16_base_with_float32_factors(files: list[str], tmp_path: Path) -> None:
    cfg = config.load(None, [*tiny_overrides(tmp_path, files), "model.dtype=bfloat16"])
    fed = assemble(cfg, lambda kind, info: None)
    layers = lora_layers(fed.model)
    kinds = {name.rsplit(".", 1)[-1] for name in layers}
    assert kinds == MLP | ATTENTION  # all-linear: every linear layer but the head
    assert not any("lm_head" in name for name in layers)
    for layer in layers.values():
        assert layer.get_base_layer().weight.dtype == torch.bfloat16
        assert all(p.dtype == torch.float32 for p in layer.lora_A.parameters())
        assert all(p.dtype == torch.float32 for p in layer.lora_B.parameters())
    client = fed.setup.clients[0]
    slot = slot_name(client.rank, client.alpha)
    start = ClientStart(adapter=get_lora(fed.model, slot))
    result = train_local(
        fed.model, slot, start, fed.train_sets[0], cfg.train, fed.pad_id, LocalRun(3)
    )
    assert all(p.A.dtype == p.B.dtype == torch.float32 for p in result.adapter.values())
    assert all(p.A.device.type == "cpu" for p in result.adapter.values())


def test_bf16_run_reruns_bit_identically(bf16_run: Path, files: list[str]) -> None:
    again = bf16_run.parent / "again"
    assert main(["run", *tiny_overrides(again, files), "model.dtype=bfloat16", "method=flora"]) == 0
    assert _metrics(again) == _metrics(bf16_run)
    a = (again / "adapter" / "adapter_model.safetensors").read_bytes()
    assert a == (bf16_run / "adapter" / "adapter_model.safetensors").read_bytes()


def test_bf16_run_resumes_bit_identically(bf16_run: Path, files: list[str]) -> None:
    # Execute: stop after round 1 (a run of 1 round), then resume it to 2 rounds.
    part = bf16_run.parent / "part"
    overrides = [*tiny_overrides(part, files), "model.dtype=bfloat16", "method=flora"]
    assert main(["run", *overrides, "federation.rounds=1"]) == 0
    assert main(["run", "--resume", str(part), "federation.rounds=2"]) == 0
    # Assert
    assert _metrics(part) == _metrics(bf16_run)
    a = load_file(str(part / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(bf16_run / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_all_linear_adapter_loads_in_peft_and_covers_the_mlp(bf16_run: Path) -> None:
    cfg = json.loads((bf16_run / "adapter" / "adapter_config.json").read_text())
    assert set(cfg["target_modules"]) == MLP | ATTENTION
    model = AutoPeftModelForCausalLM.from_pretrained(str(bf16_run / "adapter"))
    adapted = {name.rsplit(".", 1)[-1] for name in lora_layers(model)}
    assert adapted == MLP | ATTENTION
    tensors = load_file(str(bf16_run / "adapter" / "adapter_model.safetensors"))
    assert any(".mlp.down_proj.lora_B" in k for k in tensors)
    assert all(t.dtype == torch.float32 for t in tensors.values())


def test_bf16_merged_export_matches_base_plus_adapter(bf16_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "merged"
    assert main(["export", str(bf16_run), "--merged", str(out)]) == 0
    merged = AutoModelForCausalLM.from_pretrained(str(out))
    assert next(merged.parameters()).dtype == torch.bfloat16
    base, _ = resolve_model("tiny-llama", seed=0, dtype=torch.bfloat16)
    with_adapter = PeftModel.from_pretrained(base, str(bf16_run / "adapter"))
    ids = torch.tensor([[5, 17, 42, 99, 3, 250]])
    with torch.no_grad():
        got, want = merged(input_ids=ids).logits, with_adapter(input_ids=ids).logits
    # one bf16 rounding of the merged weights against factors kept in float32 ...
    torch.testing.assert_close(got.float(), want.float(), rtol=0.05, atol=0.05)
    # ... a tolerance far below what the adapter changes, so an unmerged export would fail
    with torch.no_grad(), with_adapter.disable_adapter():
        plain = with_adapter(input_ids=ids).logits
    assert (want.float() - plain.float()).abs().max() > 0.2


def test_dropout_is_seeded_per_round_and_really_drops(files: list[str], tmp_path: Path) -> None:
    cfg = config.load(None, tiny_overrides(tmp_path, files))
    fed = assemble(cfg, lambda kind, info: None)
    slot = slot_name(fed.setup.clients[0].rank, fed.setup.clients[0].alpha)
    start = ClientStart(adapter=get_lora(fed.model, slot))

    def trained(seed: int, train: config.TrainConfig = cfg.train) -> list[float]:
        result = train_local(
            fed.model, slot, start, fed.train_sets[0], train, fed.pad_id, LocalRun(seed)
        )
        return [float(p.A.sum()) for p in result.adapter.values()]

    torch.manual_seed(123)
    first = trained(7)
    torch.manual_seed(456)  # the caller's global RNG state must not matter
    assert trained(7) == first
    # Batches alike (same sampler seed), dropout off: different factors, so dropout acts.
    fed.model.set_adapter(slot)
    for layer in lora_layers(fed.model).values():
        layer.lora_dropout[slot].p = 0.0
    assert trained(7) != first


def test_gradient_checkpointing_trains_the_same(files: list[str], tmp_path: Path) -> None:
    results = []
    for on in (False, True):
        cfg = config.load(
            None,
            [*tiny_overrides(tmp_path, files), f"train.gradient_checkpointing={str(on).lower()}"],
        )
        fed = assemble(cfg, lambda kind, info: None)
        assert fed.model.base_model.model.is_activation_checkpointing == on
        slot = slot_name(fed.setup.clients[0].rank, fed.setup.clients[0].alpha)
        start = ClientStart(adapter=get_lora(fed.model, slot))
        results.append(
            train_local(
                fed.model, slot, start, fed.train_sets[0], cfg.train, fed.pad_id, LocalRun(5)
            )
        )
    plain, checkpointed = results
    assert plain.mean_loss == pytest.approx(checkpointed.mean_loss, rel=1e-5)
    for name, pair in plain.adapter.items():
        torch.testing.assert_close(checkpointed.adapter[name].A, pair.A, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(checkpointed.adapter[name].B, pair.B, rtol=1e-4, atol=1e-6)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("model.quantize=4bit", "model.quantize"),
        ("model.quantize=8bit", "model.quantize"),
        ("train.device=cuda", "train.device"),
    ],
)
def test_cuda_options_refused_at_start_without_cuda(
    override: str, named: str, files: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert main(["run", *tiny_overrides(run, files), override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and named in err[0], err
    assert not run.exists()  # nothing written


def test_bad_precision_values_are_named() -> None:
    for override, key in [
        ("model.dtype=float8", "model.dtype"),
        ("model.quantize=2bit", "model.quantize"),
        ("train.device=tpu", "train.device"),
        ("lora.dropout=1.0", "lora.dropout"),
        ('lora.target_modules=["all-linear", "q_proj"]', "lora.target_modules"),
        ("train.grad_accum_steps=0", "train.grad_accum_steps"),
    ]:
        with pytest.raises(config.ConfigError, match=key.replace(".", r"\.")):
            config.load(None, [override])
