"""Procedurally generated arithmetic word problems with exact integer answers.

An out-of-domain probe that no client trains on: it asks whether federated fine-tuning on
code, plays, email and definitions kept (or damaged) a basic skill of the base model. Each
problem is a short story with two or three small numbers and one of four shapes (add, take
away, add then take away, equal groups); answers are non-negative integers.
"""

from __future__ import annotations

import numpy as np

from fedlora.data.types import Example

NAMES = ("Ava", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hiro", "Ines", "Jonas")
THINGS = ("apples", "books", "marbles", "stamps", "pencils", "cookies", "shells", "coins")


def _problem(rng: np.random.Generator) -> tuple[str, int]:
    name = NAMES[int(rng.integers(len(NAMES)))]
    thing = THINGS[int(rng.integers(len(THINGS)))]
    shape = int(rng.integers(4))
    if shape == 0:
        a, b = (int(x) for x in rng.integers(2, 50, size=2))
        text = f"{name} has {a} {thing} and gets {b} more. How many {thing} does {name} have now?"
        return text, a + b
    if shape == 1:
        a = int(rng.integers(10, 60))
        b = int(rng.integers(1, a))
        return f"{name} has {a} {thing} and gives away {b}. How many {thing} are left?", a - b
    if shape == 2:
        a, b = (int(x) for x in rng.integers(5, 40, size=2))
        c = int(rng.integers(1, a + b))
        text = (
            f"{name} has {a} {thing}, buys {b} more, then loses {c}. "
            f"How many {thing} does {name} have?"
        )
        return text, a + b - c
    groups, each = int(rng.integers(2, 10)), int(rng.integers(2, 12))
    text = f"{name} has {groups} boxes with {each} {thing} in each box. How many {thing} in total?"
    return text, groups * each


def arithmetic_examples(count: int, seed: int) -> list[Example]:
    """Return ``count`` word problems as examples whose completion is the exact answer.

    Parameters
    ----------
    count
        Number of problems.
    seed
        Seed of the generator; the same seed gives the same problems.

    Returns
    -------
    list of Example
        ``prompt`` ends with ``"Answer with a number."``; ``completion`` is the decimal
        answer; ``label`` is None.
    """
    if count < 0:
        raise ValueError(f"count must be non-negative, got {count}")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        question, answer = _problem(rng)
        out.append(Example(f"{question} Answer with a number.", str(answer)))
    return out
