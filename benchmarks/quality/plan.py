"""What ``python -m benchmarks.quality`` runs: ``plan.toml`` (the training budgets, the groups
of runs: methods, ablations, FLoRIST's thresholds, heterogeneous ranks) read into plain
types, the runs it expands to, and the small data set of its quick mode."""

from __future__ import annotations

import dataclasses
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
    settings (``key=value`` overrides); ``seeds``: how many of the plan's seeds (0: all)."""

    label: str
    method: str
    options: Mapping[str, Any] = field(default_factory=dict)
    settings: tuple[str, ...] = ()
    seeds: int = 0


@dataclass(frozen=True)
class Budget:
    """The training and evaluation budget every run shares.

    LoRA on every linear layer with dropout 0.05 (the papers' adapter), ``alpha = 2 *
    rank`` as in FedSRD; each row's learning rate is tuned on the validation split from
    ``lr_grid`` (``lr`` is the rate of a row that is not); ``max_train`` caps each client's
    examples (a fixed pseudo-random subset, more than ``rounds * local_steps * batch_size``
    so it never repeats within the budget). Held-out loss is scored on ``max_eval`` items per
    domain and choice accuracy on ``max_choice`` questions per task, every ``eval_every``
    rounds; the base model (round 0) is scored once per seed and shared by every run of that
    seed. The budgets that run are in ``plan.toml``; their sizing in
    benchmarks/quality/README.md.
    """

    model: str
    rounds: int
    local_steps: int
    batch_size: int
    seq_len: int
    lr: float
    lr_grid: tuple[float, ...]
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
    template: str = "chat"
    """``data.template``: ``chatml`` leaves out SmolLM2's default system message."""

    @property
    def clients(self) -> int:
        return len(self.hetero_ranks)

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
            f"data.clients={self.clients}",
            f"data.max_train_per_client={self.max_train}",
            f"data.max_eval_per_domain={self.max_eval}",
            f"data.max_choice_per_domain={self.max_choice}",
            f"eval.every={self.eval_every}",
            f"data.template={json.dumps(self.template)}",
        ]


@dataclass(frozen=True)
class Plan:
    """``plan.toml``: the rows, their seeds, the tuning and the budgets."""

    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    paper_options: Mapping[str, Mapping[str, Any]]
    centralised: Variant
    tuning_seed: int
    ablations: tuple[Variant, ...]
    florist_taus: tuple[float, ...]
    florist_pads: tuple[str, ...]
    florist_tau_homogeneous: float
    florist_tau_heterogeneous: float
    florist_one_seed: frozenset[str]
    hetero_methods: tuple[str, ...]
    hetero_seeded: frozenset[str]
    dp: Mapping[str, Any]
    stability: Mapping[str, Any]
    budgets: Mapping[str, Budget]

    def paper(self, method: str, **more: Any) -> dict[str, Any]:
        """``method``'s paper defaults, with ``more`` on top."""
        return {**self.paper_options.get(method, {}), **more}


def _variant(raw: Mapping[str, Any]) -> Variant:
    return Variant(
        raw["label"],
        raw["method"],
        raw.get("options", {}),
        tuple(raw.get("settings", ())),
        int(raw.get("seeds", 0)),
    )


def load_plan(path: Path | None = None) -> Plan:
    """The plan in ``path`` (default: ``plan.toml`` beside this module)."""
    with (path or Path(__file__).with_name("plan.toml")).open("rb") as f:
        raw = tomllib.load(f)
    budgets = {
        name: Budget(
            **{**b, "hetero_ranks": tuple(b["hetero_ranks"]), "lr_grid": tuple(b["lr_grid"])}
        )
        for name, b in raw["budget"].items()
    }
    florist, hetero = raw["florist"], raw["hetero"]
    if int(raw["tuning"]["seed"]) in raw["seeds"]:
        raise ValueError("plan.toml: the tuning seed must not be a test seed")
    return Plan(
        methods=tuple(raw["methods"]),
        seeds=tuple(raw["seeds"]),
        paper_options=raw["paper_options"],
        centralised=_variant(raw["centralised"]),
        tuning_seed=int(raw["tuning"]["seed"]),
        ablations=tuple(_variant(a) for a in raw.get("ablation", [])),
        florist_taus=tuple(florist["taus"]),
        florist_pads=tuple(florist["pads"]),
        florist_tau_homogeneous=florist["tau_homogeneous"],
        florist_tau_heterogeneous=florist["tau_heterogeneous"],
        florist_one_seed=frozenset(florist.get("one_seed", ())),
        hetero_methods=tuple(hetero["methods"]),
        hetero_seeded=frozenset(hetero.get("seeded", hetero["methods"])),
        dp=raw["dp"],
        stability=raw["stability"],
        budgets=budgets,
    )


CENTRAL = "centralised"


@dataclass(frozen=True)
class RunSpec:
    """One federation of the benchmark."""

    label: str
    group: str  # tune | main | bounds | ablation | florist-tau | hetero | dp | stability
    method: str
    seed: int
    options: Mapping[str, Any] = field(default_factory=dict)
    ranks: tuple[int, ...] = ()
    settings: tuple[str, ...] = ()
    """Plain ``key=value`` overrides beyond the method's options (an ablation's)."""
    tuned_as: str = ""
    """Whose tuned learning rate this row trains with (a method, or ``centralised``)."""
    lr: float | None = None
    """The learning rate, where the row sets it (a tuning row); else the tuned one."""
    local_steps: int | None = None
    """Local steps per round where the row differs from the budget."""

    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", self.label).strip("_")

    def overrides(
        self, budget: Budget, out_dir: Path, files: Sequence[str], lr: float | None = None
    ) -> list[str]:
        """Every override of this run on top of the defaults; the base model is scored
        once per seed apart from the runs (``eval.at_start = false``)."""
        out = [
            *budget.overrides(),
            f"method={self.method}",
            f"seed={self.seed}",
            f"out_dir={json.dumps(str(out_dir))}",
            "eval.at_start=false",
        ]
        rate = self.lr if self.lr is not None else lr
        if rate is not None:
            out.append(f"train.lr={rate!r}")
        if self.local_steps is not None:
            out.append(f"train.local_steps={self.local_steps}")
        for k, v in self.options.items():
            out.append(f"method.{self.method}.{k}={json.dumps(v)}")
        if self.ranks:
            out.append(f"lora.ranks={json.dumps(list(self.ranks))}")
        if files:
            out += ['data.partition="files"', f"data.files={json.dumps(list(files))}"]
        if any(x.startswith("privacy.mode") for x in self.settings):
            # DP rows pair by seed too: seeded noise, so each such run declares itself not
            # private (it measures the utility at the σ its ε calibrates)
            out += [f"privacy.noise_seed={self.seed}", "privacy.not_private=true"]
        return [*out, *self.settings]


def _steps(variant: Variant, budget: Budget) -> int | None:
    """The centralised reference's local steps: the clients' steps of a round together."""
    return budget.local_steps * budget.clients if variant.label == CENTRAL else None


def tuning_spec(the_plan: Plan, key: str, lr: float, budget: Budget) -> RunSpec:
    """The tuning run of row ``key`` (a method, or the centralised reference) at rate ``lr``:
    on the validation split, at the tuning seed."""
    p, c = the_plan, the_plan.centralised
    if key == CENTRAL:
        method, settings, steps = c.method, c.settings, _steps(c, budget)
    else:
        method, settings, steps = key, (), None
    return RunSpec(
        f"tune {key} lr={lr:g}",
        "tune",
        method,
        p.tuning_seed,
        p.paper(method),
        (),
        (*settings, 'data.eval_split="validation"'),
        key,
        lr,
        steps,
    )


def tuning_plan(the_plan: Plan, methods: Sequence[str], budget: Budget) -> list[RunSpec]:
    """One run per tuned row (the methods and the centralised reference) and rate of the
    grid, on the validation split, at the tuning seed (the rule may add rates beyond it)."""
    keys = [*methods, CENTRAL]
    return [tuning_spec(the_plan, k, lr, budget) for k in keys for lr in budget.lr_grid]


def _rows(the_plan: Plan, methods: Sequence[str], budget: Budget) -> list[tuple[RunSpec, int]]:
    """Every row at seed 0 (replaced per seed) with how many seeds it runs (0: all)."""
    p, c = the_plan, the_plan.centralised
    rows = [(RunSpec(m, "main", m, 0, p.paper(m), tuned_as=m), 0) for m in methods]
    central = RunSpec(c.label, "bounds", c.method, 0, p.paper(c.method), (), c.settings, CENTRAL)
    rows.append((dataclasses.replace(central, local_steps=_steps(c, budget)), 0))
    for v in p.ablations:
        if v.method in methods:
            opts = p.paper(v.method, **v.options)
            spec = RunSpec(v.label, "ablation", v.method, 0, opts, (), v.settings, v.method)
            rows.append((spec, v.seeds))
    if "florist" in methods:
        for t in p.florist_taus:
            for pad in p.florist_pads:
                if math.isclose(t, p.florist_tau_homogeneous) and pad == "fresh":
                    continue  # the main row
                label = f"florist tau={t:.2f} pad={pad}"
                opts = p.paper("florist", tau=t, pad=pad)
                spec = RunSpec(label, "florist-tau", "florist", 0, opts, tuned_as="florist")
                rows.append((spec, 1 if label in p.florist_one_seed else 0))
    ranks = "-".join(str(r) for r in budget.hetero_ranks)
    for m in p.hetero_methods:
        if m in methods:
            tau = {"tau": p.florist_tau_heterogeneous} if m == "florist" else {}
            spec = RunSpec(
                f"{m} ranks {ranks}", "hetero", m, 0, p.paper(m, **tau), budget.hetero_ranks
            )
            rows.append((dataclasses.replace(spec, tuned_as=m), 0 if m in p.hetero_seeded else 1))
    if the_plan.dp.get("decided", True):  # else they wait for their pilot (dp_pilot)
        rows += _dp_rows(the_plan, methods)
    rows += _stability_rows(the_plan, methods, budget)
    return rows


def _dp_rows(the_plan: Plan, methods: Sequence[str]) -> list[tuple[RunSpec, int]]:
    dp, rows = the_plan.dp, []
    for m in dp["methods"]:
        if m not in methods:
            continue
        for eps in dp["epsilons"]:
            noise = (
                ["privacy.noise_multiplier=0.0"]
                if math.isinf(eps)
                else [f"privacy.target_epsilon={float(eps)!r}"]
            )
            settings = (
                'privacy.mode="central"',
                f"privacy.clip_norm={float(dp['clip_norm'])!r}",
                *noise,
            )
            opts = the_plan.paper(m, **dp.get("options", {}).get(m, {}))
            label = f"{m} dp eps={'inf' if math.isinf(eps) else f'{eps:g}'}"
            rows.append(
                (RunSpec(label, "dp", m, 0, opts, (), settings, m), int(dp.get("seeds", 0)))
            )
    return rows


def dp_pilot(the_plan: Plan, methods: Sequence[str]) -> list[RunSpec]:
    """The DP rows' pilot while ``[dp] decided`` is false: its rows (``[dp] pilot``) once,
    at the tuning seed on the validation split, so that no test-set number is seen before
    the decision."""
    if the_plan.dp.get("decided", True):
        return []
    wanted = set(the_plan.dp.get("pilot", ()))
    return [
        dataclasses.replace(
            spec,
            label=f"pilot {spec.label}",
            group="dp-pilot",
            seed=the_plan.tuning_seed,
            settings=(*spec.settings, 'data.eval_split="validation"'),
        )
        for spec, _ in _dp_rows(the_plan, methods)
        if spec.label in wanted
    ]


def _stability_rows(
    the_plan: Plan, methods: Sequence[str], budget: Budget
) -> list[tuple[RunSpec, int]]:
    st, rows = the_plan.stability, []
    small = int(st["small_steps"])
    for m in st["methods"]:
        if m not in methods:
            continue
        stable = the_plan.paper(m, **st["stabilised"])
        rows.append((RunSpec(f"{m} stabilised", "stability", m, 0, stable, tuned_as=m), 0))
        for name, opts in (("faithful", the_plan.paper(m)), ("stabilised", stable)):
            spec = RunSpec(f"{m} {name} steps={small}", "stability", m, 0, opts, tuned_as=m)
            rows.append((dataclasses.replace(spec, local_steps=small), 0))
    ref = st["reference"]
    if ref in methods:
        spec = RunSpec(f"{ref} steps={small}", "stability", ref, 0, the_plan.paper(ref))
        rows.append((dataclasses.replace(spec, tuned_as=ref, local_steps=small), 0))
    return rows


def plan(
    the_plan: Plan,
    methods: Sequence[str],
    seeds: Sequence[int],
    budget: Budget,
    extras: bool = True,
) -> list[RunSpec]:
    """The test-set runs of a benchmark, in the order they are run: seed by seed, every row
    that runs that seed, so that an interrupted benchmark holds whole pairs of seeds. The
    main group and the centralised reference first within a seed; without ``extras`` only
    they."""
    if not seeds:
        raise ValueError("at least one seed is needed")
    rows = _rows(the_plan, methods, budget)
    if not extras:
        rows = [(spec, n) for spec, n in rows if spec.group in ("main", "bounds")]
    return [
        dataclasses.replace(spec, seed=seed)
        for i, seed in enumerate(seeds)
        for spec, n in rows
        if n == 0 or i < n
    ]


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
