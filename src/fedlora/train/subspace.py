"""``B`` trained inside a fixed column space: the layer computes with ``B = P·R`` and only the
core ``R`` learns (``ClientStart.b_basis``; Fed-SB).

For one local training run the slot's ``B`` weight is re-parametrised (``torch.nn.utils.
parametrize``): its stored parameter becomes the q×r core, and every forward computes
``P·R``. Optimisers therefore see the core itself (AdamW's per-element steps are those of the
core, as the method prescribes, not of a projected ``B``). Leaving the block restores a plain
``B`` weight holding ``P·R``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import cast

import torch
from torch import nn
from torch.nn.utils import parametrize

from fedlora.methods.base import ClientStart, Lora, LoraPair, Tensor


class InSpan(nn.Module):
    """The parametrisation ``B = P·R`` of a weight whose stored parameter is ``R``."""

    basis: Tensor

    def __init__(self, basis: Tensor) -> None:
        super().__init__()
        self.register_buffer("basis", basis)

    def forward(self, core: Tensor) -> Tensor:
        return self.basis @ core

    def right_inverse(self, b: Tensor) -> Tensor:
        """The least-squares core of ``b`` (exact for a ``b`` in the span of ``P``)."""
        return torch.linalg.lstsq(self.basis, b).solution


def _weight(module: nn.Module) -> Tensor:
    return cast(Tensor, module.weight)


def _core(module: nn.Module) -> nn.Parameter:
    """The stored parameter of a weight parametrised by :class:`InSpan`."""
    weights = cast(nn.ModuleDict, module.parametrizations)["weight"]
    return cast(nn.Parameter, weights.original)


def model_form(start: ClientStart) -> Lora:
    """``start.adapter`` as the model holds it: ``B = P·R`` on the layers with a basis."""
    if not start.b_basis:
        return start.adapter
    return {
        name: LoraPair(pair.A, start.b_basis[name] @ pair.B) if name in start.b_basis else pair
        for name, pair in start.adapter.items()
    }


@contextlib.contextmanager
def b_in_span(
    model_b: Mapping[str, nn.Module], start: ClientStart
) -> Iterator[dict[str, nn.Parameter]]:
    """Within the block each module in ``model_b`` (a slot's ``B`` linear, by layer) computes
    ``P·R`` from its layer's core ``R = start.adapter[layer].B``; yields the cores, the
    parameters that learn. Restores plain weights (holding ``P·R``) on leaving, even on error."""
    done: list[nn.Module] = []
    try:
        cores: dict[str, nn.Parameter] = {}
        for name, basis in start.b_basis.items():
            module = model_b[name]
            weight = _weight(module)
            parametrize.register_parametrization(
                module, "weight", InSpan(basis.to(weight.device, weight.dtype))
            )
            done.append(module)
            core = _core(module)
            with torch.no_grad():
                core.copy_(start.adapter[name].B.to(core.device, core.dtype))
            cores[name] = core
        yield cores
    finally:
        for module in done:
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)


def learnable(module: nn.Module) -> nn.Parameter:
    """The parameter that learns for a LoRA linear: its weight, or the core of a weight
    parametrised by :class:`InSpan`."""
    if parametrize.is_parametrized(module, "weight"):
        return _core(module)
    return cast(nn.Parameter, module.weight)


def trained_form(adapter: Lora, cores: Mapping[str, nn.Parameter]) -> Lora:
    """A trained adapter as the method reads it: the core in place of ``B`` where a layer has
    one (a detached float32 CPU copy, like the rest of ``adapter``)."""
    return {
        name: LoraPair(pair.A, cores[name].detach().to("cpu", torch.float32, copy=True))
        if name in cores
        else pair
        for name, pair in adapter.items()
    }
