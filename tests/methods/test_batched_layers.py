"""The stacking methods' SVDs batched over the layers of one shape (the GPU's default)
give what one SVD per layer (the CPU's default) gives, in float64 and float32."""

from __future__ import annotations

import pytest
import torch
from helpers import global_dense, make_uploads, rel_err, tiny_setup

from fedlora.methods.registry import build
from fedlora.ops import batches

CASES = [
    ("florist", {"tau": 0.9}),
    ("florist", {"tau": 1.0}),
    ("flexlora", {}),
    ("fedex", {"compress": True}),
]


@pytest.mark.parametrize(("name", "options"), CASES)
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_batched_aggregate_equals_the_per_layer_one(
    name: str, options: dict, dtype: torch.dtype, tol: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: three layers of one shape, clients of mixed ranks where the method allows
    ranks = (4, 4, 4) if name == "fedex" else (2, 4, 6)
    setup = tiny_setup(ranks, layers=3)
    uploads = make_uploads(setup, torch.Generator().manual_seed(11), dtype)
    method = build(name, options, setup=setup)
    state0 = method.init_server()
    # Execute: the CPU's default (one layer per call), then every layer in one batched call
    single = method.aggregate(state0, uploads)
    calls: list[int] = []
    real = batches.run_batched

    def counted(fn, plans, build_one, budget=None):  # type: ignore[no-untyped-def]
        calls.append(len(plans))
        return real(fn, plans, build_one, budget)

    monkeypatch.setattr(batches, "default_budget", lambda cuda: 10**9)
    monkeypatch.setattr(batches, "run_batched", counted)
    batched = method.aggregate(state0, uploads)
    # Assert: the batched path ran over all three layers, with the same global model,
    # ranks and dtypes as the per-layer path
    assert calls == [3]
    assert batched.meta.get("ranks") == single.meta.get("ranks")
    want, got = global_dense(method, single, setup), global_dense(method, batched, setup)
    for layer in want:
        assert rel_err(got[layer], want[layer]) < tol
    for key, tensor in single.tensors.items():
        assert batched.tensors[key].shape == tensor.shape
        assert batched.tensors[key].dtype == dtype
