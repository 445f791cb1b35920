"""Held-out evaluation items with real labels, built from held-out records only.

* spam/ham: each held-out email, choices ``("ham", "spam")``.
* which play: held-out passages of a few well-known plays, choices are those play titles.
* definition matching: a held-out word with its gloss and three glosses of other held-out
  words of the same part of speech, order shuffled.
* out of domain: arithmetic word problems (see :mod:`fedlora.data.arithmetic`).

The eval layer scores a :class:`ChoiceItem` by the likelihood of each choice as the
completion of ``prompt``. Builders are pure functions of the records and a seed.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedlora.data import templates
from fedlora.data.arithmetic import arithmetic_examples
from fedlora.data.domains import load_split_records
from fedlora.data.provision import Record
from fedlora.data.types import Example
from fedlora.errors import DataError

PLAYS = (
    "Hamlet",
    "Macbeth",
    "Romeo and Juliet",
    "A Midsummer Night's Dream",
    "Julius Caesar",
    "The Tempest",
)
PLAY_PROMPT = "Which Shakespeare play is this passage from?\n{passage}"
DEFINITION_PROMPT = "Which is the meaning of the {pos} '{word}'?"


@dataclass(frozen=True)
class ChoiceItem:
    """A multiple-choice question; ``choices[answer]`` is correct."""

    prompt: str
    choices: tuple[str, ...]
    answer: int

    def __post_init__(self) -> None:
        if not 0 <= self.answer < len(self.choices):
            raise DataError(f"answer index {self.answer} outside {len(self.choices)} choices")


def spam_items(heldout_emails: Sequence[Record]) -> list[ChoiceItem]:
    """Spam/ham classification of held-out emails (same prompt as training)."""
    labels = templates.EMAIL_LABELS
    return [
        ChoiceItem(templates.email_prompt(r), labels, labels.index(r["label"]))
        for r in heldout_emails
    ]


def play_items(
    heldout_passages: Sequence[Record], plays: Sequence[str] = PLAYS
) -> list[ChoiceItem]:
    """ "Which play is this from?" over held-out passages of ``plays`` (the choices)."""
    choices = tuple(plays)
    unknown = set(choices) - {r["play"] for r in heldout_passages}
    if unknown:
        raise DataError(f"no held-out passages for plays {sorted(unknown)}")
    return [
        ChoiceItem(
            PLAY_PROMPT.format(passage=f"{r['context']}\n{r['next']}"),
            choices,
            choices.index(r["play"]),
        )
        for r in heldout_passages
        if r["play"] in choices
    ]


def definition_items(
    heldout_words: Sequence[Record], seed: int, num_choices: int = 4
) -> list[ChoiceItem]:
    """Definition matching: pick a word's gloss among glosses of other held-out words.

    Distractors come from words with the same part of speech (so grammar does not give the
    answer away) and a gloss different from the correct one.
    """
    glosses: dict[str, set[str]] = defaultdict(set)
    for record in heldout_words:
        glosses[record["pos"]].add(record["gloss"])
    # Sorted so that the draw depends on the records, not on set iteration order.
    by_pos = {pos: sorted(found) for pos, found in glosses.items()}
    rng = np.random.default_rng(seed)
    items: list[ChoiceItem] = []
    for record in heldout_words:
        pool = [g for g in by_pos[record["pos"]] if g != record["gloss"]]
        if len(pool) < num_choices - 1:
            continue
        picks = rng.choice(len(pool), size=num_choices - 1, replace=False)
        choices = [record["gloss"], *(pool[int(i)] for i in picks)]
        order = rng.permutation(num_choices)
        shuffled = tuple(choices[int(i)] for i in order)
        prompt = DEFINITION_PROMPT.format(pos=record["pos"], word=record["word"])
        items.append(ChoiceItem(prompt, shuffled, int(np.flatnonzero(order == 0)[0])))
    return items


def choice_task(domain: str, heldout_records: Sequence[Record], seed: int) -> list[ChoiceItem]:
    """The multiple-choice task of ``domain`` on its held-out records; [] if it has none.

    ``email`` -> :func:`spam_items`, ``literature`` -> :func:`play_items`, ``dictionary`` ->
    :func:`definition_items`; ``code`` has no choice task (it is scored by loss).
    """
    if domain == "email":
        return spam_items(heldout_records)
    if domain == "literature":
        return play_items(heldout_records)
    if domain == "dictionary":
        return definition_items(heldout_records, seed)
    return []


def heldout_choice_tasks(
    cache_dir: str | os.PathLike[str] | None = None, seed: int = 0
) -> dict[str, list[ChoiceItem]]:
    """Build every multiple-choice task from the domains' held-out parts.

    Returns
    -------
    dict
        ``"spam"``, ``"play"`` and ``"definition"`` to their items.
    """
    tasks = {"spam": "email", "play": "literature", "definition": "dictionary"}
    return {
        task: choice_task(domain, load_split_records(domain, cache_dir)[1], seed)
        for task, domain in tasks.items()
    }


def ood_arithmetic(count: int = 200, seed: int = 0) -> list[Example]:
    """Out-of-domain exact-match problems (prompt -> decimal answer) that no client trains on.

    See :func:`fedlora.data.arithmetic.arithmetic_examples`.
    """
    return arithmetic_examples(count, seed)
