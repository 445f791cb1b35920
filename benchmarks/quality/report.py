"""``python -m benchmarks.quality``'s results: each run's summary from its ``metrics.jsonl``, means
and sample sds over seeds, and ``results.md`` / ``results.json`` with the plots."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.quality.claims import MACRO, Claim, decide, load_claims
from benchmarks.quality.claims import render as render_claims
from benchmarks.quality.plan import CENTRAL
from benchmarks.quality.scores import (
    all_clients_losses,
    central_reference,
    domain_losses,
    gap_closed,
    in_domain_names,
)
from benchmarks.quality.stats import HOLDS
from benchmarks.quality.tables import (
    own_models,
    render_raw,
    render_table,
    runs_table,
    tuned_table,
)
from fedlora.runtime.client_data import OOD_NAME

if TYPE_CHECKING:
    from benchmarks.quality.plan import Budget, RunSpec

MB = 2**20

# --------------------------------------------------------------------------- summaries


def _mean(values: Iterable[float]) -> float | None:
    vals = [float(v) for v in values]
    return sum(vals) / len(vals) if vals else None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``, in round order."""
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return sorted(records, key=lambda r: int(r["round"]))


def scores(ev: Mapping[str, Mapping[str, float]]) -> dict[str, float | None]:
    """Headline scores of one evaluation: in-domain mean loss and accuracy, OOD loss.

    Parameters
    ----------
    ev
        ``{domain: {"loss": x, "acc": y?}}`` as a metrics record's ``eval``.

    Returns
    -------
    dict
        ``id_loss`` (mean loss over the in-domain sets), ``id_acc`` (mean accuracy over the
        in-domain sets that have a choice task, None if none does), ``ood_loss`` (None
        without an OOD set).
    """
    inside = {d: ev[d] for d in in_domain_names(ev)}
    return {
        "id_loss": _mean(e["loss"] for e in inside.values()),
        "id_acc": _mean(e["acc"] for e in inside.values() if "acc" in e),
        "ood_loss": float(ev[OOD_NAME]["loss"]) if OOD_NAME in ev else None,
    }


def summarise_run(
    records: Sequence[Mapping[str, Any]],
    base_eval: Mapping[str, Mapping[str, float]] | None = None,
    clients: int = 4,
) -> dict[str, Any]:
    """Scores and costs of one finished run from its metrics records.

    MB are per client per round (mean over clients, then over rounds); ``cum_mb`` is what
    one client sends plus receives over the whole run (mean over clients). ``curve`` holds
    every evaluated round with the cumulative MB per client up to it (round 0 = base model:
    the run's own round-0 scores, or ``base_eval`` where the run did not score the base).
    ``eval_s`` is the mean wall time of the run's evaluations after round 0.
    ``domain_loss`` is each in-domain set's loss (the owning client's own model where the
    run scored clients' own models, :func:`benchmarks.quality.scores.domain_losses`),
    ``domain_loss_all`` the mean over every client's own model (None: no own models), and
    ``base_domain_loss`` the base model's.
    """
    base: Mapping[str, Any] | None = {"eval": base_eval} if base_eval is not None else None
    for r in records:
        if int(r["round"]) == 0 and "eval" in r:
            base = r
    if base is None:
        raise ValueError("no base model scores: round 0 has none and none were given")
    rounds = [r for r in records if int(r["round"]) > 0]
    if not rounds:
        raise ValueError("a run summary needs at least one trained round")
    up = [_mean(r.get("upload_bytes", {}).values()) or 0.0 for r in rounds]
    down = [_mean(r.get("download_bytes", {}).values()) or 0.0 for r in rounds]
    curve = [{"round": 0, "cum_mb": 0.0, **scores(base["eval"])}]
    cum = 0.0
    for r, u, d in zip(rounds, up, down, strict=True):
        cum += (u + d) / MB
        if "eval" in r:
            curve.append({"round": int(r["round"]), "cum_mb": cum, **scores(r["eval"])})
    last = next(r for r in reversed(rounds) if "eval" in r)
    tasks: dict[str, float] = {}
    for d, e in last["eval"].items():
        for k, v in e.items():
            tasks[f"{d}.{k}"] = float(v)
    out: dict[str, Any] = {
        **scores(last["eval"]),
        "tasks": tasks,
        "mb_up": sum(up) / len(up) / MB,
        "mb_down": sum(down) / len(down) / MB,
        "cum_mb": cum,
        "server_s": _mean(float(r.get("server_seconds", 0.0)) for r in rounds),
        "eval_s": _mean(float(r["eval_seconds"]) for r in rounds if "eval_seconds" in r),
        "rounds": int(rounds[-1]["round"]),
        "curve": curve,
        "base_eval": base["eval"],
        "domain_loss": domain_losses(last["eval"], clients),
        "domain_loss_all": all_clients_losses(last["eval"]),
        "base_domain_loss": domain_losses(base["eval"], clients),
    }
    if "ranks" in rounds[-1]:
        out["final_ranks"] = rounds[-1]["ranks"]
    return out


def spread(values: Sequence[float | None]) -> dict[str, float | None]:
    """Mean and sample standard deviation (None when fewer than two values)."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return {"mean": None, "sd": None, "n": 0}
    sd = statistics.stdev(vals) if len(vals) > 1 else None
    return {"mean": statistics.fmean(vals), "sd": sd, "n": len(vals)}


SCALARS = ("id_loss", "id_acc", "ood_loss", "mb_up", "mb_down", "cum_mb", "server_s", "eval_s")


def normalise(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``runs`` with ``gap`` (and ``gap_all`` for own-model runs): the fraction of the gap
    closed per domain and its macro-average, against the centralised reference's mean over
    its seeds (empty without one), with the floors of ``claims.toml``."""
    central = central_reference([r["domain_loss"] for r in runs if r["label"] == CENTRAL])
    spec = load_claims()
    floors = (spec["gap_floor"], spec["score_floor"])
    out = []
    for r in runs:
        base = r["base_domain_loss"]
        gap = gap_closed(r["domain_loss"], base, central, *floors) if central else {}
        extra = {}
        if central and r.get("domain_loss_all"):
            extra["gap_all"] = gap_closed(r["domain_loss_all"], base, central, *floors)
        out.append({**r, "gap": gap, **extra})
    return out


def aggregate(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per label: mean ± sd over seeds of every scalar, every task, the curve, the
    gap closed per domain and macro (``gap``, from :func:`normalise`), and each seed's gap
    (``per_seed``) for the paired claims."""
    rows: list[dict[str, Any]] = []
    labels = list(dict.fromkeys(r["label"] for r in runs))
    for label in labels:
        mine = [r for r in runs if r["label"] == label]
        row: dict[str, Any] = {
            "label": label,
            "group": mine[0]["group"],
            "method": mine[0]["method"],
            "options": mine[0]["options"],
            "ranks": mine[0]["ranks"],
            "seeds": [r["seed"] for r in mine],
        }
        for k in SCALARS:
            row[k] = spread([r.get(k) for r in mine])
        task_names = list(dict.fromkeys(t for r in mine for t in r["tasks"]))
        row["tasks"] = {t: spread([r["tasks"].get(t) for r in mine]) for t in task_names}
        row["curve"] = _mean_curve([r["curve"] for r in mine])
        row["lr"] = mine[0].get("lr")
        # what made the row's runs: a claim refuses rows of different code or environments
        row["made_by"] = sorted({made_by(r) for r in mine})
        gaps = list(dict.fromkeys(g for r in mine for g in r.get("gap", {})))
        row["per_seed"] = {g: {r["seed"]: r["gap"][g] for r in mine if g in r["gap"]} for g in gaps}
        row["gap"] = {g: spread(list(row["per_seed"][g].values())) for g in gaps}
        alls = [r["gap_all"][MACRO] for r in mine if MACRO in r.get("gap_all", {})]
        row["gap_all"] = spread(alls) if alls else None
        domains = list(dict.fromkeys(d for r in mine for d in r["domain_loss"]))
        row["domain_loss"] = {d: spread([r["domain_loss"].get(d) for r in mine]) for d in domains}
        rows.append(row)
    return rows


def made_by(run: Mapping[str, Any]) -> str:
    """The library tree and environment a run was made by, as one string."""
    env = run.get("environment") or {}
    versions = ",".join(f"{k}={env[k]}" for k in sorted(env))
    return f"{run.get('code')}{'+dirty' if run.get('dirty') else ''} {versions}"


def _mean_curve(curves: Sequence[Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    by_round: dict[int, list[Mapping[str, Any]]] = {}
    for c in curves:
        for p in c:
            by_round.setdefault(int(p["round"]), []).append(p)
    out = []
    for rnd in sorted(by_round):
        pts = by_round[rnd]
        point: dict[str, Any] = {"round": rnd}
        for k in ("cum_mb", "id_loss", "id_acc", "ood_loss"):
            stat = spread([p[k] for p in pts])
            point[k] = stat["mean"]
            point[f"{k}_sd"] = stat["sd"]  # the error bar: sample sd over seeds (None: 1)
        out.append(point)
    return out


def base_row(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The base model's round-0 scores (one evaluation per seed, mean ± sd over seeds)."""
    per_seed: dict[int, Mapping[str, Any]] = {}
    for r in runs:
        per_seed.setdefault(r["seed"], r["base_eval"])
    evs = list(per_seed.values())
    tasks: dict[str, list[float]] = {}
    for ev in evs:
        for d, e in ev.items():
            for k, v in e.items():
                tasks.setdefault(f"{d}.{k}", []).append(float(v))
    heads = [scores(ev) for ev in evs]
    row: dict[str, Any] = {
        "label": "base model (round 0)",
        "group": "base",
        "seeds": sorted(per_seed),
    }
    for k in ("id_loss", "id_acc", "ood_loss"):
        row[k] = spread([h[k] for h in heads])
    row["tasks"] = {t: spread(v) for t, v in tasks.items()}
    return row


def environment() -> dict[str, Any]:
    """Versions and machine, for the record."""
    import torch
    import transformers

    import fedlora

    try:
        import peft

        peft_version = peft.__version__
    except ImportError:  # pragma: no cover - peft is a dependency
        peft_version = "missing"
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft_version,
        "fedlora": getattr(fedlora, "__version__", "unknown"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


@dataclass(frozen=True)
class Outcome:
    """What a benchmark command ran: the finished test runs' records, the runs it did not
    run, the tuned rates and the library versions the records were made by."""

    done: list[dict[str, Any]]
    missing: list[dict[str, Any]]
    tuned: dict[str, Any]
    versions: list[str]


def results_doc(
    planned: Sequence[RunSpec],
    budget: Budget,
    outcome: Outcome,
    command: str,
    made_by: str | None,
    partial: bool,
    fit: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything the report shows, as plain data: ``results.json``, from which
    :func:`render_markdown` and :func:`write_plots` regenerate the page and its plots;
    ``planned``: the test runs the command was asked for (the rows of the stages it chose);
    ``fit`` is the budget's truncation table (:mod:`benchmarks.quality.fit`)."""
    done, missing = outcome.done, outcome.missing
    tuned, versions = outcome.tuned, outcome.versions
    done = normalise(done)
    rows = aggregate(done)
    return {
        "scale": scale(budget),
        "fit": dict(fit or {}),
        "tuned": dict(tuned or {}),
        "code_versions": list(versions),
        "command": command,
        "made_by": made_by,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "partial": partial,
        "budget": asdict(budget),
        "planned_runs": len(planned),
        "finished_runs": sum(1 for r in done if r.get("finished", True)),
        "not_run": list(missing),
        "environment": environment(),
        "base": base_row(done),
        "rows": rows,
        "runs": list(done),
        "claims": [asdict(c) for c in decide(rows)],
    }


PAPERS = (
    "FedSRD: Llama-3.2-3B r=64 (or Qwen2-7B r=32) on all linear layers, 4 clients of one "
    "domain each (code, medical, finance, math), 10 local steps of batch 32 per round; "
    "FLoRIST: models of 1B-7B parameters on Dolly, Alpaca and WizardLM split across 8 clients"
)


def scale(budget: Budget) -> dict[str, Any]:
    """The scale of a budget in the papers' terms: model, adapter, tokens per client."""
    tokens = budget.rounds * budget.local_steps * budget.batch_size * budget.seq_len
    return {
        "model": budget.model,
        "adapter": f"LoRA r={budget.rank} on {budget.target_modules}",
        "clients": budget.clients,
        "tokens_per_client": tokens,
        "papers": PAPERS,
        "out_of_reach": (
            "absolute scores and the papers' benchmarks (HumanEval, MMLU-style, MT-Bench); "
            "effects that need a 3B-7B model or hundreds of local steps; bytes per round at "
            "the papers' sizes (`fedlora comm` computes those from shapes)"
        ),
    }


def plot_names(doc: Mapping[str, Any]) -> list[str]:
    """The PNG files of a results doc: score against round and against MB, per group."""
    groups = dict.fromkeys(r["group"] for r in doc["rows"])
    return [f"{g}_vs_{x}.png" for g in groups for x in ("round", "mb")]


def write_plots(doc: Mapping[str, Any], folder: Path) -> None:
    from benchmarks.common.plots import plot_group

    for name in plot_names(doc):
        group, _, x = name.removesuffix(".png").rpartition("_vs_")
        mine = [r for r in doc["rows"] if r["group"] == group]
        title = f"{group} ({doc['budget']['model']})"
        plot_group(
            mine, doc["base"], "round" if x == "round" else "cum_mb", folder / name, title=title
        )


def render_markdown(doc: Mapping[str, Any]) -> str:
    """``results.md`` of a results doc (a pure function of it)."""
    loads = [x for r in doc["runs"] for x in (r.get("load_1min") or [])]
    load_line = (
        f"- machine load (1-min average at each run's start and end): {min(loads):.2f}–"
        f"{max(loads):.2f} over {len(loads) // 2} runs that recorded it"
        if loads
        else "- machine load: not recorded by these runs"
    )
    claims = [Claim(**c) for c in doc["claims"]]
    sc = doc["scale"]
    md = [
        f"# python -m benchmarks.quality{' (PARTIAL)' if doc['partial'] else ''}",
        "",
        f"Scale: {sc['model']}, {sc['adapter']}, {sc['clients']} clients, at most "
        f"{sc['tokens_per_client']:,} training tokens per client. The papers: {sc['papers']}. "
        f"Out of reach here: {sc['out_of_reach']}.",
        "",
        f"- command: `{doc['command']}`",
        *([f"- runs made by: `{doc['made_by']}`"] if doc.get("made_by") else []),
        f"- code (tree of src/fedlora): {', '.join(doc['code_versions']) or 'not recorded'}",
        f"- date: {doc['date']}",
        f"- runs finished: {doc['finished_runs']} of {doc['planned_runs']}",
        load_line,
        f"- budget: {json.dumps(doc['budget'], sort_keys=True)}",
        f"- environment: {json.dumps(doc['environment'], sort_keys=True)}",
        "",
        "Score: the fraction of the gap between the base model (0) and the centralised "
        "reference (1) closed on each domain's held-out loss, and its macro-average over the "
        "domains (`benchmarks/quality/scores.py`); mean ± sample sd over seeds.",
        "",
        render_table(doc["rows"], doc["base"]),
        *own_models(doc["rows"]),
        "## Held-out loss per domain (nats/token)",
        "",
        render_raw(doc["rows"], doc["base"]),
        *tuned_table(doc.get("tuned", {})),
        "## Claims",
        "",
        "Rows pair by seed; Δ is the mean per-seed difference of the macro gap closed with its "
        "95% paired-t interval (df = n − 1); 'better' is the two-sided paired t-test, 'no "
        "worse' and 'close' are TOST equivalence tests at the margin fixed in `claims.toml` "
        "(`benchmarks/quality/stats.py`), all at α = 0.05. The headline claims (the first six) "
        "are one family, corrected by Holm's method; the others are uncorrected, and every "
        "per-domain verdict is exploratory. The macro weighs each domain alike in gap-closed "
        "units (a nat of a small-gap domain weighs more); a domain whose gap is under the "
        "floor of `claims.toml` is left out, and a run's score is floored there too. A claim "
        "is not decided from rows made by different code or environments. Replications at "
        "fresh seeds are decided on their own and never pooled with other runs; "
        "`benchmarks/quality/README.md` lists them and their results.",
        "",
        render_claims(claims),
        *default_rule_section(claims),
        *fit_section(doc.get("fit") or {}, doc["budget"]["seq_len"]),
        *sittings_section(doc["runs"]),
        *runs_table(doc),
        *(f"![{name}]({name})" for name in plot_names(doc)),
    ]
    return "\n".join(md) + "\n"


COSTS_NOTHING = "stabilising FedSRD costs nothing at the budget"
LEARNS = "stabilised FedSRD learns where the faithful rule diverges (2 local steps)"


def default_rule_section(claims: Sequence[Claim]) -> list[str]:
    """FedSRD's default rule, decided from the two stabilisation claims by the rule fixed
    before their runs: the stabilised rule becomes the default only if both hold."""
    by_text = {c.claim: c.verdict for c in claims}
    if COSTS_NOTHING not in by_text or LEARNS not in by_text:
        return []
    cost, learns = by_text[COSTS_NOTHING], by_text[LEARNS]
    if cost == HOLDS and learns == HOLDS:
        decision = (
            'the stabilised rule (`support = "per-rank"`, `ridge = 1e-3`) becomes the default'
        )
    else:
        decision = (
            "the paper's faithful rule stays the default, because the stabilised rule was not "
            'shown to cost nothing at the budget; set `support = "per-rank"` and '
            "`ridge = 1e-3` under `[method.fedsrd]` (or `[method.fedsrd-e]`) where clients take "
            "few local steps, the regime in which the faithful rule diverged here"
        )
    return [
        "## FedSRD's default rule",
        "",
        "The rule, fixed before the runs: the stabilised rule becomes FedSRD's default if it is "
        "no worse than the faithful one at the budget and learns where the faithful one "
        f"diverges at 2 local steps. At the budget: **{cost}**; at 2 local steps: **{learns}**. "
        f"So {decision}.",
        "",
    ]


def fit_section(fit: Mapping[str, Any], seq_len: int) -> list[str]:
    """The budget's truncation table (what ``train.seq_len`` cuts per domain)."""
    if not fit:
        return []
    from benchmarks.quality.fit import markdown

    return ["## Do the tasks fit?", "", markdown(fit, seq_len), ""]


def sittings_section(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The days the runs were made on: how many, and the machine's load then."""
    days: dict[str, list[Mapping[str, Any]]] = {}
    for r in runs:
        if r.get("wall_s") and r.get("finished_at"):
            days.setdefault(str(r["finished_at"])[:10], []).append(r)
    if not days:
        return []
    lines = ["## Sittings", "", "| day | runs made | minutes | load (1-min) |", "|---|---|---|---|"]
    for day, mine in sorted(days.items()):
        loads = [x for r in mine for x in (r.get("load_1min") or [])]
        load = f"{min(loads):.2f}–{max(loads):.2f}" if loads else "–"
        minutes = sum(float(r["wall_s"]) for r in mine) / 60
        lines.append(f"| {day} | {len(mine)} | {minutes:.0f} | {load} |")
    return [*lines, ""]


def write_report(doc: Mapping[str, Any], folder: Path, plots: bool = True) -> None:
    """``results.json``, ``results.md`` and (if ``plots``) the PNGs of ``doc`` in ``folder``."""
    (folder / "results.json").write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    if plots:
        write_plots(doc, folder)
    (folder / "results.md").write_text(render_markdown(doc))
