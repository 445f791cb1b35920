"""Completion-only loss without the logits nobody scores.

A causal LM's head turns every position's hidden state into a vocabulary-sized row of logits,
then the loss ignores every position whose next token is a prompt token. With a 49k-word
vocabulary that head is a large share of a small model's work. Here the backbone runs as
usual, and only the positions whose next-token label is scored go through the head: the
same loss as ``model(**batch).loss`` (mean cross-entropy over labelled tokens), the same
gradients, less work. Models whose head does more than a linear map (logit soft-capping or
scaling) fall back to the model's own forward.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

IGNORE = -100


def _parts(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """The backbone and the head of a (PEFT-wrapped) causal LM, or None if its head is not
    a plain projection."""
    getter: Any = getattr(model, "get_base_model", None)
    inner: Any = getter() if callable(getter) else model
    backbone = getattr(inner, "model", None)
    head = getattr(inner, "lm_head", None)
    config = getattr(inner, "config", None)
    if backbone is None or head is None or config is None:
        return None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in ("final_logit_softcapping", "logit_scale", "logits_scaling", "lm_head_multiplier"):
        if getattr(text, name, None) not in (None, 1.0):
            return None
    return backbone, head


def labelled_log_probs(
    model: nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of every labelled next token, and the row each belongs to.

    Returns ``(log_probs, rows)``: 1-D tensors over the labelled positions of the batch, in
    row-major order.
    """
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE
    # A padded batch has an attention mask; a packed one has position ids that restart at
    # each example instead, from which the model builds a block-diagonal causal mask.
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    parts = _parts(model)
    if parts is None:
        picked = model(**inputs).logits[:, :-1][keep]
    else:
        backbone, head = parts
        hidden = backbone(**inputs, use_cache=False).last_hidden_state
        picked = head(hidden[:, :-1][keep])
    if picked.dtype != torch.float64:
        picked = picked.float()  # at least float32 for the softmax, as the model's own loss
    targets = labels[keep]
    log_probs = -F.cross_entropy(picked, targets, reduction="none")
    rows = keep.nonzero()[:, 0]
    return log_probs, rows


def completion_only_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy over the labelled tokens (what ``model(**batch).loss`` gives)."""
    log_probs, _ = labelled_log_probs(model, batch)
    return -log_probs.mean()
