"""Held-out evaluation of the global model: the same scoring wherever a set lives."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from peft import PeftModel

from fedlora.config import RunConfig
from fedlora.eval.scores import choice_accuracy, completion_loss
from fedlora.methods.base import Factored
from fedlora.train.adapters import base_plus

if TYPE_CHECKING:
    from fedlora.runtime.assemble import EvalSet, Federation

Scores = dict[str, dict[str, float]]


def score_sets(
    model: PeftModel,
    tokenizer: Any,
    sets: Mapping[str, EvalSet],
    cfg: RunConfig,
    pad_id: int,
    update: Mapping[str, Factored],
) -> Scores:
    """Scores of ``model``'s base weights plus ``update`` (adapters off) on each set:
    ``loss`` where it has held-out completions, ``acc`` where it has a multiple-choice task.

    The model's base already carries the run's base merges, so ``update`` is only the global
    adapter's part (``method.global_delta``). Used by the server for the sets it owns and by
    each client for its own.
    """
    scores: Scores = {}
    if not sets:
        return scores
    with base_plus(model, update):
        for name, ev in sets.items():
            entry: dict[str, float] = {}
            if ev.loss_examples:  # a multiple-choice task of eval.tasks has no completions
                batch = cfg.eval.batch_size
                entry["loss"] = completion_loss(model, ev.loss_examples, batch, pad_id)
            if ev.questions:
                entry["acc"] = choice_accuracy(
                    model,
                    tokenizer,
                    ev.questions,
                    cfg.train.seq_len,
                    cfg.eval.batch_size,
                    pad_id,
                    cfg.data.template,
                )
            scores[name] = entry
    return scores


def evaluate(fed: Federation, update: Mapping[str, Factored]) -> Scores:
    """Scores of the sets the server owns (``fed.eval_sets``)."""
    return score_sets(fed.model, fed.tokenizer, fed.eval_sets, fed.cfg, fed.pad_id, update)
