"""Merges into a low-precision base are kept beside it in float32: the layer's map equals the
float64 sum of base and merges to one bfloat16 rounding of the output, however many rounds
merged, where rounding the base in place every round loses small merges outright."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedlora.models import resolve_model
from fedlora.train.adapters import (
    accumulate,
    add_into_base,
    attach_slots,
    base_plus,
    lora_layers,
    merged_beside,
)

# tiny-llama's gate_proj: 128 × 64 (an MLP layer, as all-linear adapts).
NAME = "model.layers.0.mlp.gate_proj"
M, N = 128, 64


def _model(dtype: torch.dtype) -> nn.Module:
    base, _ = resolve_model("tiny-llama", seed=0, dtype=dtype)
    return attach_slots(base, [(4, 8.0)], ["gate_proj"])


def _effective_map(model: nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """The adapted layer's weight as its forward sees it (adapters off), m × n."""
    eye = torch.eye(N, dtype=dtype)
    with torch.no_grad(), model.disable_adapter():  # type: ignore[operator]
        return lora_layers(model)[NAME](eye).T.double()


def _merges(rounds: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    # Small, as merged updates are: ~1e-4 of a weight entry, below bf16's half ULP.
    return [
        (torch.randn(M, 3, generator=gen) * 1e-3, torch.randn(3, N, generator=gen) * 1e-2)
        for _ in range(rounds)
    ]


@pytest.mark.parametrize("rounds", [1, 20, 80])
def test_bf16_base_merges_do_not_drift(rounds: int) -> None:
    # Prepare
    model = _model(torch.bfloat16)
    w0 = lora_layers(model)[NAME].get_base_layer().weight.detach().double().clone()
    merges = _merges(rounds)
    reference = w0 + sum(left.double() @ right.double() for left, right in merges)
    # Execute
    for left, right in merges:
        add_into_base(model, {NAME: (left, right)})
    # Assert: the base weight itself was never touched, and the map is right to one
    # bf16 rounding of the output (relative 2^-8), not to `rounds` of them.
    base_now = lora_layers(model)[NAME].get_base_layer().weight.detach().double()
    assert torch.equal(base_now, w0)
    error = (_effective_map(model, torch.bfloat16) - reference).abs().max()
    assert error <= 2**-8 * reference.abs().max()
    merged_sum = sum(left.double() @ right.double() for left, right in merges)
    beside = merged_beside(lora_layers(model)[NAME])
    assert beside is not None
    as_dense = beside if isinstance(beside, torch.Tensor) else beside[0] @ beside[1]
    torch.testing.assert_close(as_dense.double(), merged_sum, rtol=1e-5, atol=1e-9)


def test_rounding_the_base_in_place_would_lose_those_merges() -> None:
    # The counterfactual the store avoids: 80 in-place bf16 additions of one recurring small
    # merge (a federation moving steadily one way), each below half an ULP of the weights.
    merges = _merges(1) * 80
    w = lora_layers(_model(torch.bfloat16))[NAME].get_base_layer().weight.detach().clone()
    w0 = w.double().clone()
    for left, right in merges:
        w += (left @ right).to(torch.bfloat16)
    reference = w0 + sum(left.double() @ right.double() for left, right in merges)
    model = _model(torch.bfloat16)
    for left, right in merges:
        add_into_base(model, {NAME: (left, right)})
    kept_error = (_effective_map(model, torch.bfloat16) - reference).abs().max()
    in_place_error = (w.double() - reference).abs().max()
    assert in_place_error > 8 * kept_error


def test_float32_base_still_merges_in_place() -> None:
    model = _model(torch.float32)
    layer = lora_layers(model)[NAME]
    w0 = layer.get_base_layer().weight.detach().clone()
    left, right = torch.randn(M, 2), torch.randn(2, N)
    add_into_base(model, {NAME: (left, right)})
    torch.testing.assert_close(layer.get_base_layer().weight, w0 + left @ right)
    assert merged_beside(layer) is None


def test_base_plus_restores_what_was_merged_beside() -> None:
    model = _model(torch.bfloat16)
    layer = lora_layers(model)[NAME]
    add_into_base(model, {NAME: (torch.ones(M, 1), torch.ones(1, N))})
    before = _effective_map(model, torch.bfloat16)
    update = {NAME: (torch.full((M, 2), 0.25), torch.ones(2, N))}
    with base_plus(model, update):  # type: ignore[arg-type]
        during = _effective_map(model, torch.bfloat16)
    after = _effective_map(model, torch.bfloat16)
    assert torch.equal(before, after)
    # the update (all 0.5) shows while inside, to bf16 rounding of outputs near 1.5
    torch.testing.assert_close(during - before, torch.full((M, N), 0.5).double(), atol=2e-2, rtol=0)
    assert merged_beside(layer) is not None


def test_accumulate_switches_to_dense_once_that_is_smaller() -> None:
    left, right = torch.randn(6, 4), torch.randn(4, 5)
    factored = accumulate(None, left[:, :1], right[:1])
    assert isinstance(factored, tuple)
    dense = accumulate(factored, left[:, 1:], right[1:])  # rank 4: 4·11 ≥ 30
    assert isinstance(dense, torch.Tensor)
    torch.testing.assert_close(dense, left @ right)
    more = accumulate(dense, left, right)
    assert isinstance(more, torch.Tensor)
    torch.testing.assert_close(more, 2 * left @ right)
