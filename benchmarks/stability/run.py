"""``python -m benchmarks.stability``: FedSRD in the two regimes where it failed, per round.

Regimes (issue 28):

- ``two-steps``: SmolLM2-135M on the four built-in domains, 4 clients, all-linear r=8, lr
  5e-4, batch 4, seq 64, **2** local steps, 8 rounds (the quality budget at 2 steps, where
  FedSRD diverged to an in-domain loss of 25 against FedAvg's 3.4).
- ``tiny-two-steps``: the same on the tiny model (a regression test runs it).
- ``column-split``: the tiny model on a small ShareGPT-style dataset (``messages``) split by a
  column into 3 clients, 8 local steps, 8 rounds (FedSRD's held-out loss went back up).

For each variant (FedAvg as the reference; FedSRD and FedSRD-e faithful, ``ridge = 0``, and
stabilised) it runs the federation and prints, per round: the factor updated, the condition
number of the factor the least-squares step inverts (max over layers), ‖A‖ and ‖B‖, the
numerical rank of the clients' kept ΔB (min over clients and layers, share of r) and the
held-out loss (mean over the clients' or domains' sets). ``--json-out`` keeps it all. Takes
the machine to itself: about 15 minutes for both regimes.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedlora import config
from fedlora.runtime import simulation

TOPICS = ("cooking", "travel", "science")


def sharegpt_rows(n: int) -> list[dict[str, Any]]:
    """``n`` small ShareGPT-style conversations, each with a ``topic`` column."""
    rows = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        question = f"Tell me something about {topic}, item {i}."
        answer = f"Here is fact {i} about {topic}: it matters because of reason {i % 7}."
        rows.append(
            {
                "topic": topic,
                "messages": [
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": answer},
                ],
            }
        )
    return rows


def regime_overrides(regime: str, out: Path, scratch: Path) -> list[str]:
    if regime == "two-steps":
        return [
            'model.name="smollm2-135m"',
            "data.clients=4",
            "data.max_train_per_client=256",
            "data.max_eval_per_domain=16",
            "data.max_choice_per_domain=0",
            "federation.rounds=8",
            'federation.weighting="uniform"',
            "train.local_steps=2",
            "train.batch_size=4",
            "train.seq_len=64",
            "train.lr=0.0005",
            "lora.rank=8",
            "lora.alpha=16.0",
            'lora.target_modules="all-linear"',
            "eval.every=1",
            f"out_dir={json.dumps(str(out))}",
        ]
    if regime == "tiny-two-steps":  # the same on the tiny model: the regression test's
        tiny = ['model.name="tiny-llama"', "data.max_eval_per_domain=8"]
        kept = ("model.name", "data.max_eval_per_domain", "data.max_train_per_client")
        full = regime_overrides("two-steps", out, scratch)
        return [o for o in full if not o.startswith(kept)] + tiny + ["data.max_train_per_client=64"]
    if regime == "column-split":
        data = scratch / "chats.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in sharegpt_rows(120)))
        return [
            'model.name="tiny-llama"',
            f"data.dataset={json.dumps(str(data))}",
            'data.format="messages"',
            'data.partition="column"',
            'data.label_column="topic"',
            "data.clients=3",
            "federation.rounds=8",
            "train.local_steps=8",
            "train.batch_size=4",
            "train.seq_len=64",
            "train.lr=0.001",
            "lora.rank=8",
            "lora.alpha=16.0",
            "eval.every=1",
            f"out_dir={json.dumps(str(out))}",
        ]
    raise SystemExit(f"unknown regime {regime!r}: two-steps or column-split")


def variants(ridge: float) -> list[tuple[str, list[str]]]:
    out: list[tuple[str, list[str]]] = [("fedavg", ["method=fedavg"])]
    for m in ("fedsrd", "fedsrd-e"):
        ridged = f"method.{m}.ridge={ridge!r}"
        per_rank = f'method.{m}.support="per-rank"'
        out += [
            (m, [f"method={m}"]),
            (f"{m} ridge={ridge:g}", [f"method={m}", ridged]),
            (f"{m} per-rank", [f"method={m}", per_rank]),
            (f"{m} per-rank ridge={ridge:g}", [f"method={m}", per_rank, ridged]),
        ]
    return out


def _loss(evaluation: dict[str, Any]) -> float | None:
    losses = [v["loss"] for v in evaluation.values() if isinstance(v, dict) and "loss" in v]
    return sum(losses) / len(losses) if losses else None


def per_round(run: Path) -> list[dict[str, Any]]:
    """The diagnostics of every round of a finished run."""
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        rep = rec.get("server_report") or {}
        kept = [
            r["kept_rank_B"]["min"]
            for r in (rec.get("upload_report") or {}).values()
            if r.get("kept_rank_B")
        ]
        out.append(
            {
                "round": rec["round"],
                "loss": _loss(rec.get("eval") or {}),
                "solved_against": rep.get("solved_against"),
                "cond_max": rep.get("cond_max"),
                "norm_a": rep.get("norm_a"),
                "norm_b": rep.get("norm_b"),
                "kept_rank_B_min": min(kept) if kept else None,
                "warning": rep.get("warning"),
            }
        )
    return out


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(label: str, rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        f"{label}",
        "  round  loss     against  cond_max   ‖A‖        ‖B‖        kept rank B",
    ]
    for r in rows:
        lines.append(
            f"  {r['round']:>5}  {_fmt(r['loss'], '7.3f')}  {r['solved_against'] or '-':>7}  "
            f"{_fmt(r['cond_max'], '9.3g')}  {_fmt(r['norm_a'], '9.3g')}  "
            f"{_fmt(r['norm_b'], '9.3g')}  {_fmt(r['kept_rank_B_min'], '.2f')}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.stability", description=__doc__)
    p.add_argument("--regimes", default="two-steps,column-split")
    p.add_argument("--ridge", type=float, default=1e-3)
    p.add_argument("--only", default="", help="comma-separated variant labels to run")
    p.add_argument("--out", default="", help="run folders here (default: a temporary one)")
    p.add_argument("--json-out", default="")
    args = p.parse_args(argv)
    print(f"load average at start {os.getloadavg()[0]:.2f}", flush=True)
    report: dict[str, Any] = {"ridge": args.ridge, "regimes": {}}
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out) if args.out else Path(tmp)
        for regime in args.regimes.split(","):
            report["regimes"][regime] = {}
            for label, extra in variants(args.ridge):
                if only and label not in only:
                    continue
                out = root / regime / label.replace(" ", "_").replace("=", "")
                cfg = config.load(None, regime_overrides(regime, out, root) + extra)
                simulation.run(cfg)
                rows = per_round(out)
                report["regimes"][regime][label] = rows
                print(table(f"{regime}: {label}", rows), flush=True)
    print(f"load average at end {os.getloadavg()[0]:.2f}", flush=True)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=1) + "\n")
    return 0
