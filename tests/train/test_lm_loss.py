"""The head-on-labelled-positions loss equals the model's own completion-only loss, and its
gradients the model's, on both tiny architectures (and falls back to the model's forward
where the head is not a plain projection)."""

from __future__ import annotations

import pytest
import torch

from fedlora.models import resolve_model
from fedlora.train.adapters import attach_slots, live_lora, set_trainable, slot_name
from fedlora.train.batches import Encoded, collate
from fedlora.train.lm_loss import _parts, completion_only_loss, labelled_log_probs


def _batch() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    rows = []
    for n, prompt in ((12, 5), (9, 3), (12, 11)):
        ids = torch.randint(3, 250, (n,), generator=gen).tolist()
        rows.append(Encoded(ids, [-100] * prompt + ids[prompt:]))
    return collate(rows, pad_id=0)


@pytest.mark.parametrize("arch", ["tiny-llama", "tiny-qwen2"])
def test_loss_and_gradients_equal_the_models_own(arch: str) -> None:
    base, _ = resolve_model(arch, seed=0, dtype=torch.float64)
    model = attach_slots(base, [(4, 8.0)], "all-linear")
    slot = slot_name(4, 8.0)
    model.set_adapter(slot)
    params = set_trainable(model, slot, frozenset({"A", "B"}))
    with torch.no_grad():  # B = 0 at init would hide A's gradient
        for pair in live_lora(model, slot).values():
            pair.B.normal_(0, 0.1)
    batch = _batch()
    assert _parts(model) is not None  # the fast path is the one tested

    def dense_reference() -> torch.Tensor:
        """Every position's full float64 logits, log-softmax, mean over labelled targets."""
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logp = torch.log_softmax(logits[:, :-1].double(), dim=-1)
        labels = batch["labels"][:, 1:]
        keep = labels != -100
        return -logp[keep].gather(-1, labels[keep].unsqueeze(-1)).mean()

    got = completion_only_loss(model, batch)
    torch.testing.assert_close(got, dense_reference(), rtol=1e-12, atol=1e-12)
    # and what the model's own loss (float32 softmax) gives, to float32 precision
    torch.testing.assert_close(got.float(), model(**batch).loss.float(), rtol=1e-6, atol=1e-6)
    for a, b in zip(
        torch.autograd.grad(got, params),
        torch.autograd.grad(dense_reference(), params),
        strict=True,
    ):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    log_probs, rows = labelled_log_probs(model, batch)
    assert rows.tolist() == [0] * 7 + [1] * 6 + [2] * 1


def test_a_soft_capped_head_falls_back_to_the_models_forward() -> None:
    base, _ = resolve_model("tiny-llama", seed=0)
    base.config.final_logit_softcapping = 30.0
    assert _parts(base) is None
    batch = _batch()
    torch.testing.assert_close(completion_only_loss(base, batch), base(**batch).loss)
