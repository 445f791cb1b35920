"""No client's bytes can raise out of the server (property-based).

For every method (and the uplink plug-in), with and without the guard's clip and with
differential privacy where it composes, one client of an honest round is replaced by an
arbitrary well-formed but wrong upload: every entry of any wire kind (dense, sparse with
coded positions, sparse with a seeded mask, a seeded init, empty), any finite or extreme
values, the right or a wrong shape, names missing or extra, any reported sample count. The
server step must return, drop or bound that client, and keep a finite state. The Flower reply
path is driven the same way: any field of a train or evaluation reply replaced by any value
Flower can carry, read by the server, and written to the round's record as strict JSON.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Message, RecordDict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedlora import config
from fedlora.methods.base import Method, ServerState, Setup, Tensor
from fedlora.methods.registry import build, names
from fedlora.methods.uplink import with_uplink
from fedlora.ops.prng import seeded_keep_mask
from fedlora.ops.ratio import RatioRule
from fedlora.ops.seeded_init import INIT_RULES, SeededInit
from fedlora.ops.sparse import Sparse
from fedlora.runtime import privacy
from fedlora.runtime.driver import RoundFacts, round_record
from fedlora.runtime.flower.fields import MAX_TEXT
from fedlora.runtime.flower.protocol import (
    EvalReport,
    eval_report_content,
    report_content,
)
from fedlora.runtime.flower.server import _collect, _eval_reply
from fedlora.runtime.outcome import ClientOutcome, Transfer
from fedlora.runtime.records import Evaluation, dumps
from fedlora.runtime.steps import Received, server_step
from fedlora.wire import encode
from tests.methods.helpers import run_round, tiny_setup

HOSTILE = 1
METHODS = sorted(names()) + ["fedavg+uplink"]
COMPOSABLE = {"fedavg", "fedprox", "ffa", "fed_dare", "rolora", "fedsvd", "fed_sb", "fedsa"}
SETTLE = settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)


def method_of(name: str, setup: Setup) -> Method:
    if name == "fedavg+uplink":
        inner = build("fedavg", setup=setup)
        return with_uplink(inner, sparsify="importance", rule=RatioRule())
    return build(name, setup=setup)


@dataclass(frozen=True)
class Honest:
    """One honest round of a method: the state it starts from, each client's reference and
    encoded upload."""

    method: Method
    setup: Setup
    state: ServerState
    references: dict[int, dict[str, Tensor]]
    uploads: dict[int, tuple[bytes, int]]


@cache
def honest(name: str) -> Honest:
    setup = tiny_setup(weighting="uniform")
    method = method_of(name, setup)
    first = run_round(method, method.init_server(), setup)  # a state past round 0
    result = run_round(method, first.state, setup, views=first.views)
    references = {
        cid: method.upload_reference(start, setup.client(cid))
        for cid, start in result.starts.items()
    }
    uploads = {u.cid: (encode(u.payload), u.n_samples) for u in result.uploads}
    return Honest(method, setup, first.state, references, uploads)


SCALES = (0.0, 1e-30, 1.0, 1e6, 1e30, 3e38)


@st.composite
def entry(draw: st.DrawFn, shape: tuple[int, ...]) -> Any:
    kind = draw(st.sampled_from(("dense", "sparse", "seeded-mask", "seeded-init", "empty")))
    if draw(st.integers(0, 9)) == 0:  # now and then a wrong shape
        shape = (shape[0] + 1, *shape[1:])
    numel = math.prod(shape)
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    scale = draw(st.sampled_from(SCALES))
    if kind == "dense":
        return torch.randn(shape, generator=gen) * scale
    if kind == "empty":
        return Sparse(shape, torch.zeros(0, dtype=torch.int64), torch.zeros(0))
    if kind == "seeded-init":
        return SeededInit((shape[0], max(1, shape[-1])), draw(st.integers(0, 2**62)), INIT_RULES[0])
    if kind == "seeded-mask":
        seed, keep = draw(st.integers(0, 2**63)), draw(st.floats(0.0, 1.0))
        idx = np.flatnonzero(seeded_keep_mask(seed, numel, keep).numpy())
        values = torch.randn(idx.size, generator=gen) * scale
        return Sparse(shape, torch.from_numpy(idx.astype(np.int64)), values, seed, keep)
    count = draw(st.integers(1, numel))
    idx = torch.randperm(numel, generator=gen)[:count].sort().values
    return Sparse(shape, idx, torch.randn(count, generator=gen) * scale)


@st.composite
def upload(draw: st.DrawFn, name: str) -> bytes:
    schema = honest(name).method.upload_schema(honest(name).setup.client(1))
    wanted = dict(schema)
    if wanted and draw(st.integers(0, 9)) == 0:
        wanted.pop(draw(st.sampled_from(sorted(wanted))))
    payload = {n: draw(entry(e.shape)) for n, e in wanted.items()}
    if draw(st.integers(0, 9)) == 0:
        payload["l0.extra"] = torch.ones(2, 2)
    return encode(payload)


COUNTS = st.one_of(st.integers(-5, 2**60), st.just(True), st.just(0))


def step(name: str, data: bytes, n_samples: Any, overrides: list[str], dp: bool) -> None:
    h = honest(name)
    cfg = config.load(None, overrides)
    plan = (
        privacy.Plan(1.0, 1.0, "fixed", 1.0, 3.0, 0.1, private=False, noise_seed=1) if dp else None
    )
    uploads = {**h.uploads, HOSTILE: (data, n_samples)}
    out = server_step(
        h.method,
        h.state,
        cfg,
        Received(uploads, {}, h.references, h.state.round + 1),
        dp=plan,
    )
    assert HOSTILE in out.accepted or HOSTILE in out.dropped
    assert set(out.accepted) | set(out.dropped) == set(uploads)
    assert all(bool(torch.isfinite(t).all()) for t in out.state.tensors.values())
    if not dp and HOSTILE in out.dropped:  # the honest clients still count
        assert {0, 2} <= set(out.accepted) or out.skipped


GUARDS = {
    "guarded": [],
    "unguarded": ["federation.clip_ratio=0", "federation.max_weight_ratio=0"],
}


def _property(name: str, guard: str, dp: bool) -> Any:
    @SETTLE
    @given(data=upload(name), n_samples=COUNTS)
    def prop(data: bytes, n_samples: Any) -> None:
        step(name, data, n_samples, GUARDS[guard], dp)

    return prop


def test_no_upload_raises_out_of_the_server_step_for_any_method() -> None:
    for name in METHODS:
        for guard in GUARDS:
            _property(name, guard, dp=False)()


def test_no_upload_raises_out_of_the_private_server_step() -> None:
    for name in sorted(COMPOSABLE):
        _property(name, "guarded", dp=True)()


# --------------------------------------------------------------------------- Flower replies

FIELD_VALUES = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=50),
    st.just("x" * 100_000),
    st.just('{"a": NaN}'),
    st.just('{"' + "k" * 300 + '": 1}'),
    st.just(json.dumps({"rho": {"mean": 0.5}})),
    st.binary(max_size=64),
)
TRAIN_FIELDS = [
    "cid", "round", "status", "nonce", "n_samples", "tokens", "truncated", "train_seconds",
    "overhead_seconds", "upload", "train_loss", "error", "upload_report", "encodings", "params",
]  # fmt: skip
EVAL_FIELDS = ["cid", "round", "status", "scores", "nonce", "error"]


class Nodes:
    def forget(self, cid: int) -> None:
        pass


class Transport:
    """What ``_collect`` and ``_eval_reply`` use of the Flower transport."""

    def __init__(self) -> None:
        self.nodes, self.needs_sync = Nodes(), set()

    def read(self, cid: int, reply: Message, parse: Any) -> Any:
        return parse(reply.content)


class Fed:
    """What ``round_record`` uses of the federation."""

    def __init__(self) -> None:
        self.cfg = config.load(None, [])
        self.setup = tiny_setup()
        self.method = build("fedavg", setup=self.setup)
        self.privacy = None


def _edited(content: RecordDict, edits: dict[str, Any]) -> Message:
    rec = content.config_records["fedlora"]
    values = {k: v for k, v in rec.items() if edits.get(k, 0) is not None}
    values.update({k: v for k, v in edits.items() if v is not None})
    return Message(RecordDict({"fedlora": ConfigRecord(values)}), 1001, "train")


def _strict(record: dict[str, Any]) -> None:
    line = dumps(record)  # raises on NaN or Infinity
    for text in _strings(json.loads(line)):
        assert len(text) <= MAX_TEXT + 1024, len(text)


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [k, *_strings(v)]]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


@SETTLE
@given(
    edits=st.dictionaries(
        st.sampled_from(TRAIN_FIELDS), st.one_of(st.none(), FIELD_VALUES), max_size=4
    )
)
def test_no_train_reply_raises_out_of_the_server_or_its_record(edits: dict[str, Any]) -> None:
    honest_reply = ClientOutcome(
        cid=1,
        round=2,
        upload=Transfer(encode({"l0.A": torch.ones(4, 16)}), 0, {}),
        n_samples=10,
        train_loss=0.5,
        nonce="n",
        report={"rho": {"mean": 0.5}},
    )
    reply = _edited(report_content(honest_reply), edits)

    got = _collect(2, 1, "n", reply, Transport())  # type: ignore[arg-type]

    assert got.error is None or len(got.error) <= MAX_TEXT + 200
    fed, ok = Fed(), got.error is None
    outcome = server_step(
        fed.method,
        fed.method.init_server(),
        fed.cfg,
        Received(
            {1: (got.upload.data, got.n_samples)} if ok and got.upload else {},
            {} if ok else {1: got.error},
            {1: {}},
        ),
    )
    facts = RoundFacts(2, [1], [], {1: got}, {1} if ok and got.upload else set(), outcome, {})
    _strict(round_record(fed, facts, None, 1.0).to_json())  # type: ignore[arg-type]


@SETTLE
@given(
    edits=st.dictionaries(
        st.sampled_from(EVAL_FIELDS), st.one_of(st.none(), FIELD_VALUES), max_size=3
    )
)
def test_no_evaluation_reply_raises_out_of_the_server_or_its_record(edits: dict[str, Any]) -> None:
    rep = EvalReport(1, 2, "ok", {"client1": {"loss": 1.5}}, nonce="n")
    reply = _edited(eval_report_content(rep), edits)

    got = _eval_reply(2, 1, "n", reply, Transport())  # type: ignore[arg-type]

    evaluation = Evaluation(dict(got.scores), 1.0, dropped={"1": got.error} if got.error else {})
    outcome = server_step(
        build("fedavg", setup=tiny_setup()),
        ServerState(0),
        config.load(None, []),
        Received({}, {}, {}),
    )
    facts = RoundFacts(2, [], [], {}, set(), outcome, {})
    _strict(round_record(Fed(), facts, evaluation, 1.0).to_json())  # type: ignore[arg-type]
    assert set(got.scores) <= {"client1"}


# --------------------------------------------------------------------------- named cases


def test_a_sparse_entry_for_a_whole_factor_drops_the_client_naming_the_kind() -> None:
    h = honest("fedavg")
    schema = h.method.upload_schema(h.setup.client(HOSTILE))
    payload = {n: torch.ones(e.shape) for n, e in schema.items()}
    payload["l0.A"] = Sparse(schema["l0.A"].shape, torch.tensor([0, 3]), torch.ones(2))

    out = server_step(
        h.method,
        h.state,
        config.load(None, []),
        Received({**h.uploads, HOSTILE: (encode(payload), 10)}, {}, h.references),
    )

    assert "'l0.A': a sparse entry where the receiver accepts dense" in out.dropped[HOSTILE]
    assert out.accepted == [0, 2] and not out.skipped


def test_a_failing_aggregation_skips_the_round_with_the_reason() -> None:
    h = honest("fedavg")

    class Broken:
        def __getattr__(self, name: str) -> Any:
            return getattr(h.method, name)

        def aggregate(self, *args: Any) -> ServerState:
            raise RuntimeError("linalg.svd: the algorithm failed to converge")

    out = server_step(
        Broken(),  # type: ignore[arg-type]
        h.state,
        config.load(None, []),
        Received(h.uploads, {}, h.references),
    )

    assert out.skipped and out.state is h.state
    assert (
        out.skip_reason
        == "aggregation failed: RuntimeError: linalg.svd: the algorithm failed to converge"
    )


def test_a_reply_with_a_nan_loss_is_dropped_and_a_long_error_is_cut() -> None:
    honest = report_content(ClientOutcome(cid=1, round=2, train_loss=float("nan"), nonce="n"))
    nan = report_content(ClientOutcome(cid=1, round=2, train_loss=1.0, nonce="n"))
    nan.config_records["fedlora"]["train_loss"] = float("nan")  # as a hostile node sends it
    long = report_content(ClientOutcome(cid=1, round=2, error="x" * (20 << 20), nonce="n"))

    dropped = _collect(2, 1, "n", Message(nan, 1001, "train"), Transport())  # type: ignore[arg-type]
    failed = _collect(2, 1, "n", Message(long, 1001, "train"), Transport())  # type: ignore[arg-type]

    assert "train_loss" not in honest.config_records["fedlora"]  # an honest node omits it
    assert dropped.error is not None and "'train_loss' is nan, not a finite number" in dropped.error
    assert failed.error is not None and len(failed.error) < MAX_TEXT + 100


def test_a_nan_or_infinite_figure_is_written_as_null() -> None:
    line = dumps({"train_loss": {"0": float("nan")}, "cond": [1.0, float("inf")], "ok": 2.5})
    assert json.loads(line) == {"cond": [1.0, None], "ok": 2.5, "train_loss": {"0": None}}
