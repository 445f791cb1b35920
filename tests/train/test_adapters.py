"""PEFT plumbing: slots, copies in and out, temporary and permanent base updates, PEFT I/O."""

from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import LlamaConfig, LlamaForCausalLM

from fedlora.methods.base import LoraPair
from fedlora.train import adapters
from fedlora.train.peft_io import compact, read_adapter, write_adapter

TARGETS = ["q_proj", "v_proj"]


def _model(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    return LlamaForCausalLM(cfg).eval()


def _random_lora(model: torch.nn.Module, rank: int, seed: int) -> dict[str, LoraPair]:
    gen = torch.Generator().manual_seed(seed)
    return {
        s.name: LoraPair(
            torch.randn(rank, s.in_features, generator=gen),
            torch.randn(s.out_features, rank, generator=gen),
        )
        for s in adapters.layer_specs(model)
    }


def test_one_slot_per_shape_and_round_trip_of_factors() -> None:
    peft_model = adapters.attach_slots(_model(), [(4, 8.0), (2, 4.0), (4, 8.0)], TARGETS)
    specs = adapters.layer_specs(peft_model)
    assert len(specs) == 4  # 2 blocks x (q, v)
    assert {s.name.split(".")[-1] for s in specs} == set(TARGETS)
    lora = _random_lora(peft_model, 2, seed=1)

    adapters.set_lora(peft_model, adapters.slot_name(2, 4.0), lora)
    back = adapters.get_lora(peft_model, adapters.slot_name(2, 4.0))

    for name, pair in lora.items():
        assert torch.equal(back[name].A, pair.A) and torch.equal(back[name].B, pair.B)


def test_set_trainable_selects_only_the_asked_factors() -> None:
    peft_model = adapters.attach_slots(_model(), [(4, 8.0)], TARGETS)
    params = adapters.set_trainable(peft_model, adapters.slot_name(4, 8.0), frozenset({"B"}))
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert len(params) == 4 and all(".lora_B." in n for n in trainable) and len(trainable) == 4


def test_base_plus_equals_dense_update_and_restores_exactly() -> None:
    peft_model = adapters.attach_slots(_model(), [(4, 8.0)], TARGETS)
    layers = adapters.lora_layers(peft_model)
    name = next(iter(layers))
    w = layers[name].get_base_layer().weight
    before = w.detach().clone()
    left, right = torch.randn(w.shape[0], 3), torch.randn(3, w.shape[1])
    ids = torch.tensor([[1, 2, 3, 4]])

    with adapters.base_plus(peft_model, {name: (left, right)}):
        inside = w.detach().clone()
        _ = peft_model(input_ids=ids)

    torch.testing.assert_close(
        inside.double(), before.double() + left.double() @ right.double(), rtol=1e-5, atol=1e-5
    )
    assert torch.equal(w, before)


def test_written_adapter_loads_in_peft_and_reproduces_the_update(tmp_path: Path) -> None:
    base = _model(seed=3)
    specs = adapters.layer_specs(adapters.attach_slots(_model(seed=3), [(2, 2.0)], TARGETS))
    gen = torch.Generator().manual_seed(5)
    # Different ranks per layer, as FLoRIST produces.
    deltas = {
        s.name: (
            torch.randn(s.out_features, 1 + i % 3, generator=gen) * 0.1,
            torch.randn(1 + i % 3, s.in_features, generator=gen),
        )
        for i, s in enumerate(specs)
    }
    folder = write_adapter(tmp_path / "ad", deltas, base_model="tiny", target_modules=TARGETS)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    base_out = base(input_ids=ids).logits

    loaded = PeftModel.from_pretrained(base, folder).eval()
    with torch.no_grad():
        got = loaded(input_ids=ids).logits
    reference = _model(seed=3)
    with torch.no_grad():
        for name, mod in reference.named_modules():
            if name in deltas:
                mod.weight += deltas[name][0] @ deltas[name][1]
        expected = reference(input_ids=ids).logits

    assert not torch.allclose(got, base_out)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    back = read_adapter(folder)
    for name, (left, right) in deltas.items():
        s = back.scaling[name]
        torch.testing.assert_close(s * back.lora[name].B @ back.lora[name].A, left @ right)


def test_compact_keeps_the_product_at_numerical_rank() -> None:
    gen = torch.Generator().manual_seed(0)
    left = torch.randn(12, 2, generator=gen) @ torch.randn(2, 6, generator=gen)  # rank 2 in 6
    right = torch.randn(6, 10, generator=gen)
    ((l2, r2),) = compact({"x": (left, right)}).values()
    assert l2.shape[1] == 2
    torch.testing.assert_close(l2 @ r2, left @ right, rtol=1e-4, atol=1e-4)


def test_read_adapter_errors_name_the_folder(tmp_path: Path) -> None:
    from fedlora.errors import ConfigError

    with pytest.raises(ConfigError, match="not found"):
        read_adapter(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="not a PEFT adapter folder"):
        read_adapter(tmp_path / "empty")
