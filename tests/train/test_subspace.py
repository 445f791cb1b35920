"""A B trained inside a fixed span (ClientStart.b_basis, Fed-SB): the layer computes with P·R,
only the core R learns, AdamW steps the core, and the slot is a plain LoRA again after."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

from fedlora import config
from fedlora.methods.base import ClientStart, LoraPair
from fedlora.runtime.assemble import assemble
from fedlora.train.adapters import b_modules, get_lora, slot_name
from fedlora.train.local import LocalRun, train_local
from fedlora.train.subspace import b_in_span, learnable
from tests.conftest import tiny_overrides, write_client_files


def test_the_core_gets_the_gradient_of_b_projected_on_the_basis() -> None:
    # Prepare: one linear B (m=6, r=2) parametrised as P·R, float64
    gen = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(6, 2, generator=gen, dtype=torch.float64)).Q
    core = torch.randn(2, 2, generator=gen, dtype=torch.float64)
    lin = nn.Linear(2, 6, bias=False).double()
    x = torch.randn(5, 2, generator=gen, dtype=torch.float64)
    start = ClientStart(adapter={"l": LoraPair(torch.zeros(2, 3), core)}, b_basis={"l": basis})
    # Execute
    with b_in_span({"l": lin}, start) as cores:
        torch.testing.assert_close(lin.weight, basis @ core)
        param = learnable(lin)
        assert param is cores["l"]
        param.requires_grad_(True)
        (lin(x) ** 2).sum().backward()
        grad_core = param.grad.clone()
    # Assert: dL/dR = Pᵀ dL/dB (float64 reference with B as a free matrix)
    free = (basis @ core).clone().requires_grad_(True)
    ((x @ free.T) ** 2).sum().backward()
    torch.testing.assert_close(grad_core, basis.T @ free.grad, rtol=1e-12, atol=1e-12)
    assert not parametrize.is_parametrized(lin)
    torch.testing.assert_close(lin.weight.detach(), basis @ core)


def test_local_training_moves_only_the_core(tmp_path: Path) -> None:
    # Prepare: the tiny model, a seeded basis per layer, core zero
    files = write_client_files(tmp_path, 2)
    fed = assemble(config.load(None, tiny_overrides(tmp_path / "run", files)), lambda k, i: None)
    client = fed.setup.clients[0]
    slot = slot_name(client.rank, client.alpha)
    r = client.rank
    gen = torch.Generator().manual_seed(1)
    fresh = get_lora(fed.model, slot)
    adapter = {
        n: LoraPair(torch.randn(p.A.shape, generator=gen), torch.zeros(r, r))
        for n, p in fresh.items()
    }
    basis = {
        n: torch.randn(p.B.shape, generator=gen) / p.B.shape[0] ** 0.5 for n, p in fresh.items()
    }
    start = ClientStart(adapter=adapter, trainable=frozenset({"B"}), b_basis=basis)
    cfg = dataclasses.replace(fed.cfg.train, lr=1e-2)
    # Execute
    result = train_local(fed.model, slot, start, fed.train_sets[0], cfg, fed.pad_id, LocalRun(3))
    # Assert: the trained entry is the r×r core, moved; A untouched; the slot holds P·R and
    # is no longer parametrised
    moved = 0.0
    slot_now = get_lora(fed.model, slot)
    for name, pair in result.adapter.items():
        assert tuple(pair.B.shape) == (r, r)
        assert torch.equal(pair.A, adapter[name].A)
        moved = max(moved, float(pair.B.abs().max()))
        torch.testing.assert_close(slot_now[name].B, basis[name] @ pair.B, rtol=1e-5, atol=1e-7)
    assert moved > 0
    assert not any(parametrize.is_parametrized(m) for m in b_modules(fed.model, slot).values())
