"""A run on your own data end to end: one Dolly-shaped dataset split across clients by
Dirichlet over its category, the Alpaca template, your own evaluation tasks (scored every
round and again, identically, by ``fedlora eval`` on the saved adapter), ``fedlora data``,
the papers' presets' dry runs, and bad data stopping the run before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedlora.cli import main

CATEGORIES = ["open_qa", "brainstorming", "classification", "summarization"]
PRESETS = Path(__file__).parents[1] / "configs" / "paper"


def _dolly(path: Path, n: int) -> Path:
    with path.open("w") as f:
        for i in range(n):
            cat = CATEGORIES[i % 4]
            row = {
                "instruction": f"Task {i}: answer about {cat}",
                "context": "" if i % 3 else f"Some context {i}",
                "response": f"Answer {i} for {cat}.",
                "category": cat,
            }
            f.write(json.dumps(row) + "\n")
    return path


def _tasks(folder: Path) -> list[str]:
    mc = folder / "quiz.jsonl"
    mc.write_text(
        "".join(
            json.dumps({"question": f"Which is {c}?", "choices": CATEGORIES, "answer": k}) + "\n"
            for k, c in enumerate(CATEGORIES)
        )
    )
    comp = folder / "heldout.json"
    comp.write_text(json.dumps([{"prompt": f"Say {i}", "completion": f"{i}!"} for i in range(5)]))
    return [str(mc), str(comp)]


def _overrides(root: Path, dataset: Path, tasks: list[str]) -> list[str]:
    return [
        'model.name="tiny-llama"',
        f"data.dataset={json.dumps(str(dataset))}",
        "data.format=dolly",
        "data.template=alpaca",
        "data.clients=3",
        "data.partition=dirichlet",
        "data.label_column=category",
        f"eval.tasks={json.dumps(tasks)}",
        "federation.rounds=2",
        "train.local_steps=2",
        "train.batch_size=2",
        "train.seq_len=48",
        "train.lr=0.01",
        "lora.rank=4",
        "lora.alpha=8",
        f"out_dir={json.dumps(str(root / 'run'))}",
    ]


@pytest.fixture(scope="module")
def dolly_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("yours")
    dataset = _dolly(root / "dolly.jsonl", 60)
    tasks = _tasks(root)
    assert main(["run", *_overrides(root, dataset, tasks)]) == 0
    return root / "run", tasks


def test_dataset_split_run_scores_clients_and_tasks(dolly_run: tuple[Path, list[str]]) -> None:
    run, _ = dolly_run
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    # seq_len 48 cuts the longer of these examples: each trained client counts its own
    for record in records[1:]:
        assert set(record["truncated"]) == {"0", "1", "2"}
        assert all(0 < n <= record["n_samples"][cid] for cid, n in record["truncated"].items())
    for record in records:
        ev = record["eval"]
        assert {"client0", "client1", "client2", "quiz", "heldout"} <= set(ev)
        assert 0 <= ev["quiz"]["acc"] <= 1 and ev["heldout"]["loss"] > 0


def test_fedlora_eval_reproduces_the_runs_task_scores(
    dolly_run: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    run, tasks = dolly_run
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["eval"]
    capsys.readouterr()
    assert main(["eval", str(run), "--tasks", *tasks, "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["quiz"]["acc"] == last["quiz"]["acc"]
    assert scores["quiz"]["items"] == 4 and isinstance(scores["quiz"]["items"], int)
    assert scores["heldout"]["loss"] == pytest.approx(last["heldout"]["loss"], rel=1e-4)
    # an adapter folder alone works too (its base is named in adapter_config.json)
    assert (
        main(
            [
                "eval",
                str(run / "adapter"),
                "--tasks",
                tasks[0],
                "--template",
                "alpaca",
                "--seq-len",
                "48",
            ]
        )
        == 0
    )
    assert "quiz: acc" in capsys.readouterr().out


def test_fedlora_data_prints_the_partition(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset = _dolly(tmp_path / "dolly.jsonl", 40)
    overrides = _overrides(tmp_path, dataset, [])
    assert main(["data", *overrides]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.strip().startswith("client")]
    assert len(lines) == 3
    total = 0
    for line in lines:
        labels = line.split("labels ", 1)[1]
        total += sum(int(part.split(": ")[1]) for part in labels.split(", "))
    assert total == 40  # every row lands with exactly one client, held-out part included


@pytest.mark.parametrize("preset", ["fedsrd-llama3.2-3b.toml", "florist-tinyllama-dolly.toml"])
def test_presets_dry_run_with_tiny_stand_ins(
    preset: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset = _dolly(tmp_path / "dolly.jsonl", 2000)
    files = [str(_dolly(tmp_path / f"c{k}.jsonl", 12)) for k in range(4)]
    stand_ins = ['model.name="tiny-llama"', f"out_dir={json.dumps(str(tmp_path / 'run'))}"]
    if preset.startswith("fedsrd"):
        stand_ins += [f"data.files={json.dumps(files)}", "data.format=dolly"]
    else:
        stand_ins += [f"data.dataset={json.dumps(str(dataset))}"]
    assert main(["run", "--config", str(PRESETS / preset), "--dry-run", *stand_ins]) == 0
    out = capsys.readouterr().out
    assert "adapted:" in out and "memory per client" in out and "bytes per round" in out
    assert not (tmp_path / "run").exists()  # a dry run writes nothing


def test_presets_hold_the_papers_settings() -> None:
    from fedlora import config

    fedsrd = config.load(PRESETS / "fedsrd-llama3.2-3b.toml")
    assert (fedsrd.lora.rank, fedsrd.lora.alpha, fedsrd.lora.peft_targets) == (
        64,
        128,
        "all-linear",
    )
    assert (fedsrd.train.local_steps, fedsrd.train.batch_size, fedsrd.train.grad_accum_steps) == (
        10,
        8,
        4,
    )
    assert (fedsrd.train.seq_len, fedsrd.train.lr, fedsrd.federation.rounds) == (512, 2e-5, 100)
    assert fedsrd.model.dtype == "bfloat16" and fedsrd.federation.weighting == "uniform"
    assert dict(fedsrd.method.options) == {"base": 0.85, "coeff": 0.1, "upper": 0.11, "p_down": 0.8}
    florist = config.load(PRESETS / "florist-tinyllama-dolly.toml")
    assert (florist.data.partition, florist.data.label_column) == ("dirichlet", "category")
    assert florist.data.dirichlet_alpha == 0.5 and florist.data.clients == 100
    assert florist.federation.clients_per_round == 10
    assert (florist.lora.rank, florist.lora.alpha, florist.lora.target_modules) == (
        16,
        32,
        ("q_proj", "v_proj"),
    )
    assert florist.train.lr == 3e-4 and florist.method.options == {"tau": 0.9}


@pytest.mark.parametrize(
    ("write", "named"),
    [
        (
            lambda p: p.write_text(
                '{"instruction": "a", "response": "b", "category": "x"}\n{oops\n'
            ),
            "row 2",
        ),
        (
            lambda p: p.write_text('{"instruction": "a", "category": "x"}\n' * 4),
            "missing field 'response'",
        ),
        (lambda p: p.write_text(""), "the file is empty"),
        (
            lambda p: p.write_text('{"instruction": "a", "response": "b", "category": "x"}\n' * 9),
            "single value",
        ),
    ],
)
def test_bad_data_stops_the_run_before_anything_is_written(
    write: object, named: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset = tmp_path / "bad.jsonl"
    write(dataset)  # type: ignore[operator]
    overrides = _overrides(tmp_path, dataset, [])
    overrides = [o for o in overrides if not o.startswith(("data.partition", "data.clients"))]
    clients = 1 if "single" in named else 3
    partition = "column" if "single" in named else "iid"
    code = main(["run", *overrides, f"data.partition={partition}", f"data.clients={clients}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert named in err[0] and str(dataset) in err[0]
    assert not (tmp_path / "run").exists()
