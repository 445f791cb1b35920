"""Rebuild the generated parts of ``docs/performance.md`` from the committed benchmark JSON.

``python -m benchmarks.performance_doc`` rewrites every block of the page that sits between
``<!-- generated: NAME -->`` and ``<!-- end generated -->`` from the JSON files it names;
``--check`` only says whether the page is in step with the JSON (a test runs it). The text
around the blocks (what a figure means, the day's conditions) stays written by hand.

Blocks:

``server``
    One row per method of every ``benchmarks/server/results/*.json`` report: its whole-model
    step against its roofline, and the wire (one client's upload encoded and decoded) against
    a copy of its bytes. A report's file name carries its device, date and code.

``targets``
    The server targets (``benchmarks/server/targets.toml``) that each report of
    :data:`TARGET_REPORTS` evaluated, with the figure it measured and pass / fail; the
    targets that apply to another device or setting are left out.

``client``
    One row per method of every ``benchmarks/client/results/client-*.json`` report: a client
    round's training throughput against a bare PyTorch + PEFT loop and TRL's SFTTrainer on
    the same batches, and the share of the round spent outside training.

``scale``
    One row per short federation of every client report's ``--clients`` runs: peak resident
    memory and round time against the number of registered and sampled clients.

``batching``
    One row per ``train.batching`` mode (and TRL) of every scenario of every
    ``benchmarks/client/results/batching-*.json`` report: real (non-padding) tokens per
    second, against padding and against TRL, the padding share and the model-flop
    utilisation.

``round``
    Every ``benchmarks/round/results/*.json`` report: a whole round of each method at the
    demo's budget (measured), in the FedSRD paper's setting (extrapolated from measured steps
    on this machine), and on the paper's hardware (its FedAvg round plus this machine's server
    and wire), each with FedSRD's round over FedAvg's.

``secagg``
    One row per federation size of every ``benchmarks/secagg/results/*.json`` report: a
    trained round plain and under secure aggregation, its seconds and bytes.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "performance.md"
SERVER_RESULTS = ROOT / "benchmarks" / "server" / "results"
SECAGG_RESULTS = ROOT / "benchmarks" / "secagg" / "results"
CLIENT_RESULTS = ROOT / "benchmarks" / "client" / "results"
ROUND_RESULTS = ROOT / "benchmarks" / "round" / "results"
BLOCK = re.compile(r"(<!-- generated: (\w+) -->\n)(.*?)(<!-- end generated -->)", re.S)


def _median(timing: Mapping[str, Any] | None) -> float | None:
    return None if timing is None else float(timing["median"])


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "–" if value is None else f"{value:{spec}}{suffix}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


Rows = Callable[[str, Mapping[str, Any]], list[str]]
"""The table rows of one report, given its name (the file's stem) and its JSON."""


def _table(header: str, paths: Iterable[Path], rows: Rows) -> str:
    """A markdown table (``header``: its column names, ``" | "`` between them) with every
    report's rows, files in name order."""
    lines = [f"| {header} |", "|" + "---|" * len(header.split(" | "))]
    for path in sorted(paths):
        lines.extend(rows(path.stem, json.loads(path.read_text())))
    return "\n".join(lines) + "\n"


def server_rows(name: str, report: Mapping[str, Any]) -> list[str]:
    """The table rows of one server report."""
    machine = report["machine"]
    where = f"{machine['device']}, {machine['cpus']} cores, load {machine['load_average_1min']}"
    rows = []
    for m in report["methods"]:
        step, wire, copy = _median(m["project_full"]), _median(m["wire"]), _median(m["copy"])
        rows.append(
            f"| `{name}` | {where} | {m['method']} | {_fmt(step, '.3g', ' s')} | "
            f"{_fmt(_ratio(step, m.get('roofline_s')), '.2f', '×')} | "
            f"{_fmt(m['upload_bytes'] / 1e6 if m.get('upload_bytes') else None, '.2f')} | "
            f"{_fmt(wire, '.3f', ' s')} | {_fmt(_ratio(wire, copy), '.0f', '×')} |"
        )
    return rows


TARGET_REPORTS = ("server-cpu-2026-12-06-all-d84560c", "server-h200-2026-12-04")
"""The server reports whose target checks the page shows: the latest run of every method on
each device (a newer one replaces its device's entry here)."""


def target_rows(name: str, report: Mapping[str, Any]) -> list[str]:
    """One row per target the report evaluated (``passed`` true or false)."""
    rows = []
    for target in report.get("targets", []):
        if target["passed"] is None:
            continue
        status = "pass" if target["passed"] else "fail"
        note = f" ({target['note']})" if target.get("note") else ""
        rows.append(f"| `{name}` | {target['name']} | {target['measured']}{note} | {status} |")
    return rows


def client_rows(name: str, report: Mapping[str, Any]) -> list[str]:
    """The table rows of one client report (ratios: medians of per-repeat pairs)."""
    before, after = report["load_before"][0], report["load_after"][0]
    where = f"{report['model']}, {report['threads']} threads, load {before:.2g} → {after:.2g}"
    rows = []
    for m in report["methods"]:
        rows.append(
            f"| `{name}` | {where} | {m['method']} | {m['repeats']} | "
            f"{m['train_tokens_per_s']:.0f} | {m['bare_tokens_per_s']:.0f} | "
            f"{m['train_ratio']:.2f}× | {m['round_ratio']:.2f}× | "
            f"{_fmt(m.get('trl_ratio'), '.2f', '×')} | {m['non_training_share']:.1%} |"
        )
    return rows


def scale_rows(name: str, report: Mapping[str, Any]) -> list[str]:
    """The rows of one client report's many-clients runs; memory growth is against the
    method's first run (its fewest registered clients)."""
    runs = report.get("scale", [])
    rows = []
    for r in runs:
        first = next(x for x in runs if x["method"] == r["method"])
        growth = r["peak_rss_bytes"] / first["peak_rss_bytes"] - 1
        rows.append(
            f"| `{name}` | {report['model']} | {r['method']} | {r['registered']} | "
            f"{r['sampled']} | {r['peak_rss_bytes'] / 2**20:.0f} | {growth:+.2%} | "
            f"{r['round_s']:.3f} | {r['round_s_per_ktok']:.3f} | "
            f"{1000 * r['server_s'] / r['sampled']:.2f} |"
        )
    return rows


def batching_rows(name: str, report: Any) -> list[str]:
    """The rows of one batching report (a list of scenarios); ratios of real tokens/s."""
    rows = []
    for scenario in report:
        speed, mfu = scenario["tokens_per_s"], scenario["mfu"]
        data = (
            f"{scenario['data']}, seq {scenario['seq_len']} "
            f"(mean {scenario['mean_length']:.0f} tok)"
        )
        for mode, rate in speed.items():
            padding = scenario["sides"][mode]["padding"]
            rows.append(
                f"| `{name}` | {data} | {mode} | {rate:.0f} | "
                f"{_fmt(_ratio(rate, speed.get('pad')), '.2f')} | "
                f"{_fmt(_ratio(rate, speed.get('trl')), '.2f')} | "
                f"{_fmt(padding, '.1%')} | {_fmt(mfu.get(mode), '.1%')} |"
            )
    return rows


def round_rows(name: str, report: Mapping[str, Any]) -> list[str]:
    """The table rows of one round-cost report: each setting's methods (seconds)."""
    before, after = report["load_before"][0], report["load_after"][0]
    lead = f"| `{name}` | {before:.2g} → {after:.2g} |"
    demo_ratio, paper_ratio = report.get("demo_round_ratio"), report.get("paper_round_ratio")
    rows = []
    for d in report["demo"]:
        rows.append(
            f"{lead} demo budget, measured | {d['method']} | {d['round_s']:.2f} | "
            f"{d['train_s']:.2f} | {d['client_other_s']:.3f} | {d['server_s']:.3f} | – | "
            f"{d['rest_s']:.3f} | {_ratio_cell(d['method'], demo_ratio)} |"
        )
    for p in report["paper"]:
        rows.append(
            f"{lead} paper setting, extrapolated | {p['method']} | {p['round_s']:.1f} | "
            f"{p['client_train_s']:.1f} | – | {p['server_s']:.2f} | {p['wire_s']:.3f} | – | "
            f"{_ratio_cell(p['method'], paper_ratio, '.4f')} |"
        )
    minutes = report.get("on_paper_hardware_minutes", {})
    hardware_ratio = _ratio(minutes.get("fedsrd"), minutes.get("fedavg"))
    for method, value in minutes.items():
        rows.append(
            f"{lead} the paper's FedAvg round + this machine's server and wire | {method} | "
            f"{value * 60:.1f} | – | – | – | – | – | {_ratio_cell(method, hardware_ratio)} |"
        )
    return rows


def _ratio_cell(method: str, ratio: float | None, spec: str = ".3f") -> str:
    """FedSRD's round over FedAvg's, shown on FedSRD's row only."""
    return _fmt(ratio, spec) if method == "fedsrd" else ""


def secagg_rows(name: str, report: Mapping[str, Any]) -> list[str]:
    """The table rows of one secure-aggregation report (KiB = 1024 bytes)."""
    rows = []
    for row in report["rows"]:
        plain, secure = row["plain"], row["secure"]
        kind = "SecAgg" if row["num_shares"] >= row["clients"] else "SecAgg+"
        rows.append(
            f"| `{name}` | {row['clients']} | {row['num_shares']} ({kind}) | "
            f"{plain['seconds']:.2f} | {secure['seconds']:.2f} | {row['extra_seconds']:.2f} | "
            f"{plain['upload_bytes'] / 1024:.1f} / {secure['upload_bytes'] / 1024:.1f} | "
            f"{secure['moved_bytes'] / 1024:.1f} |"
        )
    return rows


@dataclass(frozen=True)
class Block:
    """One generated table: its column names (``" | "`` between them), the report files it
    reads (listed when the page is built) and the rows of one report."""

    header: str
    files: Callable[[], Iterable[Path]]
    rows: Rows

    def __call__(self) -> str:
        return _table(self.header, self.files(), self.rows)


BLOCKS: dict[str, Callable[[], str]] = {
    "server": Block(
        "report | machine | method | whole-model step (median) | × its roofline | "
        "upload (10⁶ bytes) | wire (median) | wire / copy",
        lambda: SERVER_RESULTS.glob("*.json"),
        server_rows,
    ),
    "targets": Block(
        "report | target | measured | status",
        lambda: [SERVER_RESULTS / f"{name}.json" for name in TARGET_REPORTS],
        target_rows,
    ),
    "client": Block(
        "report | model, threads, load | method | repeats | fedlora tok/s | "
        "bare loop tok/s | fedlora / bare, training | "
        "fedlora / bare, whole round | fedlora / TRL | non-training share",
        lambda: CLIENT_RESULTS.glob("client-*.json"),
        client_rows,
    ),
    "scale": Block(
        "report | model | method | registered | sampled | peak MiB | vs first | round s | "
        "round s per 1k tokens | server ms per sampled client",
        lambda: CLIENT_RESULTS.glob("client-*.json"),
        scale_rows,
    ),
    "batching": Block(
        "report | data | mode | real tok/s | × pad | × TRL | padding | MFU",
        lambda: CLIENT_RESULTS.glob("batching-*.json"),
        batching_rows,
    ),
    "secagg": Block(
        "report | clients | neighbours | plain s | secure s | extra s | "
        "upload KiB plain / secure | all secure messages KiB",
        lambda: SECAGG_RESULTS.glob("*.json"),
        secagg_rows,
    ),
    "round": Block(
        "report | load | setting | method | round s | training s | clients' other work s | "
        "server step s | wire s (one way) | rest s | FedSRD / FedAvg",
        lambda: ROUND_RESULTS.glob("*.json"),
        round_rows,
    ),
}


def regenerate(text: str, blocks: Mapping[str, Callable[[], str]] = BLOCKS) -> str:
    """``text`` with every generated block rebuilt; an unknown block name is an error."""

    def rebuild(match: re.Match[str]) -> str:
        name = match.group(2)
        if name not in blocks:
            raise ValueError(f"docs/performance.md: no generator for block {name!r}")
        return match.group(1) + blocks[name]() + match.group(4)

    return BLOCK.sub(rebuild, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.performance_doc")
    parser.add_argument("--check", action="store_true", help="exit 1 if the page is stale")
    args = parser.parse_args(argv)
    text = DOC.read_text()
    fresh = regenerate(text)
    if args.check:
        if fresh != text:
            print("docs/performance.md is stale: run python -m benchmarks.performance_doc")
            return 1
        return 0
    DOC.write_text(fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
