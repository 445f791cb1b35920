"""The quality benchmark's tables, as Markdown: the headline (gap closed, bytes), the raw
losses per domain, the tuned learning rates, the own-model scores and the runs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from benchmarks.quality.claims import MACRO
from fedlora.runtime.client_data import OOD_NAME


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


def discriminating(rows: Sequence[Mapping[str, Any]], tasks: Sequence[str]) -> list[str]:
    """The accuracy tasks at which the rows do not all score the same (a task every row
    scores alike cannot tell methods apart and is dropped)."""
    keep = []
    for t in tasks:
        means = {round(r["tasks"][t]["mean"], 9) for r in rows if t in r["tasks"]}
        if len(means) > 1:
            keep.append(t)
    return keep


def _gap_cell(s: Mapping[str, Any] | None) -> str:
    return _cell(s, 2)


def render_table(rows: Sequence[Mapping[str, Any]], base: Mapping[str, Any] | None) -> str:
    """The headline table as Markdown: the fraction of the base-to-centralised gap closed,
    macro and per domain (mean ± sd over seeds), the learning rate and the bytes."""
    domains = list(dict.fromkeys(d for r in rows for d in r.get("domain_loss", {})))
    head = [
        "method",
        "seeds",
        "lr",
        "gap closed ↑ (macro)",
        *domains,
        "OOD loss ↓",
        "MB up /rnd/client",
        "MB down /rnd/client",
        "cum MB /client",
        "server s /rnd",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    if base:
        cells = [base["label"], str(len(base["seeds"])), "–", "0 (by definition)"]
        lines.append("| " + " | ".join(cells + ["0"] * len(domains) + [_cell(base["ood_loss"])]))
        lines[-1] += " | – | – | – | – |"
    for r in rows:
        gap = r.get("gap", {})
        lr = f"{r['lr']:g}" if r.get("lr") else "–"
        cells = [r["label"], str(len(r["seeds"])), lr, _gap_cell(gap.get(MACRO))]
        cells += [_gap_cell(gap.get(d)) for d in domains]
        cells += [
            _cell(r["ood_loss"]),
            _cell(r["mb_up"], 4),
            _cell(r["mb_down"], 4),
            _cell(r["cum_mb"], 3),
            _cell(r["server_s"], 3),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render_raw(rows: Sequence[Mapping[str, Any]], base: Mapping[str, Any] | None) -> str:
    """Each domain's raw held-out loss and the choice tasks that discriminate."""
    all_rows = ([base] if base else []) + list(rows)
    # A local-only row also scores every client's own model per domain (``d@client<k>``); its
    # domain losses already take the owning client's, so those columns are left out.
    tasks = [t for t in task_columns(all_rows) if not t.startswith(OOD_NAME) and "@" not in t]
    losses = [t for t in tasks if t.endswith(".loss")]
    accs = discriminating(rows, [t for t in tasks if t.endswith(".acc")])
    head = ["method", "seeds", "mean ID loss ↓", *losses, *accs]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in all_rows:
        loss = r.get("domain_loss")
        cells = [r["label"], str(len(r["seeds"])), _cell(r["id_loss"])]
        cells += [
            _cell(loss[t.removesuffix(".loss")] if loss else r["tasks"].get(t)) for t in losses
        ]
        cells += [_cell(r["tasks"].get(t)) for t in accs]
        lines.append("| " + " | ".join(cells) + " |")
    dropped = sorted(set(t for t in tasks if t.endswith(".acc")) - set(accs))
    note = f"\nChoice tasks dropped (every row scores the same): {', '.join(dropped)}.\n"
    return "\n".join(lines) + "\n" + (note if dropped else "") + own_models_note(rows, base)


def own_models_note(rows: Sequence[Mapping[str, Any]], base: Mapping[str, Any] | None) -> str:
    """What the raw table's columns score for the rows whose clients keep models of their
    own: the domains' losses are the owning clients' models, the rest the global model's."""
    mine = [r for r in rows if r.get("gap_all")]
    if not mine:
        return ""
    labels = ", ".join(r["label"] for r in mine)
    text = (
        f"\nFor {labels}: each domain's loss is that of the model of the client that trains on "
        "it; the mean ID loss, the accuracies and the OOD loss of the headline table score the "
        "shared global model."
    )
    if base:
        same = [r["label"] for r in mine if _same_mean(r["id_loss"], base["id_loss"])]
        if same:
            text += (
                f" For {', '.join(same)} that is the base model's score (to float32 "
                "rounding): the global model leaves the base model's outputs as they were."
            )
    return text + "\n"


def _same_mean(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool:
    if not a or not b or a.get("mean") is None or b.get("mean") is None:
        return False
    # float32 evaluation: a zero adapter reads the base model's loss to about 1e-7
    return abs(a["mean"] - b["mean"]) <= 1e-6 * max(1.0, abs(b["mean"]))


def runs_table(doc: Mapping[str, Any]) -> list[str]:
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


def own_models(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    mine = [r for r in rows if r.get("gap_all")]
    if not mine:
        return []
    md = [
        "Where each client keeps a model of its own, the table scores each domain with the",
        "model of the client that trains on it; the mean over every client's model on every",
        "domain (how a client's model does on the others' data), macro gap closed:",
        "",
    ]
    md += [f"- {r['label']}: {_gap_cell(r['gap_all'])}" for r in mine]
    return [*md, ""]


def tuned_table(tuned: Mapping[str, Any]) -> list[str]:
    if not tuned:
        return []
    grid = list(dict.fromkeys(lr for t in tuned.values() for lr in t["scores"]))
    md = [
        "## Learning rates, tuned on the validation split",
        "",
        "Mean relative validation loss L/L0 over the domains at the tuning seed (lower is "
        "better; `benchmarks/quality/tuning.py`).",
        "",
        "| row | chosen | " + " | ".join(f"lr {g}" for g in grid) + " |",
        "|---|---|" + "---|" * len(grid),
    ]
    for key, t in sorted(tuned.items()):
        cells = [f"{t['scores'][g]:.4f}" if g in t["scores"] else "–" for g in grid]
        chosen = f"{t['lr']:g}" if t["tuned"] else f"{t['lr']:g} (untuned)"
        md.append(f"| {key} | {chosen} | " + " | ".join(cells) + " |")
    return [*md, ""]
