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

MAIN_METHODS: tuple[str, ...] = (
    "fedavg",
    "fedprox",
    "fedsrd",
    "fedsrd-e",
    "fed_dare",
    "ffa",
    "florist",
    "flora",
    "flexlora",
    "fedex",
)
"""The main group (issue 17 also names FedICU, which fedlora does not implement)."""
SEEDED_METHODS: frozenset[str] = frozenset(
    {"fedavg", "fedsrd", "fedsrd-e", "fed_dare", "florist", "flora"}
)
"""The two papers' headline comparisons: these run every seed, the others the first one."""
DEFAULT_SEEDS: tuple[int, ...] = (0, 1, 2)

HETERO_RANKS: tuple[int, ...] = (16, 8, 8, 4)
HETERO_METHODS: tuple[str, ...] = ("fedavg", "fedprox", "ffa", "florist", "flora", "flexlora")
"""Methods that aggregate clients of different ranks (the others refuse mixed ranks)."""

FLORIST_TAUS: tuple[float, ...] = (0.80, 0.90, 0.99)
FLORIST_PADS: tuple[str, ...] = ("fresh", "zeros")
FLORIST_TAU_HOMO = 0.90
FLORIST_TAU_HETERO = 0.85

PAPER_OPTIONS: Mapping[str, Mapping[str, Any]] = {
    # The papers' defaults, written out so the results state exactly what ran.
    "fedsrd": {"base": 0.85, "coeff": 0.1, "upper": 0.11, "p_down": 0.8},
    "fedsrd-e": {"base": 0.85, "coeff": 0.1, "upper": 0.11, "p_down": 0.8},
    "fed_dare": {"p_up": 0.9},
    "fedprox": {"mu": 0.01},
    "florist": {"tau": FLORIST_TAU_HOMO, "pad": "fresh"},
}


@dataclass(frozen=True)
class Variant:
    """An ablation: a method with options beyond its paper defaults, or with other plain
    settings (``key=value`` overrides)."""

    label: str
    method: str
    options: Mapping[str, Any] = field(default_factory=dict)
    settings: tuple[str, ...] = ()


ABLATIONS: tuple[Variant, ...] = (
    Variant("fedsrd sparsifier=random", "fedsrd", {"sparsifier": "random"}),
    Variant("fedsrd sparsifier=magnitude", "fedsrd", {"sparsifier": "magnitude"}),
    Variant("fedsrd reconstruct=false", "fedsrd", {"reconstruct": False}),
    Variant("fedsrd decompose=dense", "fedsrd", {"decompose": "dense"}),
    Variant("fedsrd wire=bfloat16", "fedsrd", {}, ('wire.value_dtype="bfloat16"',)),
    Variant("fedavg + importance uplink", "fedavg", {}, ('uplink.sparsify="importance"',)),
)


@dataclass(frozen=True)
class Budget:
    """The training and evaluation budget every run shares.

    LoRA on every linear layer with dropout 0.05 (the papers' adapter), ``alpha = 2 *
    rank`` as in FedSRD; ``lr`` is fixed a priori (never tuned on the evaluation sets);
    ``max_train`` caps each client's examples (a fixed pseudo-random subset, more than
    ``rounds * local_steps * batch_size`` so it never repeats within the budget). Held-out
    loss is scored on ``max_eval`` items per domain and choice accuracy on ``max_choice``
    questions per task, every ``eval_every`` rounds; the base model (round 0) is scored
    once per seed and shared by every run of that seed.

    Sizing of the default: see :data:`SIZING`.
    """

    model: str = "smollm2-135m"
    rounds: int = 8
    local_steps: int = 4
    batch_size: int = 4
    seq_len: int = 64
    lr: float = 5e-4
    rank: int = 8
    target_modules: str = "all-linear"
    dropout: float = 0.05
    hetero_ranks: tuple[int, ...] = HETERO_RANKS
    max_train: int = 256
    max_eval: int = 64
    max_choice: int = 32
    eval_every: int = 8
    weighting: str = "uniform"
    quick_files: bool = False

    def overrides(self) -> list[str]:
        """``key=value`` overrides shared by every run of this budget."""
        return [
            f"model.name={json.dumps(self.model)}",
            f"federation.rounds={self.rounds}",
            f"federation.weighting={json.dumps(self.weighting)}",
            f"train.local_steps={self.local_steps}",
            f"train.batch_size={self.batch_size}",
            f"train.seq_len={self.seq_len}",
            f"train.lr={self.lr!r}",
            f"lora.rank={self.rank}",
            f"lora.alpha={2.0 * self.rank!r}",
            f"lora.target_modules={json.dumps(self.target_modules)}",
            f"lora.dropout={self.dropout!r}",
            f"data.clients={len(self.hetero_ranks)}",
            f"data.max_train_per_client={self.max_train}",
            f"data.max_eval_per_domain={self.max_eval}",
            f"data.max_choice_per_domain={self.max_choice}",
            f"eval.every={self.eval_every}",
        ]


SIZING = """Sizing of the default (2 quiet cores, smollm2-135m, all-linear r=8): a training
step of 4 x 64 tokens takes about 1.25 s, so 8 rounds x 4 clients x 4 steps = 128 steps are
about 160 s; one evaluation (64 loss items per domain, 19 for code, which has no more, and
32 questions per choice task, each question's prompt run once) takes about 50 s (measured
2026-12-01), once per run (round 8; the base is scored once per seed); with loading about
3.8 min per run, and the default plan (39 runs) about 146 min plus three base evaluations.
Measured on 2026-12-01/02 (12 runs, nothing else running, load 1.9-2.1): 3.0-4.7 min a run,
mean 3.63 min, so the 39 runs take about 142 min plus 3 min of base scores: under 150 min,
with little margin (the FedSRD and FLoRA runs are the slow ones).

Why 4 local steps and not fewer: at 2 steps FedSRD diverged (in-domain loss 25 after 8
rounds against FedAvg's 3.4; runs of 2026-12-01). Adam's first steps move every entry by
about the learning rate, so ``|ΔB|`` is nearly constant and FedSRD's importance
``|ΔB[u,v]|·||A[v,:]||`` ranks whole columns by ``||A[v,:]||``: the 4% kept are a few whole
columns, the first B is rank-deficient (smallest singular value 7e-18), and the next
A-round's ``pinv(B)·ΔW`` grows A by 10^3 per A-round. At 4 steps the smallest singular value
of B stays above 2e-3 and training converges."""

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
    max_choice=4,
    eval_every=1,
    quick_files=True,
)
"""``--quick``: the in-code tiny Llama on generated JSONL client files (one task each);
no choice task and no OOD set there, so it checks the plumbing, not the papers' claims."""


@dataclass(frozen=True)
class RunSpec:
    """One federation of the benchmark."""

    label: str
    group: str  # "main" | "ablation" | "florist-tau" | "hetero"
    method: str
    seed: int
    options: Mapping[str, Any] = field(default_factory=dict)
    ranks: tuple[int, ...] = ()
    settings: tuple[str, ...] = ()
    """Plain ``key=value`` overrides beyond the method's options (an ablation's)."""

    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", self.label).strip("_")

    def overrides(self, budget: Budget, out_dir: Path, files: Sequence[str]) -> list[str]:
        """Every override of this run on top of the defaults; the base model is scored
        once per seed apart from the runs (``eval.at_start = false``)."""
        out = [
            *budget.overrides(),
            f"method={self.method}",
            f"seed={self.seed}",
            f"out_dir={json.dumps(str(out_dir))}",
            "eval.at_start=false",
        ]
        for k, v in self.options.items():
            out.append(f"method.{self.method}.{k}={json.dumps(v)}")
        if self.ranks:
            out.append(f"lora.ranks={json.dumps(list(self.ranks))}")
        if files:
            out += ['data.partition="files"', f"data.files={json.dumps(list(files))}"]
        return [*out, *self.settings]


def _paper(method: str, **more: Any) -> dict[str, Any]:
    return {**PAPER_OPTIONS.get(method, {}), **more}


def plan(
    methods: Sequence[str], seeds: Sequence[int], budget: Budget, extras: bool = True
) -> list[RunSpec]:
    """The runs of a benchmark, in the order they are run.

    The headline methods (:data:`SEEDED_METHODS`) come first, seed by seed, so that an
    interrupted benchmark can already decide the papers' main comparisons with a seed
    spread; then the rest of the main group at the first seed; then, at the first seed, the
    ablations, FLoRIST's thresholds with either padding, and the heterogeneous-rank runs.
    """
    if not seeds:
        raise ValueError("at least one seed is needed")
    first = seeds[0]
    headline = [m for m in methods if m in SEEDED_METHODS]
    specs = [RunSpec(m, "main", m, s, _paper(m)) for s in seeds for m in headline]
    specs += [RunSpec(m, "main", m, first, _paper(m)) for m in methods if m not in headline]
    if not extras:
        return specs
    specs += [
        RunSpec(v.label, "ablation", v.method, first, _paper(v.method, **v.options), (), v.settings)
        for v in ABLATIONS
        if v.method in methods
    ]
    if "florist" in methods:
        specs += [
            RunSpec(
                f"florist tau={t:.2f} pad={pad}",
                "florist-tau",
                "florist",
                first,
                _paper("florist", tau=t, pad=pad),
            )
            for t in FLORIST_TAUS
            for pad in FLORIST_PADS
            if not (math.isclose(t, FLORIST_TAU_HOMO) and pad == "fresh")  # the main run
        ]
    ranks = "-".join(str(r) for r in budget.hetero_ranks)
    for m in HETERO_METHODS:
        if m in methods:
            opts = _paper(m, tau=FLORIST_TAU_HETERO) if m == "florist" else _paper(m)
            specs.append(
                RunSpec(f"{m} ranks {ranks}", "hetero", m, first, opts, budget.hetero_ranks)
            )
    return specs


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
