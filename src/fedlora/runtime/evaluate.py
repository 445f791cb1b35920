"""Held-out evaluation of the global model on every domain."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from fedlora.eval.scores import choice_accuracy, completion_loss
from fedlora.methods.base import Factored
from fedlora.train.adapters import base_plus

if TYPE_CHECKING:
    from fedlora.runtime.assemble import Federation


def evaluate(fed: Federation, update: Mapping[str, Factored]) -> dict[str, dict[str, float]]:
    """Scores of the current base weights plus ``update`` (adapters off), per domain:
    ``loss`` on held-out completions, ``acc`` where the domain has a multiple-choice task.

    The shared model's base already carries the run's base merges, so ``update`` is only
    the global adapter's part (``method.global_delta``).
    """
    scores: dict[str, dict[str, float]] = {}
    with base_plus(fed.model, update):
        for name, ev in fed.eval_sets.items():
            entry = {
                "loss": completion_loss(
                    fed.model, ev.loss_examples, fed.cfg.eval.batch_size, fed.pad_id
                )
            }
            if ev.questions:
                entry["acc"] = choice_accuracy(
                    fed.model,
                    fed.tokenizer,
                    ev.questions,
                    fed.cfg.train.seq_len,
                    fed.cfg.eval.batch_size,
                    fed.pad_id,
                )
            scores[name] = entry
    return scores
