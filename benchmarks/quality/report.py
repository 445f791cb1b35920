"""``python -m benchmarks.quality``'s results: each run's summary from its ``metrics.jsonl``, means
and sample sds over seeds, and ``results.md`` / ``results.json`` with the plots."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.quality.claims import Claim, decide
from benchmarks.quality.claims import render as render_claims
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
    inside = {d: e for d, e in ev.items() if d != OOD_NAME}
    return {
        "id_loss": _mean(e["loss"] for e in inside.values()),
        "id_acc": _mean(e["acc"] for e in inside.values() if "acc" in e),
        "ood_loss": float(ev[OOD_NAME]["loss"]) if OOD_NAME in ev else None,
    }


def summarise_run(
    records: Sequence[Mapping[str, Any]],
    base_eval: Mapping[str, Mapping[str, float]] | None = None,
) -> dict[str, Any]:
    """Scores and costs of one finished run from its metrics records.

    MB are per client per round (mean over clients, then over rounds); ``cum_mb`` is what
    one client sends plus receives over the whole run (mean over clients). ``curve`` holds
    every evaluated round with the cumulative MB per client up to it (round 0 = base model:
    the run's own round-0 scores, or ``base_eval`` where the run did not score the base).
    ``eval_s`` is the mean wall time of the run's evaluations after round 0.
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


def aggregate(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per label: mean ± sd over seeds of every scalar, every task and the curve."""
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
        rows.append(row)
    return rows


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


# --------------------------------------------------------------------------- rendering


def _cell(s: Mapping[str, Any] | None, digits: int = 3) -> str:
    if not s or s.get("mean") is None:
        return "–"
    text = f"{s['mean']:.{digits}f}"
    if s.get("sd") is not None:
        text += f" ± {s['sd']:.{digits}f}"
    return text


def task_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Per-task columns in a stable order: each domain's loss then its accuracy."""
    names = list(dict.fromkeys(t for r in rows for t in r["tasks"]))
    return sorted(names, key=lambda t: (t.split(".")[0] == OOD_NAME, t))


def render_table(rows: Sequence[Mapping[str, Any]], base: Mapping[str, Any] | None) -> str:
    """The results table as Markdown (mean ± sd over seeds)."""
    tasks = [
        t for t in task_columns([*rows, *([base] if base else [])]) if not t.startswith(OOD_NAME)
    ]
    head = [
        "method",
        "seeds",
        "ID loss ↓",
        "ID acc ↑",
        *tasks,
        "OOD loss ↓",
        "MB up /rnd/client",
        "MB down /rnd/client",
        "cum MB /client",
        "server s /rnd",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    all_rows = ([base] if base else []) + list(rows)
    for r in all_rows:
        cells = [r["label"], str(len(r["seeds"])), _cell(r["id_loss"]), _cell(r["id_acc"])]
        cells += [_cell(r["tasks"].get(t)) for t in tasks]
        cells.append(_cell(r["ood_loss"]))
        if r.get("group") == "base":
            cells += ["–", "–", "–", "–"]
        else:
            cells += [
                _cell(r["mb_up"], 4),
                _cell(r["mb_down"], 4),
                _cell(r["cum_mb"], 3),
                _cell(r["server_s"], 3),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


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


def results_doc(
    specs: Sequence[RunSpec],
    budget: Budget,
    done: Sequence[Mapping[str, Any]],
    missing: Sequence[Mapping[str, Any]],
    command: str,
    made_by: str | None,
    partial: bool,
) -> dict[str, Any]:
    """Everything the report shows, as plain data: ``results.json``, from which
    :func:`render_markdown` and :func:`write_plots` regenerate the page and its plots."""
    rows = aggregate(done)
    return {
        "command": command,
        "made_by": made_by,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "partial": partial,
        "budget": asdict(budget),
        "planned_runs": len(specs),
        "finished_runs": sum(1 for r in done if r.get("finished", True)),
        "not_run": list(missing),
        "environment": environment(),
        "base": base_row(done),
        "rows": rows,
        "runs": list(done),
        "claims": [asdict(c) for c in decide(rows)],
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


def _runs_table(doc: Mapping[str, Any]) -> list[str]:
    md = ["## Runs", "", "| run | seed | rounds | finished | minutes | load 1-min |"]
    md += ["|---|---|---|---|---|---|"]
    for r in doc["runs"]:
        minutes = f"{r['wall_s'] / 60:.1f}" if r.get("wall_s") else "–"
        load = "/".join(f"{x:.2f}" for x in r["load_1min"]) if r.get("load_1min") else "–"
        when = r.get("finished_at") or "–"
        md.append(f"| {r['label']} | {r['seed']} | {r['rounds']} | {when} | {minutes} | {load} |")
    md.append("")
    if doc["not_run"]:
        md += ["Not run / failed:", ""]
        md += [f"- {m['label']} seed {m['seed']}: {m['why']}" for m in doc["not_run"]] + [""]
    return md


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
    md = [
        f"# python -m benchmarks.quality{' (PARTIAL)' if doc['partial'] else ''}",
        "",
        f"- command: `{doc['command']}`",
        *([f"- runs made by: `{doc['made_by']}`"] if doc.get("made_by") else []),
        f"- date: {doc['date']}",
        f"- runs finished: {doc['finished_runs']} of {doc['planned_runs']}",
        load_line,
        f"- budget: {json.dumps(doc['budget'], sort_keys=True)}",
        f"- environment: {json.dumps(doc['environment'], sort_keys=True)}",
        "",
        "Mean ± sample sd over seeds; losses are held-out completion losses (nats/token).",
        "",
        render_table(doc["rows"], doc["base"]),
        "## Claims",
        "",
        "In-domain held-out loss decides (lower is better); a difference counts beyond two "
        "standard errors of the seeds (see `benchmarks.quality.claims`).",
        "",
        render_claims(claims),
        *_runs_table(doc),
        *(f"![{name}]({name})" for name in plot_names(doc)),
    ]
    return "\n".join(md) + "\n"


def write_report(doc: Mapping[str, Any], folder: Path, plots: bool = True) -> None:
    """``results.json``, ``results.md`` and (if ``plots``) the PNGs of ``doc`` in ``folder``."""
    (folder / "results.json").write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    if plots:
        write_plots(doc, folder)
    (folder / "results.md").write_text(render_markdown(doc))
