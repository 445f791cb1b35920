"""The README's lm-evaluation-harness recipe, exactly: ``lm_eval run --model hf --model_args
pretrained=<base>,peft=RUN/adapter`` with a task YAML over a local JSONL file, offline, on a
tiny run's adapter (needs the ``eval`` extra)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fedlora.cli import main
from tests.conftest import tiny_overrides

pytest.importorskip("lm_eval")
pytestmark = pytest.mark.slow  # a second process

RECIPE = Path(__file__).parents[1] / "docs" / "lm-eval" / "local_mc.yaml"
WORDS = ["plus", "minus", "times", "over"]


def test_lm_eval_scores_a_runs_adapter_offline(tmp_path: Path, client_files: list[str]) -> None:
    # Prepare: a finished run, a local multiple-choice file, the docs' YAML pointed at it
    run = tmp_path / "run"
    assert main(["run", *tiny_overrides(run, client_files), "federation.rounds=1"]) == 0
    quiz = tmp_path / "quiz.jsonl"
    quiz.write_text(
        "".join(
            json.dumps({"question": f"Which word is {w}?", "choices": WORDS, "answer": k}) + "\n"
            for k, w in enumerate(WORDS)
        )
    )
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    yaml = RECIPE.read_text().replace("my_local_mc", "fedlora_quiz")
    (tasks / "quiz.yaml").write_text(yaml.replace("/data/my_mc.jsonl", str(quiz)))
    base = json.loads((run / "adapter" / "adapter_config.json").read_text())[
        "base_model_name_or_path"
    ]
    lm_eval = shutil.which("lm_eval", path=str(Path(sys.executable).parent))
    assert lm_eval is not None
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    # Execute
    subprocess.run(
        [
            lm_eval,
            "run",
            "--model",
            "hf",
            "--model_args",
            f"pretrained={base},peft={run / 'adapter'}",
            "--tasks",
            "fedlora_quiz",
            "--include_path",
            str(tasks),
            "--device",
            "cpu",
            "--batch_size",
            "4",
            "--output_path",
            str(tmp_path / "out"),
        ],
        check=True,
        env=env,
        cwd=tmp_path,
        capture_output=True,
        timeout=600,
    )
    # Assert: every question scored, on the base with the run's adapter
    (results_file,) = (tmp_path / "out").rglob("results_*.json")
    results = json.loads(results_file.read_text())
    assert results["n-samples"]["fedlora_quiz"]["effective"] == len(WORDS)
    assert 0.0 <= results["results"]["fedlora_quiz"]["acc,none"] <= 1.0
    assert str(run / "adapter") in json.dumps(results["config"])
