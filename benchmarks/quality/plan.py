"""What ``python -m benchmarks.quality`` runs: ``plan.toml`` (the training budgets, the groups
of runs: methods, ablations, FLoRIST's thresholds, heterogeneous ranks) read into plain
types, the runs it expands to, and the small data set of its quick mode."""

from __future__ import annotations

import json
import math
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Variant:
    """An ablation: a method with options beyond its paper defaults, or with other plain
    settings (``key=value`` overrides)."""

    label: str
    method: str
    options: Mapping[str, Any] = field(default_factory=dict)
    settings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Budget:
    """The training and evaluation budget every run shares.

    LoRA on every linear layer with dropout 0.05 (the papers' adapter), ``alpha = 2 *
    rank`` as in FedSRD; ``lr`` is fixed a priori (never tuned on the evaluation sets);
    ``max_train`` caps each client's examples (a fixed pseudo-random subset, more than
    ``rounds * local_steps * batch_size`` so it never repeats within the budget). Held-out
    loss is scored on ``max_eval`` items per domain and choice accuracy on ``max_choice``
    questions per task, every ``eval_every`` rounds; the base model (round 0) is scored
    once per seed and shared by every run of that seed. The budgets that run are in
    ``plan.toml``; their sizing in benchmarks/quality/README.md.
    """

    model: str
    rounds: int
    local_steps: int
    batch_size: int
    seq_len: int
    lr: float
    rank: int
    target_modules: str
    dropout: float
    hetero_ranks: tuple[int, ...]
    max_train: int
    max_eval: int
    max_choice: int
    eval_every: int
    weighting: str
    quick_files: bool

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


@dataclass(frozen=True)
class Plan:
    """``plan.toml``: the methods, seeds, ablations, FLoRIST's settings and the budgets."""

    methods: tuple[str, ...]
    seeded: frozenset[str]
    seeds: tuple[int, ...]
    paper_options: Mapping[str, Mapping[str, Any]]
    ablations: tuple[Variant, ...]
    florist_taus: tuple[float, ...]
    florist_pads: tuple[str, ...]
    florist_tau_homogeneous: float
    florist_tau_heterogeneous: float
    hetero_methods: tuple[str, ...]
    budgets: Mapping[str, Budget]

    def paper(self, method: str, **more: Any) -> dict[str, Any]:
        """``method``'s paper defaults, with ``more`` on top."""
        return {**self.paper_options.get(method, {}), **more}


def load_plan(path: Path | None = None) -> Plan:
    """The plan in ``path`` (default: ``plan.toml`` beside this module)."""
    with (path or Path(__file__).with_name("plan.toml")).open("rb") as f:
        raw = tomllib.load(f)
    budgets = {
        name: Budget(**{**b, "hetero_ranks": tuple(b["hetero_ranks"])})
        for name, b in raw["budget"].items()
    }
    return Plan(
        methods=tuple(raw["methods"]),
        seeded=frozenset(raw["seeded"]),
        seeds=tuple(raw["seeds"]),
        paper_options=raw["paper_options"],
        ablations=tuple(
            Variant(a["label"], a["method"], a.get("options", {}), tuple(a.get("settings", ())))
            for a in raw.get("ablation", [])
        ),
        florist_taus=tuple(raw["florist"]["taus"]),
        florist_pads=tuple(raw["florist"]["pads"]),
        florist_tau_homogeneous=raw["florist"]["tau_homogeneous"],
        florist_tau_heterogeneous=raw["florist"]["tau_heterogeneous"],
        hetero_methods=tuple(raw["hetero"]["methods"]),
        budgets=budgets,
    )


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


def plan(
    the_plan: Plan,
    methods: Sequence[str],
    seeds: Sequence[int],
    budget: Budget,
    extras: bool = True,
) -> list[RunSpec]:
    """The runs of a benchmark, in the order they are run.

    The headline methods (``seeded``) come first, seed by seed, so that an interrupted
    benchmark can already decide the papers' main comparisons with a seed spread; then the
    rest of the main group at the first seed; then, at the first seed, the ablations,
    FLoRIST's thresholds with either padding, and the heterogeneous-rank runs.
    """
    if not seeds:
        raise ValueError("at least one seed is needed")
    p, first = the_plan, seeds[0]
    headline = [m for m in methods if m in p.seeded]
    specs = [RunSpec(m, "main", m, s, p.paper(m)) for s in seeds for m in headline]
    specs += [RunSpec(m, "main", m, first, p.paper(m)) for m in methods if m not in headline]
    if not extras:
        return specs
    specs += [
        RunSpec(
            v.label, "ablation", v.method, first, p.paper(v.method, **v.options), (), v.settings
        )
        for v in p.ablations
        if v.method in methods
    ]
    if "florist" in methods:
        specs += [
            RunSpec(
                f"florist tau={t:.2f} pad={pad}",
                "florist-tau",
                "florist",
                first,
                p.paper("florist", tau=t, pad=pad),
            )
            for t in p.florist_taus
            for pad in p.florist_pads
            if not (math.isclose(t, p.florist_tau_homogeneous) and pad == "fresh")  # the main run
        ]
    ranks = "-".join(str(r) for r in budget.hetero_ranks)
    for m in p.hetero_methods:
        if m in methods:
            tau = {"tau": p.florist_tau_heterogeneous} if m == "florist" else {}
            specs.append(
                RunSpec(
                    f"{m} ranks {ranks}", "hetero", m, first, p.paper(m, **tau), budget.hetero_ranks
                )
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
