"""PEFT plumbing: one base model, one PEFT adapter slot per distinct (rank, alpha), and
copying plain ``Lora`` tensors in and out of those slots.

Simulated clients never get their own model copy: before a client trains, its adapter
tensors are copied into the slot of its shape; afterwards they are copied out. Layer names
are the base model's module paths (``model.layers.0.self_attn.q_proj``), the same names PEFT
writes into ``adapter_model.safetensors`` after its ``base_model.model.`` prefix.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import cast

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from torch import nn

from fedlora.methods.base import Factored, LayerSpec, Lora, LoraPair

_PREFIX = "base_model.model."


def slot_name(rank: int, alpha: float) -> str:
    """Adapter slot name for a (rank, alpha) shape."""
    return f"r{rank}_a{alpha:g}".replace(".", "p")


def attach_slots(
    model: nn.Module, shapes: Sequence[tuple[int, float]], target_modules: Sequence[str]
) -> PeftModel:
    """Wrap ``model`` with one LoRA slot per distinct (rank, alpha) in ``shapes``."""
    distinct = sorted(set(shapes))
    if not distinct:
        raise ValueError("at least one adapter shape is needed")
    peft_model: PeftModel | None = None
    for rank, alpha in distinct:
        cfg = LoraConfig(
            r=rank,
            # peft annotates lora_alpha as int but only ever divides it by r (or √r);
            # a float alpha is what the methods' scaling needs.
            lora_alpha=alpha,  # type: ignore[arg-type]
            lora_dropout=0.0,
            target_modules=list(target_modules),
            bias="none",
            task_type="CAUSAL_LM",
        )
        if peft_model is None:
            peft_model = get_peft_model(model, cfg, adapter_name=slot_name(rank, alpha))
        else:
            peft_model.add_adapter(slot_name(rank, alpha), cfg)
    assert peft_model is not None
    for p in peft_model.parameters():
        p.requires_grad_(False)
    return peft_model


def _factor(layer: LoraLayer, part: str, slot: str) -> nn.Parameter:
    """Weight of ``slot``'s A or B (``part``) in ``layer``.

    PEFT keeps one ``nn.Linear`` per slot in the ``lora_A`` / ``lora_B`` module dicts;
    ``nn.Module.__getattr__`` types attribute access as ``Tensor | Module``, hence the cast.
    """
    store = layer.lora_A if part == "A" else layer.lora_B
    return cast(nn.Parameter, store[slot].weight)


def _base_weight(layer: LoraLayer) -> torch.Tensor:
    """Weight of the frozen linear layer ``layer`` wraps (see :func:`_factor` for the cast)."""
    return cast(torch.Tensor, layer.get_base_layer().weight)


def lora_layers(model: nn.Module) -> dict[str, LoraLayer]:
    """Every LoRA-wrapped linear layer, by base-model module path."""
    out: dict[str, LoraLayer] = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            out[name.removeprefix(_PREFIX)] = module
    return out


def layer_specs(model: nn.Module) -> tuple[LayerSpec, ...]:
    """Shapes of the adapted layers (m = out_features, n = in_features)."""
    specs = []
    for name, layer in lora_layers(model).items():
        w = _base_weight(layer)
        specs.append(
            LayerSpec(name=name, in_features=int(w.shape[1]), out_features=int(w.shape[0]))
        )
    return tuple(specs)


def set_lora(model: nn.Module, slot: str, adapter: Mapping[str, LoraPair]) -> None:
    """Copy ``adapter`` into ``slot`` (shapes must match the slot's rank)."""
    layers = lora_layers(model)
    missing = sorted(set(layers) - set(adapter))
    if missing:
        raise KeyError(f"adapter lacks layer {missing[0]!r}")
    with torch.no_grad():
        for name, layer in layers.items():
            pair = adapter[name]
            _factor(layer, "A", slot).copy_(pair.A)
            _factor(layer, "B", slot).copy_(pair.B)


def get_lora(model: nn.Module, slot: str) -> Lora:
    """Detached float32 copies of ``slot``'s factors."""
    return {
        name: LoraPair(
            _factor(layer, "A", slot).detach().clone(), _factor(layer, "B", slot).detach().clone()
        )
        for name, layer in lora_layers(model).items()
    }


def live_lora(model: nn.Module, slot: str) -> Lora:
    """The slot's parameters themselves (for differentiable regularisers)."""
    return {
        name: LoraPair(_factor(layer, "A", slot), _factor(layer, "B", slot))
        for name, layer in lora_layers(model).items()
    }


def set_trainable(model: nn.Module, slot: str, factors: frozenset[str]) -> list[nn.Parameter]:
    """Make only ``factors`` ("A", "B") of ``slot`` trainable; return those parameters."""
    for p in model.parameters():
        p.requires_grad_(False)
    params: list[nn.Parameter] = []
    for layer in lora_layers(model).values():
        for part in ("A", "B"):
            if part in factors:
                w = _factor(layer, part, slot)
                w.requires_grad_(True)
                params.append(w)
    return params


def add_into_base(model: nn.Module, deltas: Mapping[str, Factored]) -> None:
    """``W0 += L @ R`` for each layer in ``deltas`` (a merge the method asked for)."""
    layers = lora_layers(model)
    with torch.no_grad():
        for name, (left, right) in deltas.items():
            w = _base_weight(layers[name])
            w.addmm_(left.to(w.dtype), right.to(w.dtype))


@contextlib.contextmanager
def base_plus(model: PeftModel, deltas: Mapping[str, Factored]) -> Iterator[None]:
    """Temporarily evaluate ``W0 + L @ R`` with every adapter disabled; the exact original
    weights are restored afterwards (copies, not a subtraction, so no float drift)."""
    layers = lora_layers(model)
    saved = {n: _base_weight(layers[n]).detach().clone() for n in deltas}
    try:
        add_into_base(model, deltas)
        with model.disable_adapter():
            yield
    finally:
        with torch.no_grad():
            for name, w in saved.items():
                _base_weight(layers[name]).copy_(w)
