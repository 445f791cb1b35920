"""The server's bounds on what one client reports: capped sample counts, clipped or refused
changes (against a dense float64 reference), and no NaN committed."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from fedlora import config
from fedlora.methods.base import ServerState, Upload
from fedlora.ops.sparse import Sparse
from fedlora.runtime.guard import (
    ClipPolicy,
    cap_weights,
    change_norms,
    clip_changes,
    non_finite,
    scale_changes,
)
from fedlora.runtime.steps import Received, server_step


def nonzero(dense: torch.Tensor) -> Sparse:
    return Sparse.from_mask(dense, dense != 0)


def up(cid: int, n: int = 10, **payload: Any) -> Upload:
    return Upload(cid=cid, n_samples=n, payload=payload)


def test_a_count_above_the_ratio_times_the_lower_median_is_capped() -> None:
    ups = [up(0, 10), up(1, 12), up(2, 10**15), up(3, 50)]

    out, capped = cap_weights(ups, 4.0)

    # lower median of (10, 12, 50, 10^15) is 12: the cap is 48
    assert [u.n_samples for u in out] == [10, 12, 48, 48]
    assert set(capped) == {2, 3} and "reported 1000000000000000" in capped[2]
    assert [u.n_samples for u in ups] == [10, 12, 10**15, 50]  # inputs untouched


def test_with_two_uploads_each_count_is_judged_against_the_other() -> None:
    out, capped = cap_weights([up(0, 10), up(1, 10**9)], 4.0)
    assert [u.n_samples for u in out] == [10, 40] and set(capped) == {1}
    assert cap_weights([up(0, 10**9)], 4.0)[0][0].n_samples == 10**9  # alone: its own median
    assert cap_weights([up(0, 1), up(1, 10**9)], 0.0)[1] == {}  # 0: off


def test_change_norms_match_a_dense_float64_reference() -> None:
    # Prepare: factors against a start (dense), and a delta upload (sparse, from zero)
    gen = torch.Generator().manual_seed(0)
    start_a, start_b = torch.randn(4, 16, generator=gen), torch.randn(16, 4, generator=gen)
    a, b = torch.randn(4, 16, generator=gen), torch.randn(16, 4, generator=gen)
    delta = torch.randn(4, 16, generator=gen)
    sparse = nonzero(delta * (delta.abs() > 1))
    payload = {"l0.A": a, "l0.B": b, "l1.dA": sparse}
    reference = {"l0.A": start_a, "l0.B": start_b}

    # Execute
    norms = change_norms(payload, reference)

    # Assert
    want0 = math.sqrt(
        float(
            (a.double() - start_a.double()).pow(2).sum()
            + (b.double() - start_b.double()).pow(2).sum()
        )
    )
    want1 = float((delta * (delta.abs() > 1)).double().norm())
    assert norms["l0"] == pytest.approx(want0, rel=1e-12)
    assert norms["l1"] == pytest.approx(want1, rel=1e-12)


def test_scaling_a_change_keeps_its_start_and_its_positions() -> None:
    start = torch.ones(3, 3)
    trained = start + torch.arange(9.0).reshape(3, 3)
    sparse = nonzero(torch.tensor([0.0, 2.0, 0.0, -4.0]))
    out = scale_changes({"l.A": trained, "m.dB": sparse}, {"l.A": start}, {"l": 0.5, "m": 0.25})
    assert torch.equal(out["l.A"], start + 0.5 * torch.arange(9.0).reshape(3, 3))
    assert isinstance(out["m.dB"], Sparse)
    assert torch.equal(out["m.dB"].indices, sparse.indices)
    assert torch.equal(out["m.dB"].values, sparse.values * 0.25)


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_one_inflated_change_is_bounded_with_any_number_of_uploads(k: int) -> None:
    # Prepare: k honest changes of norm ~1 per layer and one of norm 1000
    gen = torch.Generator().manual_seed(k)
    honest = [up(c, **{"l.dA": nonzero(torch.randn(8, generator=gen))}) for c in range(k)]
    liar = up(k, **{"l.dA": nonzero(1000 * torch.randn(8, generator=gen))})
    ups = [*honest, liar]
    norms = [float(u.payload["l.dA"].values.norm()) for u in ups]  # type: ignore[union-attr]

    # Execute
    kept, clipped, refused = clip_changes(ups, {}, ClipPolicy(ratio=10.0))
    _, _, refusals = clip_changes(ups, {}, ClipPolicy(ratio=10.0, action="refuse"))

    # Assert: the liar's change is brought onto 10x the lower median (with two uploads, the
    # other one); the honest changes are untouched
    bound = 10 * sorted(norms)[(len(norms) - 1) // 2]
    liar_norm = float(kept[-1].payload["l.dA"].values.norm())  # type: ignore[union-attr]
    assert liar_norm == pytest.approx(bound, rel=1e-6)
    assert set(clipped) == {k} and set(refusals) == {k} and not refused
    for a, b in zip(kept[:k], honest, strict=True):
        assert a.payload["l.dA"] is b.payload["l.dA"]


def test_an_absolute_norm_bounds_even_a_lone_upload() -> None:
    lone = up(0, **{"l.dA": nonzero(torch.full((4,), 10.0))})
    assert not clip_changes([lone], {}, ClipPolicy(ratio=10.0))[1]  # its own median
    kept, clipped, _ = clip_changes([lone], {}, ClipPolicy(ratio=10.0, norm=2.0))
    assert float(kept[0].payload["l.dA"].values.norm()) == pytest.approx(2.0)  # type: ignore[union-attr]
    assert clipped[0]["scale"] == pytest.approx(0.1)


def test_a_layer_nobody_else_changed_is_bounded_to_no_change() -> None:
    start = torch.zeros(2, 2)
    ups = [up(c, **{"l.A": start.clone()}) for c in range(3)] + [up(3, **{"l.A": torch.ones(2, 2)})]
    kept, clipped, _ = clip_changes(ups, {c: {"l.A": start} for c in range(4)}, ClipPolicy(10.0))
    assert torch.equal(kept[-1].payload["l.A"], start) and set(clipped) == {3}  # type: ignore[arg-type]


def test_a_non_finite_new_state_skips_the_round() -> None:
    from fedlora.methods.base import ClientSpec, LayerSpec, Setup

    class Exploding:
        name = "exploding"
        setup = Setup((LayerSpec("l", 2, 2),), (ClientSpec(0, 1, 1.0), ClientSpec(1, 1, 1.0)))

        def upload_schema(self, client: Any) -> dict[str, tuple[int, ...]]:
            return {"l.dA": (2,)}

        def aggregate(self, state: ServerState, uploads: Any) -> ServerState:
            return ServerState(state.round + 1, {"l.A": torch.tensor([float("inf")])})

    from fedlora.wire import encode

    blob = encode({"l.dA": torch.ones(2)})
    state = ServerState(0, {"l.A": torch.zeros(1)})

    out = server_step(
        Exploding(),  # type: ignore[arg-type]
        state,
        config.load(None, ["data.clients=2"]),
        Received({0: (blob, 5), 1: (blob, 5)}, {}, {}),
    )

    assert out.skipped and out.state is state and "l.A holds NaN or Inf" in (out.skip_reason or "")
    assert non_finite(out.state) is None
