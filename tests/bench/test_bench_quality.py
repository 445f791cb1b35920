"""`python -m benchmarks.quality`: the quick benchmark writes a table, JSON and plots holding every
method; the summaries it prints are the arithmetic of the runs' metrics records."""

from __future__ import annotations

import json
import math
import shutil
import statistics
from pathlib import Path
from typing import Any

import pytest

from benchmarks.quality.claims import load_claims
from benchmarks.quality.plan import dp_pilot, load_plan, plan, tuning_plan
from benchmarks.quality.report import MB, aggregate, scores, summarise_run
from benchmarks.quality.run import main
from fedlora.methods.registry import names
from fedlora.runtime.client_data import OOD_NAME

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLAN = load_plan()
QUICK, DEFAULT = PLAN.budgets["quick"], PLAN.budgets["default"]


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "quick"
    code = main(["--quick", "--out", str(out)])
    assert code == 0
    return out


def test_quick_table_json_and_plots_hold_every_method(quick: Path) -> None:
    # Prepare
    results = quick / "results"
    doc = json.loads((results / "results.json").read_text())
    page = (results / "results.md").read_text()
    table = page.split("## Held-out loss per domain")[0]
    claims = page.split("## Claims")[1].split("\n## ")[0]
    expected_labels = {s.label for s in plan(PLAN, names(), [0], QUICK)}

    # Execute
    labels = {row["label"] for row in doc["rows"]}
    md_labels = {
        line.split("|")[1].strip()
        for line in table.splitlines()
        if line.startswith("| ") and not line.startswith("| method")
    }

    # Assert
    assert labels == expected_labels
    assert expected_labels | {"base model (round 0)"} == md_labels
    # one seed only: every claim is there (one per method against local-only training
    # too), and none holds below the claims file's seeds (a claim may still fail on its
    # bytes alone)
    n_claims = len(load_claims()["claim"])
    assert len(doc["claims"]) == claims.count("\n| ") - 1 == n_claims > 20
    held = [c["claim"] for c in doc["claims"] if c["verdict"] == "holds"]
    assert held == ["FLoRIST downloads less than FLoRA"]  # bytes need no second seed
    assert {r["method"] for r in doc["rows"]} == set(names())
    assert not doc["partial"] and doc["finished_runs"] == len(expected_labels)
    for row in doc["rows"]:
        assert math.isfinite(row["id_loss"]["mean"]) and row["cum_mb"]["mean"] >= 0
        assert [p["round"] for p in row["curve"]] == [0, 1, 2]
    # the centralised reference closes its own gap by definition; the others are scored
    central = next(r for r in doc["rows"] if r["label"] == "centralised")
    assert central["gap"]["macro"]["mean"] == pytest.approx(1.0)
    assert all("macro" in r["gap"] for r in doc["rows"])
    assert set(doc["tuned"]) == {*names(), "centralised"}
    assert all(
        r["lr"] == doc["tuned"][r["method"]]["lr"] for r in doc["rows"] if r["group"] == "main"
    )
    pngs = sorted(results.glob("*.png"))
    assert {p.name for p in pngs} >= {
        "main_vs_round.png",
        "main_vs_mb.png",
        "hetero_vs_round.png",
        "florist-tau_vs_mb.png",
        "stability_vs_round.png",
    }
    assert all(p.read_bytes()[:8] == PNG_MAGIC for p in pngs)


def test_quick_runs_share_one_budget_and_differ_only_in_their_row(quick: Path) -> None:
    # Prepare
    records = [json.loads(p.read_text()) for p in quick.glob("results/runs/*/seed*.json")]
    tuned = json.loads((quick / "results" / "tuned.json").read_text())

    # Execute
    shared = {
        json.dumps(
            {
                "model": r["config"]["model"],
                "eval": r["config"]["eval"],
                "rounds": r["config"]["federation"]["rounds"],
                "batch": r["config"]["train"]["batch_size"],
            },
            sort_keys=True,
        )
        for r in records
    }

    # Assert
    tests = [r for r in records if r["spec"]["group"] not in ("tune", "dp-pilot")]
    tune = [r for r in records if r["spec"]["group"] == "tune"]
    assert len(tests) == len(plan(PLAN, names(), [0], QUICK))
    # the grid of every tuned row, and whatever steps the rule added beyond it
    grid = {(s.tuned_as, s.lr) for s in tuning_plan(PLAN, names(), QUICK)}
    assert grid <= {(r["spec"]["tuned_as"], r["spec"]["lr"]) for r in tune}
    assert all(r["spec"]["seed"] == PLAN.tuning_seed not in PLAN.seeds for r in tune)
    assert all(v["settled"] for v in tuned.values())
    assert len(shared) == 1
    for r in tests:  # each test row trains at its tuned rate, on the test split
        assert r["config"]["train"]["lr"] == tuned[r["spec"]["tuned_as"]]["lr"]
        assert r["config"]["data"]["eval_split"] == "test"
        assert r["commit"] and r["code"] and r["records"][-1]["round"] == QUICK.rounds
    for r in records:
        if r["spec"]["group"] == "tune":
            assert r["config"]["data"]["eval_split"] == "validation"
    hetero = [r for r in tests if r["config"]["lora"]["ranks"]]
    assert sorted(r["config"]["method"]["name"] for r in hetero) == sorted(PLAN.hetero_methods)
    (central,) = [r for r in tests if r["spec"]["label"] == "centralised"]
    assert central["config"]["data"]["clients"] == 1 and central["config"]["data"]["pool"] == 4
    assert central["config"]["train"]["local_steps"] == QUICK.local_steps * QUICK.clients
    # the DP rows wait for their pilot's decision: only the pilot ran, on validation data
    assert not [r for r in tests if r["spec"]["group"] == "dp"]
    pilot = [r for r in records if r["spec"]["group"] == "dp-pilot"]
    assert sorted(r["spec"]["label"] for r in pilot) == sorted(
        f"pilot {x}" for x in PLAN.dp["pilot"]
    )
    assert all(r["config"]["privacy"]["noise_seed"] == PLAN.tuning_seed for r in pilot)
    assert all(r["config"]["privacy"]["not_private"] for r in pilot)
    assert all(r["config"]["data"]["eval_split"] == "validation" for r in pilot)


def test_report_only_rereads_finished_runs_without_running(quick: Path) -> None:
    # Prepare
    before = json.loads((quick / "results" / "results.json").read_text())

    # Execute
    code = main(["--quick", "--out", str(quick), "--report-only"])
    after = json.loads((quick / "results" / "results.json").read_text())

    # Assert
    assert code == 0
    assert all(r["reused"] for r in after["runs"])
    assert [r["id_loss"] for r in after["rows"]] == [r["id_loss"] for r in before["rows"]]


def test_a_resumed_benchmark_leaves_kept_records_as_they_were(quick: Path) -> None:
    # Prepare: the kept records of the finished quick plan, byte for byte
    kept = {p: p.read_bytes() for p in sorted((quick / "results" / "runs").rglob("*.json"))}

    # Execute: the same command again, which finds every run finished
    assert main(["--quick", "--out", str(quick)]) == 0

    # Assert: no record was rewritten (its commit, time and load are the run's own)
    assert kept and {p: p.read_bytes() for p in kept} == kept


def _records() -> list[dict[str, Any]]:
    """Metrics records of a 2-round run with choice tasks and an OOD set."""
    ev = [
        {
            "code": {"loss": 2.0 - 0.1 * t},
            "email": {"loss": 1.5, "acc": 0.5 + 0.1 * t},
            "dictionary": {"loss": 3.0, "acc": 0.25},
            OOD_NAME: {"loss": 4.0 + 0.05 * t},
        }
        for t in range(3)
    ]
    recs: list[dict[str, Any]] = [{"round": 0, "eval": ev[0]}]
    for t in (1, 2):
        recs.append(
            {
                "round": t,
                "eval": ev[t],
                "server_seconds": 0.5 * t,
                "upload_bytes": {"0": 1000 * t, "1": 3000 * t},
                "download_bytes": {"0": 500, "1": 700},
            }
        )
    return recs


def test_scores_keep_ood_apart_and_average_only_choice_tasks_for_accuracy() -> None:
    # Prepare
    ev = _records()[2]["eval"]

    # Execute
    s = scores(ev)

    # Assert
    assert s["id_loss"] == pytest.approx(
        statistics.fmean(ev[d]["loss"] for d in ("code", "email", "dictionary"))
    )
    assert s["id_acc"] == pytest.approx((ev["email"]["acc"] + ev["dictionary"]["acc"]) / 2)
    assert s["ood_loss"] == ev[OOD_NAME]["loss"]


def test_run_summary_is_the_per_client_mean_of_the_records() -> None:
    # Prepare
    recs = _records()
    rounds = recs[1:]
    up = [statistics.fmean(r["upload_bytes"].values()) / MB for r in rounds]
    down = [statistics.fmean(r["download_bytes"].values()) / MB for r in rounds]

    # Execute
    s = summarise_run(recs)

    # Assert
    assert s["mb_up"] == pytest.approx(statistics.fmean(up))
    assert s["mb_down"] == pytest.approx(statistics.fmean(down))
    assert s["cum_mb"] == pytest.approx(sum(up) + sum(down))
    assert s["server_s"] == pytest.approx(statistics.fmean(r["server_seconds"] for r in rounds))
    assert s["tasks"]["email.acc"] == recs[-1]["eval"]["email"]["acc"]
    assert [p["round"] for p in s["curve"]] == [0, 1, 2]
    assert s["curve"][1]["cum_mb"] == pytest.approx(up[0] + down[0])
    assert s["id_loss"] == scores(recs[-1]["eval"])["id_loss"]


def test_aggregate_reports_mean_and_sample_sd_over_seeds() -> None:
    # Prepare
    runs = []
    for seed, shift in ((0, 0.0), (1, 0.3)):
        recs = _records()
        recs[-1]["eval"]["code"]["loss"] += shift
        runs.append(
            {
                "label": "m",
                "group": "main",
                "method": "m",
                "options": {},
                "ranks": [],
                "seed": seed,
                **summarise_run(recs),
            }
        )

    # Execute
    (row,) = aggregate(runs)

    # Assert
    losses = [r["id_loss"] for r in runs]
    assert row["id_loss"]["mean"] == pytest.approx(statistics.fmean(losses))
    assert row["id_loss"]["sd"] == pytest.approx(statistics.stdev(losses))
    assert row["tasks"]["code.loss"]["sd"] > 0 and row["seeds"] == [0, 1]
    # the curve's last point carries the error bar of its score: the sd over the seeds
    assert row["curve"][-1]["id_loss_sd"] == pytest.approx(statistics.stdev(losses))
    assert row["curve"][0]["id_loss_sd"] == pytest.approx(0.0)  # the same base scores


def test_plan_runs_seed_by_seed_with_one_seed_rows_at_the_first_only() -> None:
    # Prepare
    methods = ["fedavg", "fedprox", "fedsrd", "florist"]

    # Execute
    specs = plan(PLAN, methods, [0, 1, 2], DEFAULT)
    tune = tuning_plan(PLAN, methods, DEFAULT)

    # Assert: whole seeds in order, the main group and the centralised reference first
    seeds = [s.seed for s in specs]
    assert seeds == sorted(seeds)
    first = [s for s in specs if s.seed == 0]
    assert [s.label for s in first[:5]] == [*methods, "centralised"]
    one_seed = {s.label for s in first} - {s.label for s in specs if s.seed == 2}
    assert one_seed == {
        "fedsrd reconstruct=false",
        "fedsrd decompose=dense",
        "florist tau=0.80 pad=zeros",
        "florist tau=0.99 pad=zeros",
        "fedprox ranks 16-8-8-4",
    }
    ablation = {s.label: s for s in first if s.group == "ablation"}
    assert ablation["fedsrd sparsifier=random"].options["sparsifier"] == "random"
    assert ablation["fedsrd wire=bfloat16"].settings == ('wire.value_dtype="bfloat16"',)
    assert ablation["fedavg + importance uplink"].settings == ('uplink.sparsify="importance"',)
    taus = sorted((s.options["tau"], s.options["pad"]) for s in first if s.group == "florist-tau")
    assert taus == [
        (0.8, "fresh"),
        (0.8, "zeros"),
        (0.9, "zeros"),
        (0.99, "fresh"),
        (0.99, "zeros"),
    ]
    hetero = [s for s in first if s.group == "hetero"]
    assert [s.method for s in hetero] == ["fedavg", "fedprox", "florist"]
    assert all(s.ranks == DEFAULT.hetero_ranks for s in hetero)
    assert [s.options["tau"] for s in hetero if s.method == "florist"] == [0.85]
    # the DP rows wait for their pilot's decision; the pilot runs on validation data
    assert not [s for s in first if s.group == "dp"]
    pilot = {s.label: s for s in dp_pilot(PLAN, methods)}
    assert set(pilot) == {"pilot fedavg dp eps=2", "pilot fedavg dp eps=inf"}
    assert all(s.seed == PLAN.tuning_seed for s in pilot.values())
    assert "privacy.noise_multiplier=0.0" in pilot["pilot fedavg dp eps=inf"].settings
    assert 'data.eval_split="validation"' in pilot["pilot fedavg dp eps=2"].settings
    stable = {s.label: s for s in first if s.group == "stability"}
    assert stable["fedsrd stabilised steps=2"].local_steps == 2
    assert stable["fedsrd stabilised"].options["support"] == "per-rank"
    assert stable["fedsrd faithful steps=2"].options.get("ridge") is None
    # every tuned row at every rate of the grid, on the validation split, at the tuning seed
    assert len(tune) == (len(methods) + 1) * len(DEFAULT.lr_grid)
    assert all(s.seed == PLAN.tuning_seed and s.lr in DEFAULT.lr_grid for s in tune)
    assert all('data.eval_split="validation"' in s.settings for s in tune)
    overrides = ablation["fedsrd wire=bfloat16"].overrides(DEFAULT, Path("r"), [], 1e-3)
    assert overrides[-1] == 'wire.value_dtype="bfloat16"' and "eval.at_start=false" in overrides
    assert "train.lr=0.001" in overrides and "lora.dropout=0.05" in overrides


def test_the_base_model_is_scored_once_per_seed_and_shared_by_the_runs(quick: Path) -> None:
    # Prepare
    base = json.loads((quick / "results" / "base" / "seed0.json").read_text())
    val = json.loads(
        (quick / "results" / "base" / f"validation-seed{PLAN.tuning_seed}.json").read_text()
    )
    doc = json.loads((quick / "results" / "results.json").read_text())
    first_records = [
        json.loads(p.read_text().splitlines()[0]) for p in quick.glob("runs/*/seed0/metrics.jsonl")
    ]
    # Assert: no run scored round 0 itself; every curve starts at the shared base scores
    assert first_records and all("eval" not in r for r in first_records)
    assert all(r["base_eval"] == base["eval"] for r in doc["runs"])
    assert base["eval_seconds"] > 0 and all(r["eval_s"] > 0 for r in doc["runs"])
    assert val["eval"] != base["eval"]  # other rows: the validation slices


def test_report_only_lists_a_run_without_a_record_as_not_run(quick: Path, tmp_path: Path) -> None:
    # Prepare: a copy of the quick benchmark whose fedavg record was lost
    out = tmp_path / "cut"
    shutil.copytree(quick, out)
    (out / "results" / "runs" / "fedavg" / "seed0.json").unlink()

    # Execute
    code = main(["--quick", "--out", str(out), "--report-only"])
    doc = json.loads((out / "results" / "results.json").read_text())

    # Assert
    assert code == 1 and doc["partial"]
    assert "fedavg" not in {r["label"] for r in doc["rows"]}
    assert doc["finished_runs"] == doc["planned_runs"] - 1
    assert [m["label"] for m in doc["not_run"]] == ["fedavg"]


def test_a_report_of_some_claims_counts_only_their_runs(quick: Path, tmp_path: Path) -> None:
    # Prepare: a copy of the finished quick benchmark, and its full count
    out = tmp_path / "some"
    shutil.copytree(quick, out)
    whole = json.loads((quick / "results" / "results.json").read_text())

    # Execute: a report of the first claim's stage only
    code = main(["--quick", "--out", str(out), "--report-only", "--claims", "1"])
    doc = json.loads((out / "results" / "results.json").read_text())

    # Assert: every run it was asked for finished; the other rows are neither counted nor
    # listed as not run
    assert code == 0 and not doc["partial"] and doc["not_run"] == []
    assert doc["finished_runs"] == doc["planned_runs"] == len(doc["runs"])
    assert 0 < doc["planned_runs"] < whole["planned_runs"] == whole["finished_runs"]


def test_a_claim_is_not_decided_from_rows_of_two_library_versions(
    quick: Path, tmp_path: Path
) -> None:
    # Prepare: one kept record claims another tree of src/fedlora
    out = tmp_path / "mixed"
    shutil.copytree(quick, out)
    path = out / "results" / "runs" / "fedsrd" / "seed0.json"
    record = json.loads(path.read_text())
    record["code"] = "0" * 40
    path.write_text(json.dumps(record))

    # Execute
    assert main(["--quick", "--out", str(out), "--report-only"]) == 0
    doc = json.loads((out / "results" / "results.json").read_text())

    # Assert: the claims that compare fedsrd say why they are not decided; others do not
    claims = {c["claim"]: c for c in doc["claims"]}
    mixed = "made by different code or environments"
    assert mixed in claims["FedSRD beats Fed-DARE"]["evidence"]
    assert mixed not in claims["FLoRIST matches or beats FedIT"]["evidence"]
    assert len(doc["code_versions"]) == 2


def test_a_fresh_clone_of_the_records_has_nothing_to_run(
    quick: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: only the kept records (and base scores), as a clone of the repository has them
    fresh, results = tmp_path / "fresh", tmp_path / "clone" / "results"
    shutil.copytree(quick / "results", results)
    kept = {p: p.read_bytes() for p in sorted(results.rglob("*/*.json"))}
    args = ["--quick", "--out", str(fresh), "--results", str(results)]

    # Execute
    assert main([*args, "--plan"]) == 0
    listing = capsys.readouterr().out
    assert main(args) == 0

    # Assert: the plan lists every stage as done, nothing ran, no record was rewritten
    stages = [line for line in listing.splitlines() if " done, " in line]
    assert stages and all(" 0 to run" in line for line in stages)
    assert not (fresh / "runs").exists()
    assert {p: p.read_bytes() for p in kept} == kept


def test_the_committed_base_scores_are_reused_not_recomputed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a copy of the committed default records; scoring the base model would fail
    from benchmarks.quality import one_run
    from fedlora.runtime import assemble

    results = tmp_path / "results"
    shutil.copytree(
        Path(one_run.__file__).parent / "results" / "default" / "base", results / "base"
    )
    kept = {p: p.read_bytes() for p in sorted((results / "base").glob("*.json"))}

    def no_scoring(*args: Any, **kw: Any) -> Any:
        raise AssertionError("the base model was scored again")

    monkeypatch.setattr(assemble, "assemble", no_scoring)

    # Execute / Assert: every kept seed's scores come back as stored, byte for byte
    for path in kept:
        split, seed = ("validation", PLAN.tuning_seed) if "validation" in path.name else ("test", 0)
        seed = seed if split == "validation" else int(path.stem.removeprefix("seed"))
        doc = one_run.base_scores(DEFAULT, seed, tmp_path / "out", [], split, results)
        assert doc == json.loads(kept[path])
    assert kept and {p: p.read_bytes() for p in kept} == kept


def test_publish_writes_the_page_and_its_plots_where_the_links_point(
    quick: Path, tmp_path: Path
) -> None:
    # Execute
    code = main(["--quick", "--out", str(quick), "--report-only", "--publish", str(tmp_path)])
    # Assert
    page = (tmp_path / "results.md").read_text()
    links = [line[line.index("](") + 2 : -1] for line in page.splitlines() if line.startswith("![")]
    assert code == 0 and links and all(link.startswith("img/quality_") for link in links)
    assert all((tmp_path / link).read_bytes()[:8] == PNG_MAGIC for link in links)
    assert "## Claims" in page and page.index("Scale: tiny-llama") < page.index("## Claims")


def test_results_say_which_runs_finished_when_and_under_what_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare / Execute: two methods and the centralised reference, fresh
    out = tmp_path / "two"
    args = ["--quick", "--out", str(out), "--methods", "fedavg", "fedsrd", "--no-extras"]
    assert main(args) == 0
    page = (out / "results" / "results.md").read_text()
    doc = json.loads((out / "results" / "results.json").read_text())
    # Assert
    runs = page.split("## Runs")[1].split("\n\n")[1].splitlines()[2:]
    assert [line.split("|")[1].strip() for line in runs] == ["fedavg", "fedsrd", "centralised"]
    assert all(line.count("|") == 7 and " 20" in line for line in runs)  # a date in each
    assert "machine load (1-min average at each run's start and end)" in page
    assert all(len(r["load_1min"]) == 2 and r["finished_at"] for r in doc["runs"])
    err = capsys.readouterr().err  # a line per started and finished run, tuning first
    assert f"· [1] tune fedavg lr=0.002 seed {PLAN.tuning_seed}" in err
    assert "· finished fedsrd seed 0 (" in err and " min)" in err
    # a later report keeps when and under what load each run was made, and by what command
    before = {r["label"]: r["load_1min"] for r in doc["runs"]}
    assert main([*args, "--report-only"]) == 0
    again = json.loads((out / "results" / "results.json").read_text())
    assert {r["label"]: r["load_1min"] for r in again["runs"]} == before
    assert (
        "- runs made by: `python -m benchmarks.quality --quick"
        in (out / "results" / "results.md").read_text()
    )


def test_a_finished_run_of_another_budget_is_refused_not_reused(tmp_path: Path) -> None:
    # Prepare: a finished benchmark whose fedavg run (record and folder) was then made
    # another learning rate's
    out = tmp_path / "other"
    args = ["--quick", "--out", str(out), "--methods", "fedavg", "fedsrd", "--no-extras"]
    assert main(args) == 0
    for path, train in (
        (out / "runs" / "fedavg" / "seed0" / "config.json", lambda d: d["train"]),
        (out / "results" / "runs" / "fedavg" / "seed0.json", lambda d: d["config"]["train"]),
    ):
        doc = json.loads(path.read_text())
        train(doc)["lr"] = 0.123
        path.write_text(json.dumps(doc))
    # Execute
    code = main(args)
    doc = json.loads((out / "results" / "results.json").read_text())
    # Assert: that run is reported as failed, with the reason; the others are reused
    assert code == 1
    (failed,) = doc["not_run"]
    assert failed["label"] == "fedavg" and "different run" in failed["why"]
    assert [(r["label"], r["reused"]) for r in doc["runs"]] == [
        ("fedsrd", True),
        ("centralised", True),
    ]


def test_the_report_regenerates_byte_identically_from_its_results_json(
    quick: Path, tmp_path: Path
) -> None:
    # Prepare: the quick benchmark's results.json alone, in a folder of its own
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copyfile(quick / "results" / "results.json", alone / "results.json")

    # Execute
    assert main(["--render", str(alone / "results.json")]) == 0

    # Assert: the same page and the same set of plots, from the JSON only
    assert (alone / "results.md").read_bytes() == (quick / "results" / "results.md").read_bytes()
    assert sorted(p.name for p in alone.glob("*.png")) == sorted(
        p.name for p in (quick / "results").glob("*.png")
    )


def test_a_record_keeps_the_versions_that_compute_its_numbers() -> None:
    import platform

    import torch

    from benchmarks.quality.provenance import code_version

    env = code_version()["environment"]
    assert env["torch"] == torch.__version__ and env["python"] == platform.python_version()
    assert set(env) >= {"transformers", "peft", "numpy"}


def test_a_pinned_sitting_runs_that_commits_benchmark_and_keeps_records_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess

    from benchmarks.quality import pinned

    calls: list[tuple[list[str], Path | None]] = []

    def fake_run(cmd: list[str], cwd: Path | None = None, **kw: Any) -> Any:
        calls.append((cmd, cwd))
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(pinned, "worktree", lambda commit, base: tmp_path / "wt")
    monkeypatch.setattr(pinned.subprocess, "run", fake_run)

    assert pinned.main(["abc123", "--claims", "1", "--max-minutes", "150"]) == 0

    ((cmd, cwd),) = calls
    assert cwd == tmp_path / "wt" and cmd[0] == str(tmp_path / "wt" / ".venv" / "bin" / "python")
    assert cmd[1:3] == ["-m", "benchmarks.quality"]
    assert cmd[cmd.index("--results") + 1] == str(pinned.RESULTS)  # this checkout's records
    assert cmd[-4:] == ["--claims", "1", "--max-minutes", "150"]


def test_the_raw_table_renders_a_local_only_row_without_its_per_client_columns() -> None:
    # A local-only row scores each client's own model per domain ("code@client0.loss"); its
    # domain losses already hold the owning client's, so the table shows those alone.
    from benchmarks.quality.tables import render_raw

    def stat(value: float) -> dict[str, float]:
        return {"mean": value, "lo": value, "hi": value}

    fedavg = {
        "label": "fedavg",
        "seeds": [0],
        "id_loss": stat(1.5),
        "domain_loss": {"code": stat(1.5)},
        "tasks": {"code.loss": stat(1.5)},
    }
    local = {
        "label": "local",
        "seeds": [0],
        "id_loss": stat(1.2),
        "domain_loss": {"code": stat(1.2)},
        "tasks": {"code.loss": stat(2.0), "code@client0.loss": stat(1.2)},
    }
    table = render_raw([fedavg, local], None)
    head, _, *lines = table.splitlines()
    assert "code@client0" not in head and "code.loss" in head
    assert lines[1].startswith("| local | 1 |") and "2.0" not in lines[1]


def test_the_raw_table_says_which_columns_score_the_global_model_of_own_model_rows() -> None:
    # Rows whose clients keep their own models (gap_all) score the global model in the mean
    # ID loss; where that equals the base model's, the note says so for that row only.
    from benchmarks.quality.tables import render_raw

    def stat(value: float) -> dict[str, float]:
        return {"mean": value, "sd": 0.0}

    base = {"label": "base model (round 0)", "seeds": [0], "id_loss": stat(4.4), "tasks": {}}

    def row(label: str, id_loss: float, own: bool) -> dict[str, object]:
        extra = {"gap_all": {"macro": stat(0.4)}} if own else {}
        loss = {"code": stat(1.1)}
        return {"label": label, "seeds": [0], "id_loss": stat(id_loss), "domain_loss": loss,
                "tasks": {"code.loss": stat(1.1)}, **extra}  # fmt: skip

    plain = render_raw([row("fedavg", 2.3, own=False)], base)
    table = render_raw(
        [row("fedavg", 2.3, False), row("local", 4.4, True), row("own", 2.9, True)], base
    )

    assert "global model" not in plain
    note = table.splitlines()[-1]
    assert note.startswith("For local, own: each domain's loss is that of the model of the client")
    assert "For local that is the base model's score" in note and "For own," not in note


def test_a_pinned_tree_gets_its_benchmark_fixes_once_and_never_a_library_change(
    tmp_path: Path,
) -> None:
    from benchmarks.quality import pinned

    def git(*args: str) -> str:
        return pinned._git(*args, cwd=tree)

    tree = tmp_path / "tree"
    (tree / "benchmarks").mkdir(parents=True)
    (tree / "src").mkdir()
    (tree / "benchmarks" / "tables.py").write_text("columns = 'all'\n")
    (tree / "src" / "maths.py").write_text("x = 1\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "pinned")

    def patch_of(path: str, text: str) -> Path:
        (tree / path).write_text(text)
        out = tmp_path / f"{path.replace('/', '_')}.patch"
        out.write_text(git("diff") + "\n")
        git("checkout", "--", path)
        return out

    fix = patch_of("benchmarks/tables.py", "columns = 'some'\n")
    library = patch_of("src/maths.py", "x = 2\n")

    pinned.apply_fixes(tree, [fix])
    pinned.apply_fixes(tree, [fix])  # a later sitting: already applied, left as it is
    assert (tree / "benchmarks" / "tables.py").read_text() == "columns = 'some'\n"

    with pytest.raises(SystemExit, match="src/maths.py"):
        pinned.apply_fixes(tree, [library])
    assert (tree / "src" / "maths.py").read_text() == "x = 1\n"

    (tree / "benchmarks" / "tables.py").write_text("columns = 'other'\n")
    with pytest.raises(SystemExit, match="does not apply"):
        pinned.apply_fixes(tree, [fix])
    assert (tree / "benchmarks" / "tables.py").read_text() == "columns = 'other'\n"


def test_the_pinned_fixes_touch_only_the_benchmark() -> None:
    from benchmarks.quality import pinned

    patches = sorted(pinned.FIXES.glob("*.patch"))
    assert patches, "the pinned commit 6e9ae10's fixes are carried as patches"
    assert {patch.name: pinned.foreign_paths(patch) for patch in patches} == {
        patch.name: [] for patch in patches
    }
