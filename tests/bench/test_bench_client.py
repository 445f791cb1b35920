"""``python -m benchmarks.client`` runs end to end at a tiny size (no absolute-time asserts).

The benchmark is a script; these tests only make sure it cannot rot: it runs, the bare loop
sees exactly fedlora's batches and trains only the factors fedlora trains, the client step's
timing hook sees every phase, the figures it prints are consistent with each other, and the
RSS children run (one of them as a real process).
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
from pathlib import Path

import pytest
import torch

from benchmarks.client import report as client_report
from benchmarks.client import run as bench
from benchmarks.common import rss
from benchmarks.common.measure import Stopwatch
from fedlora import config as config_mod
from fedlora.methods.base import ClientStart
from fedlora.methods.half_round import Turn
from fedlora.methods.registry import build
from fedlora.runtime.assemble import Federation, assemble
from fedlora.runtime.steps import ClientSide, client_step, send
from fedlora.train import local as local_mod
from fedlora.train.adapters import get_lora, slot_name
from fedlora.train.local import LocalRun, train_local
from fedlora.wire import decode
from tests.bench.children import children_in_process
from tests.conftest import tiny_overrides, write_client_files


def _tiny_set(tmp_path: Path, clients: int = 2) -> list[str]:
    files = write_client_files(tmp_path, clients)
    return tiny_overrides(tmp_path / "run", files, **{"train.local_steps": "2"})


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory: pytest.TempPathFactory) -> bench.ClientBenchReport:
    # Prepare
    overrides = _tiny_set(tmp_path_factory.mktemp("bench_client"))
    cfg = bench.ClientBenchConfig(
        model="tiny-llama",
        methods=("fedavg", "fedsrd"),
        repeats=2,
        overrides=tuple(overrides),
        threads=1,
    )
    # Execute
    return bench.run_bench(cfg)


def test_bare_loop_sees_fedlora_tokens_and_figures_agree(
    tiny_report: bench.ClientBenchReport,
) -> None:
    # Assert
    assert [r.method for r in tiny_report.methods] == ["fedavg", "fedsrd"]
    for result in tiny_report.methods:
        assert result.repeats == 2
        rounds = [s["round"] for s in result.samples]
        assert rounds == [2, 3]  # round 1 was the warm-up; each repeat is a genuine next round
        for s in result.samples:
            assert s["tokens"] == s["bare_tokens"] > 0
            assert s["bare_seconds"] > 0 and s["train_seconds"] > 0
            assert set(s["overhead"]) == set(client_report.OVERHEAD_PHASES)
            assert all(v >= 0 for v in s["overhead"].values())
        shares = sorted(
            sum(s["overhead"].values()) / (s["train_seconds"] + sum(s["overhead"].values()))
            for s in result.samples
        )
        assert math.isclose(result.non_training_share, (shares[0] + shares[1]) / 2)
        assert 0 < result.non_training_share < 1
        # The end-to-end ratio can only be below the training-only ratio.
        assert result.round_ratio <= result.train_ratio
    fedsrd = tiny_report.methods[1]
    assert fedsrd.overhead_seconds["upload"] > 0  # sparsification is timed, not lost
    # TRL's SFTTrainer ran on the same round (it trains the same token sequences, in its own
    # order and padding: a similar count, not the same), and its ratio is a measured one.
    assert tiny_report.settings["trl"] == "measured"
    for result in tiny_report.methods:
        for s in result.samples:
            assert s["trl_seconds"] > 0
            assert 0.5 * s["tokens"] < s["trl_tokens"] < 2 * s["tokens"]
        assert result.trl_ratio is not None and result.trl_ratio > 0
    assert len(tiny_report.checks) == 6


def test_table_and_json_show_every_method(tiny_report: bench.ClientBenchReport) -> None:
    # Execute
    table = client_report.format_table(tiny_report)
    data = json.loads(json.dumps(client_report.report_json(tiny_report)))
    # Assert
    assert "load average" in table and "Targets" in table
    for name in ("fedavg", "fedsrd"):  # throughput, TRL and overhead tables
        assert sum(line.startswith(name) for line in table.splitlines()) == 3
    assert "Against TRL's SFTTrainer" in table
    assert [m["method"] for m in data["methods"]] == ["fedavg", "fedsrd"]
    assert data["threads"] == 1


def test_paired_ratio_cancels_noise_shared_by_both_sides() -> None:
    # Prepare: each repeat slows both loops by the same factor; fedlora is 0.8x the bare loop.
    noise = [1.0, 7.0, 2.5]
    samples = [
        bench.Sample(
            round=i,
            tokens=100,
            bare_tokens=100,
            bare_seconds=f,
            train_seconds=f / 0.8,
            overhead={k: 0.0 for k in client_report.OVERHEAD_PHASES},
            in_loop={k: 0.0 for k in client_report.IN_LOOP_PROBES},
        )
        for i, f in enumerate(noise)
    ]
    # Execute
    result = bench.summarise("m", samples)
    # Assert
    assert math.isclose(result.train_ratio, 0.8)
    assert math.isclose(result.bare_tokens_per_s, 100 / 2.5)
    assert result.non_training_share == 0.0


@pytest.fixture
def tiny_fed(tmp_path: Path) -> Federation:
    cfg = config_mod.load(None, _tiny_set(tmp_path))
    return assemble(cfg, lambda kind, info: None)


@pytest.mark.parametrize("batching", ["pad", "group", "pack"])
def test_plan_batches_are_the_batches_train_local_draws(
    batching: str,
    tiny_fed: Federation,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare
    fed, seen = tiny_fed, []
    train = dataclasses.replace(fed.cfg.train, batching=batching)
    client = fed.setup.clients[0]
    slot = slot_name(client.rank, client.alpha)
    original = local_mod.batch_of

    def recording(*args, **kw):  # type: ignore[no-untyped-def]
        out = original(*args, **kw)
        seen.append(out)
        return out

    monkeypatch.setattr(local_mod, "batch_of", recording)
    start = ClientStart(adapter=get_lora(fed.model, slot))
    # Execute
    planned = bench.plan_batches(fed.train_sets[0], train, 11, fed.pad_id)
    result = train_local(fed.model, slot, start, fed.train_sets[0], train, fed.pad_id, LocalRun(11))
    # Assert
    flat = [b for step in planned.batches for b in step]
    assert len(flat) == len(seen) == train.local_steps * train.grad_accum_steps
    for mine, theirs in zip(flat, seen, strict=True):
        assert mine.keys() == theirs.keys()
        assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert planned.tokens == result.tokens


def test_bare_loop_trains_only_the_requested_factors(tiny_fed: Federation) -> None:
    # Prepare
    fed = tiny_fed
    model = bench.bare_peft_model(fed.cfg, fed.setup.clients[0])
    params = bench.bare_params(model, frozenset({"B"}))
    named = dict(model.named_parameters())
    with torch.no_grad():  # PEFT starts B at zero; make the gradient of A non-zero too
        for name, p in named.items():
            if "lora_B." in name:
                p.normal_(0.0, 0.01)
    before = {n: p.detach().clone() for n, p in named.items()}
    plan = bench.plan_batches(fed.train_sets[0], fed.cfg.train, 3, fed.pad_id)
    # Execute
    seconds = bench.bare_train(model, params, plan.batches, fed.cfg.train)
    # Assert
    assert seconds > 0
    assert params and all("lora_B." in n for n, p in named.items() if p.requires_grad)
    changed = {n for n, p in named.items() if not torch.equal(p, before[n])}
    assert changed == {n for n in named if "lora_B." in n}


def test_the_timing_hook_sees_every_phase_of_a_real_client_step(tiny_fed: Federation) -> None:
    # Prepare: a FedProx round (its regulariser takes the live_lora view)
    fed = tiny_fed
    client = fed.setup.clients[0]
    method = build("fedprox", setup=fed.setup)
    state = method.init_server()
    broadcast = decode(send(method.broadcast(state, client), fed.cfg).data)
    watch = Stopwatch()
    # Execute
    side = ClientSide(fed.model, method, fed.setup, fed.cfg, fed.pad_id)
    outcome = client_step(side, Turn(client, 1, None, broadcast), fed.train_sets[0], timer=watch)
    # Assert: every phase entered, collation once per micro-batch, and the time inside the
    # training phases is part of the measured training time
    steps = fed.cfg.train.local_steps * fed.cfg.train.grad_accum_steps
    assert outcome.upload is not None
    assert watch.calls == {
        "client_start": 1,
        "swap_in": 1,
        "live_lora": 1,
        "collate": steps,
        "swap_out": 1,
        "upload": 1,
        "upload_encode": 1,
    }
    inside = sum(watch.get(p) for p in ("swap_in", "live_lora", "collate", "swap_out"))
    assert 0 < inside <= outcome.train_seconds


def test_bad_override_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    # Execute
    code = bench.main(
        ["--model", "tiny-llama", "--quiet", "--set", "train.nonsense=1"], out=io.StringIO()
    )
    # Assert
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train.nonsense" in err


def test_main_prints_json(tmp_path: Path) -> None:
    # Prepare
    overrides = _tiny_set(tmp_path, clients=2)
    argv = [
        "--model",
        "tiny-llama",
        "--methods",
        "fedavg",
        "--repeats",
        "1",
        "--threads",
        "1",
        "--json",
        "--quiet",
    ]
    for o in overrides:
        argv += ["--set", o]
    out = io.StringIO()
    # Execute
    code = bench.main(argv, out=out)
    # Assert
    assert code == 0
    data = json.loads(out.getvalue())
    assert data["rss"] is None
    assert data["methods"][0]["tokens_per_round"] > 0


def test_measure_rss_runs_each_child_and_collects_their_peaks(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: the children's bodies run in-process (a fresh interpreter per child costs tens
    # of seconds on a loaded machine); what they are given and report is the same.
    calls = children_in_process(monkeypatch, rss, tmp_path)
    overrides = _tiny_set(tmp_path, clients=2)
    # Execute
    result = rss.measure_rss("tiny-llama", (2,), overrides, dtypes=("float32", "bfloat16"))
    # Assert
    assert [(r.dtype, r.clients) for r in result.runs] == [
        ("float32", None),
        ("float32", 2),
        ("bfloat16", None),
        ("bfloat16", 2),
    ]
    assert calls[0] == ["load", "tiny-llama", "float32"]
    assert calls[2] == ["load", "tiny-llama", "bfloat16"]
    assert calls[1][-3] == "model.dtype=float32" and calls[3][-3] == "model.dtype=bfloat16"
    assert calls[1][-2] == "data.clients=2" and calls[1][-1].startswith("out_dir=")
    assert result.param_bytes > 0
    assert all(r.peak_rss_bytes > result.param_bytes / 2 for r in result.runs)
    table = "\n".join(client_report.rss_lines(result))
    assert "bfloat16 base over float32" in table


def test_an_rss_child_is_a_real_process_that_reports_its_own_peak() -> None:
    # Prepare / Execute: a real fresh interpreter loading the tiny model
    info, seconds = rss.child_report(["load", "tiny-llama", "float32"], timeout_s=600.0, threads=1)
    # Assert: its own high-water mark, which must hold at least the interpreter and the
    # model's weights, and is not this (test) process's
    own = rss._vmhwm_bytes()
    assert info["param_bytes"] > 0 and seconds > 0
    assert info["vmhwm_bytes"] > info["param_bytes"] + 20 * 2**20  # Python + torch resident
    assert own is not None and info["vmhwm_bytes"] != own


def test_the_batching_comparison_runs_every_mode_on_every_scenario(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["--batching", "--model", "tiny-llama", "--repeats", "1", "--no-trl", "--json"]
    assert bench.main([*argv, "--quiet", "--set", "train.local_steps=1"]) == 0
    scenarios = json.loads(capsys.readouterr().out)
    assert [(s["data"], s["seq_len"]) for s in scenarios] == [
        ("iid", 512),
        ("domain", 512),
        ("iid", 64),
    ]
    for s in scenarios:
        assert set(s["tokens_per_s"]) == {"pad", "group", "pack"}
        sides = s["sides"]
        assert sides["pack"]["padding"] <= sides["pad"]["padding"]
        assert all(0 < s["mfu"][k] < 1 for k in s["mfu"])
        # every side trained on the same number of real tokens (same examples, same steps)
        assert sides["pad"]["tokens"] == sides["pack"]["tokens"]
