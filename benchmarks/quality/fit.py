"""Whether a budget's tasks fit its sequence length: per built-in domain, how many of the
training examples, held-out completions and choice questions ``train.seq_len`` cuts.

A cut example is a fragment (the prompt is cut from the left, the completion from the
right), so a budget must cut at most :data:`MAX_CUT` of any domain's examples of any kind.
Measured on exactly what the runs see: each client's training examples (one domain each),
the test held-out sets and choice tasks of a seed, with the budget's tokenizer and template.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from benchmarks.quality.plan import Budget, RunSpec

MAX_CUT = 0.10
"""The largest share of a domain's examples of one kind a budget may cut."""


def truncation(budget: Budget, seed: int = 0, root: Path = Path("runs/fit")) -> dict[str, Any]:
    """Per domain and kind (``train``, ``eval``, ``choice``): ``{"cut": n, "of": total}``."""
    from fedlora import config
    from fedlora.data.types import Example
    from fedlora.models.resolve import resolve_model
    from fedlora.runtime.client_data import OOD_NAME, client_split
    from fedlora.train.batches import encode, encode_parts

    spec = RunSpec("fit", "fit", "fedavg", seed)
    cfg = config.load(None, spec.overrides(budget, root, []))
    _, tokenizer = resolve_model(cfg.model.name, seed=seed)
    seq_len, template = cfg.train.seq_len, cfg.data.template
    split = client_split(cfg.data, seed)
    out: dict[str, Any] = {}
    for k, domain in enumerate(d for d in split.heldout if d != OOD_NAME):
        held = split.heldout[domain]
        train = [encode(tokenizer, ex, seq_len, template) for ex in split.clients[k]]
        evals = [encode(tokenizer, ex, seq_len, template) for ex in held.examples]
        # a question is cut when its prompt and any one choice do not fit together
        cut_questions = sum(
            any(
                sum(map(len, encode_parts(tokenizer, Example(q.prompt, c), template))) > seq_len
                for c in q.choices
            )
            for q in held.questions
        )
        out[domain] = {
            "train": {"cut": sum(e.truncated for e in train), "of": len(train)},
            "eval": {"cut": sum(e.truncated for e in evals), "of": len(evals)},
            "choice": {"cut": cut_questions, "of": len(held.questions)},
        }
    return out


def worst(table: Mapping[str, Mapping[str, Mapping[str, int]]]) -> float:
    """The largest share cut of any domain and kind."""
    return max(
        (v["cut"] / v["of"] for kinds in table.values() for v in kinds.values() if v["of"]),
        default=0.0,
    )


def markdown(table: Mapping[str, Mapping[str, Mapping[str, int]]], seq_len: int) -> str:
    """The table as the report shows it."""
    lines = [
        f"| domain | training examples cut at {seq_len} tokens | held-out items cut | choice questions cut |",
        "|---|---|---|---|",
    ]
    for domain, kinds in table.items():
        cells = [
            f"{v['cut']} of {v['of']} ({100 * v['cut'] / v['of']:.0f}%)" if v["of"] else "–"
            for v in (kinds["train"], kinds["eval"], kinds["choice"])
        ]
        lines.append(f"| {domain} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
