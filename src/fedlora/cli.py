"""``fedlora`` command line: run, data, eval, export, merge, comm.

Every ``FedloraError`` (bad config, bad file, bad payload, bad checkpoint) is printed as one
line and exits with status 2; nothing else in the package prints or exits.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedlora.errors import FedloraError

MB = 2**20


def _mean(values: Any) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


class RoundTable:
    """Prints one line per round: train loss, held-out scores, MB on the wire."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stdout
        self.header_done = False
        self.cum_up = 0.0
        self.cum_down = 0.0
        self.privacy: dict[str, Any] | None = None
        self.bar: Any = None

    def _line(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, file=self.stream, flush=True)

    def __call__(self, kind: str, info: dict[str, Any]) -> None:
        if kind == "status":
            self._line(f"· {info['text']}")
        elif kind == "run_start":
            self._start(info)
        elif kind == "round_start" and self.bar is None:
            from tqdm import tqdm

            from fedlora.train import progress

            self.bar = tqdm(
                total=None,
                desc=f"round {info['round']}",
                unit="client",
                leave=False,
                file=sys.stderr,
                disable=not progress.enabled(),
            )
        elif kind == "round_start":
            self.bar.set_description(f"round {info['round']}")
        elif kind == "client_done" and self.bar is not None:
            self.bar.update(1)
        elif kind == "client_trained":
            self._client(info)
        elif kind == "server_start" and self.bar is not None:
            self.bar.set_description(f"round {info['round']} server")
        elif kind == "eval_start" and self.bar is not None and not self.bar.disable:
            self.bar.set_description(f"round {info['round']} eval")
        elif kind == "eval_start":
            self._line(f"  round {info['round']}: evaluating the global model")
        elif kind == "round_done":
            self._round(info["record"])
        elif kind == "done":
            if self.bar is not None:
                self.bar.close()
                self.bar = None
            self._line(f"cumulative MB per client: up {self.cum_up:.3f}, down {self.cum_down:.3f}")
            if self.privacy is not None:
                p = self.privacy
                mechanism = (
                    f"noise multiplier {p['noise_multiplier']:.3g}, clip {p['clip_norm']:g}, "
                    f"{p['sampling']} sampling at rate {p['sample_rate']:g}, "
                    f"{p['releases']} releases"
                )
                if p.get("epsilon") is None:
                    self._line(f"privacy: NOT PRIVATE, no ε ({p['void']}); {mechanism}")
                else:
                    self._line(
                        f"privacy: ε = {p['epsilon']:.3g} at δ = {p['delta']:g}, "
                        f"{p['adjacency']} (RDP bound {p['epsilon_rdp']:.3g}); {mechanism}"
                    )

    def _start(self, info: dict[str, Any]) -> None:
        """The run's header, each client's data, and the totals of rounds already done."""
        what = (
            f"method={info['method']} model={info['model']} clients={info['clients']} "
            f"rounds={info['rounds']}"
        )
        if info["resumed_after"] is None:
            self._line(f"fedlora run: {what} -> {info['out']}")
        else:
            self._line(
                f"fedlora run: resuming at round {info['resumed_after'] + 1} from {info['out']} "
                f"({what})"
            )
        for c in info["clients_info"]:
            cut = f", {c['cut_by_seq_len']} cut by seq_len" if c["cut_by_seq_len"] else ""
            self._line(
                f"  client {c['client']}: {c['source']} ({c['train_examples']} examples{cut})"
            )
        for rec in info["previous"]:
            if rec.get("round", 0) >= 1:
                self.cum_up += (_mean(rec.get("upload_bytes", {}).values()) or 0.0) / MB
                self.cum_down += (_mean(rec.get("download_bytes", {}).values()) or 0.0) / MB

    def _client(self, info: dict[str, Any]) -> None:
        """A client's local run: on the bar when one is drawn, else one line (a log shows
        the run moving without a bar's noise)."""
        if self.bar is not None and not self.bar.disable:
            if info["loss"] is not None:
                self.bar.set_postfix({"client": info["cid"], "loss": f"{info['loss']:.4f}"})
            return
        what = (
            info["error"]
            if info["error"]
            else f"train loss {info['loss']:.4f} in {info['seconds']:.1f} s"
        )
        self._line(f"  round {info['round']} client {info['cid']}: {what}")

    def _round(self, rec: dict[str, Any]) -> None:
        self.privacy = rec.get("privacy", self.privacy)
        ev = rec.get("eval", {})
        domains = sorted(ev)
        if not self.header_done:
            cols = (
                ["round", "train_loss"] + [f"{d}" for d in domains] + ["MB_up", "MB_down", "cum_MB"]
            )
            self._line(" | ".join(f"{c:>14}" for c in cols))
            self.header_done = True
        up = _mean(rec.get("upload_bytes", {}).values())
        down = _mean(rec.get("download_bytes", {}).values())
        self.cum_up += (up or 0.0) / MB
        self.cum_down += (down or 0.0) / MB
        cells = [str(rec["round"])]
        loss = _mean(rec.get("train_loss", {}).values())
        cells.append("-" if loss is None else f"{loss:.4f}")
        for d in domains:
            e = ev[d]
            parts = [f"{e['loss']:.3f}"] if "loss" in e else []
            parts += [f"{e['acc']:.2f}"] if "acc" in e else []
            cell = "/".join(parts) if "loss" in e else f"acc {parts[0]}" if parts else "-"
            cells.append(cell)
        cells.append("-" if up is None else f"{up / MB:.3f}")
        cells.append("-" if down is None else f"{down / MB:.3f}")
        cells.append(f"{self.cum_up + self.cum_down:.3f}")
        for field, word in (
            ("dropped", "dropped"),
            ("clipped", "clipped"),
            ("weight_capped", "capped"),
        ):
            if rec.get(field):
                cells.append(f"{word} {sorted(rec[field])}")
        if rec.get("skipped"):
            cells.append("SKIPPED")
        self._line(" | ".join(f"{c:>14}" for c in cells))


def cmd_run(args: argparse.Namespace) -> int:
    # The config first: a mistake in it is reported before torch and transformers load.
    from fedlora import config

    if args.resume:
        import json

        run_dir = Path(args.resume)
        cfg_file = run_dir / "config.json"
        if not cfg_file.is_file():
            raise FedloraError(f"nothing to resume in {run_dir}: no config.json")
        raw = json.loads(cfg_file.read_text())
        cfg = config.from_dict(config.apply_overrides(raw, args.overrides))
    else:
        cfg = config.load(args.config, args.overrides)
    from transformers.utils import logging as hf_logging

    from fedlora.runtime import simulation
    from fedlora.train import progress

    hf_logging.disable_progress_bar()  # our own progress is shown; theirs is noise here
    progress.set_mode(cfg.log.progress)
    if args.dry_run:
        from fedlora.plan import dry_run_lines

        print("\n".join(dry_run_lines(cfg)))
        return 0
    if args.runtime == "inprocess":
        if args.superlink:
            raise FedloraError("--superlink needs --runtime flower")
        out = simulation.run(cfg, resume=bool(args.resume), report=RoundTable())
    else:
        from fedlora.runtime.flower.launch import run_flower

        out = run_flower(
            cfg,
            runtime=args.runtime,
            superlink=args.superlink,
            resume=bool(args.resume),
            report=RoundTable(),
            root_certificates=args.root_certificates,
        )
    print(f"metrics: {out / 'metrics.jsonl'}\nadapter: {out / 'adapter'}", flush=True)
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from fedlora.merge import merge_main

    return merge_main(args)


def add_tool(sub: Any, name: str, module_name: str, help_text: str, chosen: bool) -> None:
    """A command whose options and body live in ``module_name`` (``add_arguments`` / ``run``):
    the module owns its subparser, so ``fedlora … --help`` shows its real options. It is
    imported only when its command is ``chosen`` (the modules import torch; the top-level
    help and every other command should not wait for that)."""
    if not chosen:
        sub.add_parser(name, help=help_text)
        return
    import importlib

    module = importlib.import_module(module_name)
    p = sub.add_parser(name, help=help_text, description=module.DESCRIPTION)
    module.add_arguments(p)

    def call(args: argparse.Namespace) -> int:
        return int(module.run(args))

    p.set_defaults(func=call)


def _command(argv: Sequence[str]) -> str | None:
    """The subcommand ``argv`` names (its first word that is not an option)."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    from fedlora import __version__

    parser = argparse.ArgumentParser(
        prog="fedlora",
        description="Communication-efficient federated LoRA fine-tuning of language models.",
    )
    parser.add_argument("--version", action="version", version=f"fedlora {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run",
        help="run (or resume) a federation in-process",
        description="Run a federation described by a TOML config. "
        "Overrides: key=value, e.g. method=fedsrd train.lr=1e-4 "
        "method.fedsrd.p_down=0.5.",
    )
    run.add_argument("--config", "-c", help="TOML config file")
    run.add_argument(
        "--resume", metavar="RUN_DIR", help="continue a killed run from its last complete round"
    )
    run.add_argument(
        "--runtime",
        choices=["inprocess", "flower-sim", "flower"],
        default="inprocess",
        help="where clients run: in this process (default), "
        "Flower's simulation engine, or a Flower deployment (--superlink)",
    )
    run.add_argument("--superlink", metavar="HOST:PORT", help="SuperLink of a Flower deployment")
    run.add_argument("--root-certificates", metavar="PEM", help="CA certificate of a TLS SuperLink")
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="check every path and print the plan (partition, parameters, memory, bytes) "
        "without training",
    )
    run.add_argument("overrides", nargs="*", metavar="key=value")
    run.set_defaults(func=cmd_run)

    merge = sub.add_parser("merge", help="aggregate existing PEFT adapter folders offline")
    merge.add_argument("--method", required=True, help="fedavg, florist, flexlora or flora")
    merge.add_argument("--threshold", type=float, default=None, help="FLoRIST energy threshold")
    merge.add_argument("--rank", type=int, default=None, help="output rank (flexlora, fedavg)")
    merge.add_argument("--weights", default=None, help="comma-separated client weights")
    merge.add_argument("--out", required=True, help="output adapter folder")
    merge.add_argument("adapters", nargs="+", metavar="ADAPTER_DIR")
    merge.set_defaults(func=cmd_merge)

    command = _command(argv)
    for name, module_name, help_text in TOOLS:
        add_tool(sub, name, module_name, help_text, chosen=command == name)
    return parser


TOOLS = (
    ("comm", "fedlora.comm", "bytes per round per client of every method for a model shape"),
    ("export", "fedlora.export", "a run's result as a full (merged) model folder"),
    ("data", "fedlora.plan", "how a config splits its data among clients"),
    ("eval", "fedlora.eval_cmd", "score an adapter on local evaluation files"),
)


def main(argv: Sequence[str] | None = None) -> int:
    # The command line, not model loading, puts this process offline (no hub, ever).
    from fedlora.models.offline import set_offline

    set_offline()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except FedloraError as exc:
        print(f"fedlora: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fedlora: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
