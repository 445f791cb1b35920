"""What ``fedlora bench quality`` runs: the training budget, the groups of runs (methods,
FLoRIST's thresholds, heterogeneous ranks) and the small data set of its quick mode."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HETERO_RANKS: tuple[int, ...] = (16, 8, 8, 4)
HETERO_METHODS: tuple[str, ...] = ("fedavg", "fedprox", "florist", "flora", "flexlora")
"""Methods that aggregate clients of different ranks (the others refuse mixed ranks)."""

FLORIST_TAUS: tuple[float, ...] = (0.80, 0.90, 0.99)
FLORIST_TAU_HOMO = 0.90
FLORIST_TAU_HETERO = 0.85

PAPER_OPTIONS: Mapping[str, Mapping[str, Any]] = {
    # The papers' defaults, written out so the results state exactly what ran.
    "fedsrd": {"base": 0.85, "coeff": 0.1, "upper": 0.11, "p_down": 0.8},
    "fedsrd-e": {"base": 0.85, "coeff": 0.1, "upper": 0.11, "p_down": 0.8},
    "fed_dare": {"p_up": 0.9},
    "fedprox": {"mu": 0.01},
    "florist": {"tau": FLORIST_TAU_HOMO},
}


@dataclass(frozen=True)
class Budget:
    """The training and evaluation budget every run shares.

    ``lr`` is fixed a priori (never tuned on the evaluation sets); ``alpha = 2 * rank`` as
    in FedSRD; ``max_train`` caps each client's examples (a fixed pseudo-random subset, far
    more than ``rounds * local_steps * batch_size`` so it never repeats within the budget).

    Sizing of the default (2 quiet cores, smollm2-135m): a training step of 4 x 64 tokens
    takes about 1.6 s, so 4 rounds x 4 clients x 3 steps = 48 steps is about 77 s; one
    evaluation scores 17 sequences per ``max_eval`` item (5 loss sets + 6 + 2 + 4 choices)
    at about 0.13 s each, so 3 evaluations (rounds 0, 2, 4) at ``max_eval=10`` are about
    66 s; with loading, about 2.5 min per run and 34 runs (2 seeds) in about 87 min.
    """

    model: str = "smollm2-135m"
    rounds: int = 4
    local_steps: int = 3
    batch_size: int = 4
    seq_len: int = 64
    lr: float = 5e-4
    rank: int = 8
    hetero_ranks: tuple[int, ...] = HETERO_RANKS
    max_train: int = 256
    max_eval: int = 10
    eval_every: int = 2
    weighting: str = "uniform"
    quick_files: bool = False

    def overrides(self) -> list[str]:
        """``key=value`` overrides shared by every run of this budget."""
        out = [
            f"model.name={json.dumps(self.model)}",
            f"federation.rounds={self.rounds}",
            f"federation.weighting={json.dumps(self.weighting)}",
            f"train.local_steps={self.local_steps}",
            f"train.batch_size={self.batch_size}",
            f"train.seq_len={self.seq_len}",
            f"train.lr={self.lr!r}",
            f"lora.rank={self.rank}",
            f"lora.alpha={2.0 * self.rank!r}",
            f"data.clients={len(self.hetero_ranks)}",
            f"data.max_train_per_client={self.max_train}",
            f"data.max_eval_per_domain={self.max_eval}",
            f"eval.every={self.eval_every}",
        ]
        return out


DEFAULT_BUDGET = Budget()
QUICK_BUDGET = Budget(
    model="tiny-llama",
    rounds=2,
    local_steps=1,
    batch_size=2,
    seq_len=32,
    lr=5e-3,
    rank=4,
    hetero_ranks=(8, 4, 4, 2),
    max_train=0,
    max_eval=4,
    eval_every=1,
    quick_files=True,
)
"""``--quick``: the in-code tiny Llama on generated JSONL client files (one task each);
no choice task and no OOD set there, so it checks the plumbing, not the papers' claims."""


@dataclass(frozen=True)
class RunSpec:
    """One federation of the benchmark."""

    label: str
    group: str  # "main" | "florist-tau" | "hetero"
    method: str
    seed: int
    options: Mapping[str, Any] = field(default_factory=dict)
    ranks: tuple[int, ...] = ()

    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", self.label).strip("_")

    def overrides(self, budget: Budget, out_dir: Path, files: Sequence[str]) -> list[str]:
        """Every override of this run on top of the defaults."""
        out = [
            *budget.overrides(),
            f"method={self.method}",
            f"seed={self.seed}",
            f"out_dir={json.dumps(str(out_dir))}",
        ]
        for k, v in self.options.items():
            out.append(f"method.{self.method}.{k}={json.dumps(v)}")
        if self.ranks:
            out.append(f"lora.ranks={json.dumps(list(self.ranks))}")
        if files:
            out += ['data.partition="files"', f"data.files={json.dumps(list(files))}"]
        return out


def plan(
    methods: Sequence[str], seeds: Sequence[int], budget: Budget, extras: bool = True
) -> list[RunSpec]:
    """The runs of a benchmark, in the order they are run.

    Every main method over every seed comes first (so an interrupted benchmark still has the
    seed-to-seed spread of the main table), then FLoRIST's other thresholds and the
    heterogeneous-rank runs, seed by seed.
    """
    main = [
        RunSpec(m, "main", m, s, dict(PAPER_OPTIONS.get(m, {}))) for s in seeds for m in methods
    ]
    if not extras:
        return main
    more: list[RunSpec] = []
    for s in seeds:
        if "florist" in methods:
            more += [
                RunSpec(f"florist tau={t:.2f}", "florist-tau", "florist", s, {"tau": t})
                for t in FLORIST_TAUS
                if not math.isclose(t, FLORIST_TAU_HOMO)
            ]
        ranks = "-".join(str(r) for r in budget.hetero_ranks)
        for m in HETERO_METHODS:
            if m not in methods:
                continue
            opts = dict(PAPER_OPTIONS.get(m, {}))
            if m == "florist":
                opts["tau"] = FLORIST_TAU_HETERO
            more.append(RunSpec(f"{m} ranks {ranks}", "hetero", m, s, opts, budget.hetero_ranks))
    return main + more


# --------------------------------------------------------------------------- quick data


def write_quick_files(folder: Path, clients: int, per_client: int = 40) -> list[str]:
    """Deterministic prompt/completion JSONL files, a different small task per client."""
    folder.mkdir(parents=True, exist_ok=True)
    words = [
        "apple",
        "river",
        "stone",
        "cloud",
        "lamp",
        "tiger",
        "bread",
        "glass",
        "music",
        "paper",
        "north",
        "green",
    ]
    tasks = [
        lambda i: (f"Add {i} and {i + 3}.", f"{i} plus {i + 3} is {2 * i + 3}."),
        lambda i: (f"Reverse the word {words[i % 12]}.", words[i % 12][::-1]),
        lambda i: (f"Spell {words[(i * 5) % 12]} in capitals.", words[(i * 5) % 12].upper()),
        lambda i: (f"Count from {i} to {i + 4}.", " ".join(str(j) for j in range(i, i + 5))),
    ]
    paths = []
    for k in range(clients):
        path = folder / f"client{k}.jsonl"
        with path.open("w", encoding="utf-8") as f:
            for i in range(per_client):
                prompt, completion = tasks[k % len(tasks)](i)
                f.write(json.dumps({"prompt": prompt, "completion": completion}) + "\n")
        paths.append(str(path))
    return paths
