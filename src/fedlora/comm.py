"""``fedlora comm``: bytes per round per client of every method, for a named model shape.

Numbers are measured, not computed from a formula: for each registered method a
federation is built from the model's shapes and driven through two rounds with its real
hooks (init_server → broadcast → client_start → synthetic local training → upload →
aggregate → broadcast); every upload and every post-aggregation broadcast is encoded by
:mod:`fedlora.wire` (uploads are also decoded strictly against the method's upload schema)
and its bytes counted. Reported figures are means over the two rounds and all clients.

Rounds are played by the round driver (:mod:`fedlora.runtime.driver`) with synthetic clients
(:mod:`fedlora.runtime.synthetic`: the same hooks, seed streams, wire and strict decoding as a
real run, with a structured synthetic update in place of training); methods keep their
default options, so sparse methods use their default sparsity.

Scaling: every decoder block of a model has identical layer shapes, so by default only the
first block is run and bytes and parameter counts are multiplied by
``blocks / measured_blocks`` (the container's fixed ~70-byte preamble is scaled with them,
an overstatement under 2 KB). ``blocks=`` measures exactly that many blocks, unscaled.
Container overhead (the JSON header, about 200 bytes per tensor) is reported separately.

Units: "MB" in this module's output means MiB (2^20 bytes). That is the convention of the
FedSRD paper's figures: 97,255,424 float32 parameters (Llama-3.2-3B, r=64, all linear
layers) are 389,021,696 bytes = 371.0 MiB.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fedlora import shapes
from fedlora.config import DataConfig, EvalConfig, FederationConfig, RunConfig, WireConfig
from fedlora.errors import FedloraError
from fedlora.methods import registry
from fedlora.methods.base import ClientSpec, Method, Setup
from fedlora.methods.uplink import with_uplink
from fedlora.ops.ratio import RatioRule
from fedlora.runtime.driver import run_round
from fedlora.runtime.run_folder import RunState
from fedlora.runtime.synthetic import SyntheticServer, SyntheticTransport
from fedlora.wire.stats import WireStats

logger = logging.getLogger(__name__)

MIB = 1 << 20
ROUNDS = 2
TRAIN_NOISE = 0.01
DEFAULT_MEASURED_BLOCKS = 1

PAPER_SHAPE, PAPER_RANK = "llama-3.2-3b", 64
PAPER_MB = {"fedavg": 742.0, "ffa": 371.0, "fed_dare": 190.0, "fedsrd": 74.0}
"""FedSRD paper (arXiv 2510.04601), MB per round per client, upload + download, for
Llama-3.2-3B with r=64 on all linear layers (fp32). Fed-DARE and FedSRD are approximate."""


@dataclass(frozen=True)
class Variant:
    """A row of the table beyond a method's defaults: method options and the uplink stage."""

    label: str
    method: str
    options: Mapping[str, Any] = field(default_factory=dict)
    uplink: str = "none"
    secure: bool = False
    """Under secure aggregation (``secagg+``): the upload is the masked vector."""

    def build(self, value_dtype: str, setup: Setup) -> Method:
        inner = registry.build(self.method, self.options, setup=setup)
        return with_uplink(inner, sparsify=self.uplink, rule=RatioRule(), wire_dtype=value_dtype)


VARIANTS = (
    Variant("fedsrd:random", "fedsrd", {"sparsifier": "random"}),
    Variant("fedsrd:magnitude", "fedsrd", {"sparsifier": "magnitude"}),
    Variant("fedsrd:no-reconstruct", "fedsrd", {"reconstruct": False}),
    Variant("fedsrd:dense-decompose", "fedsrd", {"decompose": "dense"}),
    *(
        Variant(f"{m}+importance", m, uplink="importance")
        for m in ("fedavg", "fedprox", "ffa", "flora", "flexlora", "florist")
    ),
    *(Variant(f"{m}:secure", m, secure=True) for m in ("fedavg", "ffa", "fedsrd-e")),
)
"""FedSRD's ablations (its Table 4), its importance plug-in on the methods that send LoRA
factors (its Table 7) and secure aggregation's price (the masked vector is the upload; its
other messages, keys, shares and unmasking, are the upload's header). Every registered
method also gets a row of its defaults."""


def all_rows() -> list[Variant]:
    """Every registered method at its defaults, then :data:`VARIANTS`."""
    return [Variant(name, name) for name in registry.names()] + list(VARIANTS)


class _Tally:
    """Sums of WireStats over the payloads of one direction."""

    def __init__(self) -> None:
        self.count = 0
        self.bytes = 0
        self.overhead = 0
        self.values = 0
        self.nonzero = 0
        self.spent_bits = 0.0
        self.bound_bits = 0.0
        self.encodings: dict[str, dict[str, int]] = {}
        self.dtypes: set[str] = set()

    def add_masked(self, nbytes: int, values: int, overhead: int) -> None:
        """A masked vector of ``values`` words in ``nbytes``, with ``overhead`` bytes of the
        secure stages' other messages (both ways) counted as its header."""
        self.count += 1
        self.bytes += nbytes + overhead
        self.overhead += overhead
        self.values += values
        self.nonzero += values
        self.encodings.setdefault("secure", {})["masked"] = (
            self.encodings.get("secure", {}).get("masked", 0) + 1
        )

    def add(self, stats: WireStats) -> None:
        self.count += 1
        self.bytes += stats.total_bytes
        self.overhead += stats.overhead_bytes
        self.values += stats.values
        self.nonzero += stats.nonzero
        self.dtypes.update(stats.value_dtypes)
        for t in stats.tensors:
            if t.kind == "sparse":
                self.spent_bits += 8 * (t.value_bytes + t.position_bytes)
                self.bound_bits += t.bound_bits
        for group, counts in stats.encodings().items():
            mine = self.encodings.setdefault(group, {})
            for enc, n in counts.items():
                mine[enc] = mine.get(enc, 0) + n

    def summary(self, scale: float) -> dict[str, Any]:
        n = max(self.count, 1)
        ratio = self.spent_bits / self.bound_bits if self.bound_bits > 0 else None
        return {
            "bytes": round(self.bytes / n * scale),
            "mb": self.bytes / n * scale / MIB,
            "overhead_bytes": round(self.overhead / n * scale),
            "values": round(self.values / n * scale),
            "nonzero": round(self.nonzero / n * scale),
            # Entries per payload using each encoding, per group ("A", "B", ...).
            "encodings": {
                g: {e: round(c / n * scale) for e, c in counts.items()}
                for g, counts in self.encodings.items()
            },
            "sparse_bound_ratio": ratio,
        }


def measure_method(
    method: Method,
    *,
    value_dtype: str = "float32",
    rounds: int = ROUNDS,
    secure: bool = False,
) -> tuple[_Tally, _Tally, _Tally]:
    """Play ``rounds`` trained rounds of ``method`` on its setup through the round driver
    (synthetic clients, :mod:`fedlora.runtime.synthetic`), then one more round's broadcast;
    tally the uploads, the broadcasts that follow each aggregation, and (separately) the
    one-time first broadcast. ``secure``: under secure aggregation (uniform weights), where
    an upload is its masked vector and the secure stages' other messages."""
    secure_options: dict[str, Any] = (
        {"secure_aggregation": "secagg+", "weighting": "uniform"} if secure else {}
    )
    setup = method.setup
    cfg = RunConfig(
        seed=setup.seed,
        data=DataConfig(clients=len(setup.clients)),
        federation=FederationConfig(
            rounds=rounds + 1, clip_ratio=0.0, max_weight_ratio=0.0, **secure_options
        ),
        eval=EvalConfig(every=rounds + 2),
        wire=WireConfig(value_dtype=value_dtype),
    )
    server = SyntheticServer(cfg, method, setup)
    transport = SyntheticTransport(server, train_rounds=rounds)
    rs = RunState(
        round=0,
        state=method.init_server(),
        views={c.cid: None for c in setup.clients},
    )
    up, down, first = _Tally(), _Tally(), _Tally()
    for _ in range(rounds):
        record = run_round(server, rs, transport, lambda kind, info: None)
        if record.skipped:
            raise FedloraError(f"{method.name}: round {rs.round} dropped {record.dropped}")
        if secure:
            tb = record.transport_bytes
            for c, masked in record.upload_bytes.items():
                moved = tb["sent"][c] + tb["received"][c] - record.download_bytes[c]
                up.add_masked(masked, record.upload_params[c], moved - masked)
    # One more round for the broadcast after the last aggregation; nobody trains in it, so
    # the server skips it by design (its warning would only be noise here).
    steps_log = logging.getLogger("fedlora.runtime.steps")
    level = steps_log.level
    steps_log.setLevel(logging.ERROR)
    try:
        run_round(server, rs, transport, lambda kind, info: None)
    finally:
        steps_log.setLevel(level)
    for t, transfers in transport.sent.items():
        for tx in transfers:
            assert tx.stats is not None  # send() keeps them
            (first if t == 1 else down).add(tx.stats)
    for transfers in transport.uploaded.values():
        for tx in transfers:
            assert tx.stats is not None
            up.add(tx.stats)
    return up, down, first


def comm_table(
    shape: str,
    rank: int,
    clients: int = 4,
    targets: str | Sequence[str] | None = None,
    *,
    blocks: int | None = None,
    methods: Sequence[str] | None = None,
    value_dtype: str = "float32",
    rounds: int = ROUNDS,
) -> list[dict[str, Any]]:
    """One row per method: measured upload / download bytes per round per client.

    Parameters
    ----------
    shape : model shape name (:func:`fedlora.shapes.names`).
    rank : LoRA rank of every client (alpha = 2·rank).
    clients : number of clients, all sampled every round.
    targets : target modules (default all seven linear layers of a block).
    blocks : measure exactly this many blocks and report them unscaled; default: measure
        :data:`DEFAULT_MEASURED_BLOCKS` blocks and scale to the whole model.
    methods : row labels: method names or :data:`VARIANTS` labels (default: all of them).
    value_dtype : how values travel ("float32", "bfloat16", "float16").
    rounds : rounds simulated (figures are means over them).

    Returns
    -------
    list of dicts; sizes in bytes and MiB ("mb"), a row's ``error`` is set when the method
    cannot run this federation.
    """
    if rank < 1 or clients < 1:
        raise FedloraError(f"rank and clients must be positive, got rank={rank}, clients={clients}")
    total_blocks = shapes.model_shape(shape).layers
    measured = blocks if blocks is not None else min(DEFAULT_MEASURED_BLOCKS, total_blocks)
    reported = blocks if blocks is not None else total_blocks
    scale = reported / measured
    layers = shapes.layer_specs(shape, targets, measured)
    target_names = shapes.parse_targets(targets)
    setup = Setup(
        layers=layers,
        clients=tuple(ClientSpec(k, rank, 2.0 * rank) for k in range(clients)),
        seed=0,
    )
    params = shapes.lora_params(layers, rank) * scale
    paper_applies = (shape, rank, target_names) == (PAPER_SHAPE, PAPER_RANK, shapes.ALL_LINEAR)
    known = {v.label: v for v in all_rows()}
    rows = []
    for name in list(methods) if methods is not None else list(known):
        # An unknown name becomes a row whose build fails, reported like any other failure.
        variant = known.get(name, Variant(name, name))
        row: dict[str, Any] = {
            "method": name,
            "shape": shape,
            "rank": rank,
            "clients": clients,
            "targets": list(target_names),
            "blocks": reported,
            "measured_blocks": measured,
            "lora_params": round(params),
            "dense_mb": 4 * params / MIB,
            "value_dtype": value_dtype,
            "paper_mb": PAPER_MB.get(name) if paper_applies else None,
            "options": dict(variant.options),
            "uplink": variant.uplink,
            "secure": variant.secure,
            "rounds": rounds,
        }
        rows.append(_measured(row, variant, setup, scale))
    return rows


def _measured(row: dict[str, Any], variant: Variant, setup: Setup, scale: float) -> dict[str, Any]:
    """``row`` with the variant's measured bytes, or its ``error`` if it cannot run."""
    started = time.perf_counter()
    try:
        up, down, first = measure_method(
            variant.build(row["value_dtype"], setup),
            value_dtype=row["value_dtype"],
            rounds=row["rounds"],
            secure=variant.secure,
        )
    except Exception as exc:  # one broken or inapplicable method must not hide the others
        logger.warning(
            "comm: method %s failed: %s",
            row["method"],
            exc,
            exc_info=not isinstance(exc, FedloraError),
        )
        return {**row, "error": f"{type(exc).__name__}: {exc}"}
    out = {
        **row,
        "upload": up.summary(scale),
        "download": down.summary(scale),
        "first_download": first.summary(scale),
    }
    out["total_mb"] = out["upload"]["mb"] + out["download"]["mb"]
    out["seconds"] = time.perf_counter() - started
    logger.info("comm: %s measured in %.1f s", row["method"], out["seconds"])
    return out


def _fmt_mb(value: float) -> str:
    # Two decimals for small models so their rows are not all "0.0".
    return f"{value:>9.1f}" if value >= 10 else f"{value:>9.3f}"


def _fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _fmt_enc(encodings: dict[str, dict[str, int]]) -> str:
    return " ".join(f"{g}:{'+'.join(sorted(c))}" for g, c in encodings.items()) or "-"


def render(rows: Sequence[dict[str, Any]], as_json: bool = False) -> str:
    """The table as text (or as JSON with every field)."""
    if as_json:
        return json.dumps({"unit_mb": "MiB (2^20 bytes)", "rows": list(rows)}, indent=2)
    if not rows:
        return "no methods registered"
    head = rows[0]
    scaled = head["blocks"] != head["measured_blocks"]
    width = max(10, *(len(r["method"]) for r in rows))
    lines = [
        f"{head['shape']}: LoRA rank {head['rank']} on {','.join(head['targets'])}, "
        f"{head['blocks']} blocks, {head['clients']} clients; {head['lora_params']:,} LoRA "
        f"parameters = {head['dense_mb']:.1f} MB dense fp32 each way",
        f"MB = MiB (2^20 bytes), per round per client, mean of {head['rounds']} rounds; values "
        f"{head['value_dtype']}"
        + (
            f"; measured on {head['measured_blocks']} of {head['blocks']} identical blocks, "
            f"scaled x{head['blocks'] / head['measured_blocks']:g}"
            if scaled
            else ""
        ),
        "",
        f"{'method':<{width}} {'up MB':>9} {'down MB':>9} {'total MB':>9} {'paper MB':>9} "
        f"{'hdr KB':>7} {'1st dn MB':>9} {'up vals':>12} {'down vals':>12} {'bound up':>8} {'bound dn':>8}  "
        "encodings up / down",
    ]
    for r in rows:
        paper = "-" if r.get("paper_mb") is None else f"{r['paper_mb']:.0f}"
        if "error" in r:
            na = f"{'n/a':>9}"
            lines.append(f"{r['method']:<{width}} {na} {na} {na} {paper:>9}  {r['error']}")
            continue
        u, d = r["upload"], r["download"]
        lines.append(
            f"{r['method']:<{width}} {_fmt_mb(u['mb'])} {_fmt_mb(d['mb'])} {_fmt_mb(r['total_mb'])} "
            f"{paper:>9} {(u['overhead_bytes'] + d['overhead_bytes']) / 1024:>7.1f} "
            f"{_fmt_mb(r['first_download']['mb'])} "
            f"{u['values']:>12,} {d['values']:>12,} {_fmt_ratio(u['sparse_bound_ratio']):>8} "
            f"{_fmt_ratio(d['sparse_bound_ratio']):>8}  {_fmt_enc(u['encodings'])} / "
            f"{_fmt_enc(d['encodings'])}"
        )
    lines.append("")
    lines.append(
        "hdr KB = container header (up + down, included in the MB columns); 1st dn MB = the "
        "one-time first broadcast (not in the per-round columns); bound = "
        "bits of sparse entries / information bound (log2 C(N,k) + value bits), "
        "'-' = no sparse entries"
    )
    return "\n".join(lines)


DESCRIPTION = "Measured upload/download MB (MiB) per round per client of every method."


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``fedlora comm`` (own parser or ``fedlora``'s)."""
    p.add_argument("--shape", required=True, choices=shapes.names())
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--targets", default=None, help="comma-separated, e.g. q_proj,v_proj")
    p.add_argument(
        "--blocks",
        type=int,
        default=None,
        help="measure exactly this many blocks (default: 2, scaled to the model)",
    )
    p.add_argument(
        "--methods",
        default=None,
        help="comma-separated subset of rows: method names or variant labels (e.g. "
        "fedavg+importance, fedsrd:random)",
    )
    p.add_argument("--value-dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedlora comm", description=DESCRIPTION)
    add_arguments(p)
    return p


def main(argv: list[str]) -> int:
    """Entry point of ``fedlora comm``; returns the exit status (1 if any method failed)."""
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """``fedlora comm`` on parsed options (:func:`add_arguments`)."""
    rows = comm_table(
        args.shape,
        args.rank,
        args.clients,
        args.targets,
        blocks=args.blocks,
        methods=args.methods.split(",") if args.methods else None,
        value_dtype=args.value_dtype,
    )
    print(render(rows, args.json))  # the CLI's output, not library logging
    return 1 if any("error" in r for r in rows) else 0
