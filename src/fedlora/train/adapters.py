"""PEFT plumbing: one base model, one PEFT adapter slot per distinct (rank, alpha), and
copying plain ``Lora`` tensors in and out of those slots.

Simulated clients never get their own model copy: before a client trains, its adapter
tensors are copied into the slot of its shape; afterwards they are copied out. Layer names
are the base model's module paths (``model.layers.0.self_attn.q_proj``), the same names PEFT
writes into ``adapter_model.safetensors`` after its ``base_model.model.`` prefix.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, cast

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from torch import nn

from fedlora.methods.base import ClientStart, Factored, LayerSpec, Lora, LoraPair
from fedlora.train.subspace import learnable

_PREFIX = "base_model.model."


def slot_name(rank: int, alpha: float) -> str:
    """Adapter slot name for a (rank, alpha) shape."""
    return f"r{rank}_a{alpha:g}".replace(".", "p")


def attach_slots(
    model: nn.Module,
    shapes: Sequence[tuple[int, float]],
    target_modules: str | Sequence[str],
    dropout: float = 0.0,
) -> PeftModel:
    """Wrap ``model`` with one LoRA slot per distinct (rank, alpha) in ``shapes``.

    ``target_modules`` is PEFT's: module suffixes, or ``"all-linear"`` (every linear layer
    but the output head). Over a low-precision base PEFT keeps the factors in float32."""
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
            lora_dropout=dropout,
            target_modules=target_modules
            if isinstance(target_modules, str)
            else list(target_modules),
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


def _host_copy(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu", torch.float32, copy=True)


def get_lora(model: nn.Module, slot: str) -> Lora:
    """Detached float32 copies of ``slot``'s factors, on the CPU (where payloads live)."""
    return {
        name: LoraPair(_host_copy(_factor(layer, "A", slot)), _host_copy(_factor(layer, "B", slot)))
        for name, layer in lora_layers(model).items()
    }


def b_modules(model: nn.Module, slot: str) -> dict[str, nn.Module]:
    """The ``B`` linear of ``slot`` in every layer (what :mod:`.subspace` parametrises)."""
    return {name: layer.lora_B[slot] for name, layer in lora_layers(model).items()}


def live_lora(model: nn.Module, slot: str) -> Lora:
    """The slot's parameters themselves (for differentiable regularisers)."""
    return {
        name: LoraPair(_factor(layer, "A", slot), _factor(layer, "B", slot))
        for name, layer in lora_layers(model).items()
    }


def on_device(start: ClientStart, device: torch.device) -> ClientStart:
    """``start`` with its adapter on ``device`` (itself when that is the CPU)."""
    if device.type == "cpu":
        return start
    moved = {n: LoraPair(p.A.to(device), p.B.to(device)) for n, p in start.adapter.items()}
    return dataclasses.replace(start, adapter=moved)


def set_trainable(model: nn.Module, slot: str, factors: frozenset[str]) -> list[nn.Parameter]:
    """Make only ``factors`` ("A", "B") of ``slot`` trainable; return those parameters (a
    ``B`` parametrised inside a fixed span contributes its core, :mod:`.subspace`)."""
    for p in model.parameters():
        p.requires_grad_(False)
    params: list[nn.Parameter] = []
    for layer in lora_layers(model).values():
        for part in ("A", "B"):
            if part in factors:
                store = layer.lora_A if part == "A" else layer.lora_B
                w = learnable(store[slot])
                w.requires_grad_(True)
                params.append(w)
    return params


# ---------------------------------------------------------------- merges into the base
#
# A float32 base takes a merge in place (W0 += L @ R). A low-precision or quantized base
# never does: rounding W0 to bfloat16 every round would lose small merges and drift, and a
# quantized weight cannot be re-quantized honestly. There the merged sum is kept beside the
# layer as float32 factors (or, once that is no smaller, one dense float32 matrix), and a
# forward hook adds ``x @ (L @ R)^T`` to the base layer's output.

Merged = tuple[torch.Tensor, torch.Tensor] | torch.Tensor
_BESIDE = "_fedlora_merged"
_HOOKED = "_fedlora_merged_hook"


def merges_beside(layer: LoraLayer) -> bool:
    """Whether merges into ``layer``'s base are kept beside it (not float32 in place)."""
    return _base_weight(layer).dtype != torch.float32


def accumulate(old: Merged | None, left: torch.Tensor, right: torch.Tensor) -> Merged:
    """``old + left @ right`` in float32: factors side by side while they are smaller than
    the dense matrix, the dense matrix after (both exact sums, no truncation)."""
    left, right = left.to(torch.float32), right.to(torch.float32)
    if isinstance(old, torch.Tensor):
        return old.addmm(left.to(old.device), right.to(old.device))
    if old is not None:
        left = torch.cat([old[0], left.to(old[0].device)], dim=1)
        right = torch.cat([old[1], right.to(old[1].device)], dim=0)
    (m, k), n = left.shape, right.shape[1]
    return left @ right if k * (m + n) >= m * n else (left, right)


def _add_merged(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> Any:
    merged = getattr(module, _BESIDE, None)
    if merged is None:
        return output
    x = args[0].to(torch.float32)
    extra = x @ merged.T if isinstance(merged, torch.Tensor) else (x @ merged[1].T) @ merged[0].T
    return output + extra.to(output.dtype)


def _set_beside(layer: LoraLayer, merged: Merged | None) -> None:
    base = layer.get_base_layer()
    if not getattr(base, _HOOKED, False):
        base.register_forward_hook(_add_merged)
        setattr(base, _HOOKED, True)
    setattr(base, _BESIDE, merged)


def merged_beside(layer: LoraLayer) -> Merged | None:
    """What has been merged beside ``layer``'s base so far (None: nothing, or in place)."""
    return cast("Merged | None", getattr(layer.get_base_layer(), _BESIDE, None))


def add_into_base(model: nn.Module, deltas: Mapping[str, Factored]) -> None:
    """``W0 += L @ R`` for each layer in ``deltas`` (a merge the method asked for): in place
    on a float32 base, beside it as float32 otherwise."""
    layers = lora_layers(model)
    with torch.no_grad():
        for name, (left, right) in deltas.items():
            layer = layers[name]
            w = _base_weight(layer)
            if merges_beside(layer):
                _set_beside(
                    layer, accumulate(merged_beside(layer), left.to(w.device), right.to(w.device))
                )
            else:
                w.addmm_(left.to(w.device, w.dtype), right.to(w.device, w.dtype))


@contextlib.contextmanager
def base_plus(model: PeftModel, deltas: Mapping[str, Factored]) -> Iterator[None]:
    """Temporarily evaluate ``W0 + L @ R`` with every adapter disabled; the exact original
    weights (or what was merged beside them) are restored afterwards (copies, not a
    subtraction, so no float drift)."""
    layers = lora_layers(model)
    saved = {
        n: merged_beside(layers[n])
        if merges_beside(layers[n])
        else _base_weight(layers[n]).detach().clone()
        for n in deltas
    }
    try:
        add_into_base(model, deltas)
        with model.disable_adapter():
            yield
    finally:
        with torch.no_grad():
            for name, old in saved.items():
                if merges_beside(layers[name]):
                    _set_beside(layers[name], old)
                else:
                    assert isinstance(old, torch.Tensor)
                    _base_weight(layers[name]).copy_(old)
