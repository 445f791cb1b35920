"""The commands that do no work answer without loading the heavy libraries: ``--help``,
``--version`` and a config mistake import neither torch nor transformers (checked by the
modules a fresh interpreter holds afterwards, not by the time it took)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "peft", "flwr", "datasets", "safetensors")

PROBE = """
import contextlib, io, json, sys
from fedlora.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
    try:
        code = main({argv!r})
    except SystemExit as done:
        code = done.code
heavy = sorted({{m.split(".")[0] for m in sys.modules}} & set({heavy!r}))
print(json.dumps({{"code": code, "heavy": heavy, "out": out.getvalue()}}))
"""


def _probe(argv: list[str]) -> dict[str, object]:
    script = PROBE.format(argv=argv, heavy=HEAVY)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize(
    ("argv", "code", "says"),
    [
        (["--help"], 0, "usage: fedlora"),
        (["--version"], 0, "fedlora 0."),
        (["run", "--help"], 0, "--resume"),
        (["run", "train.lrr=0.1"], 2, "did you mean 'train.lr'?"),
        (["run", "--config", "/no/such/run.toml"], 2, "/no/such/run.toml"),
    ],
)
def test_fast_answers_import_no_heavy_library(argv: list[str], code: int, says: str) -> None:
    result = _probe(argv)
    assert result["code"] == code
    assert says in str(result["out"])
    assert result["heavy"] == [], f"{argv} imported {result['heavy']}"


@pytest.mark.parametrize(
    ("override", "says"),
    [
        ("method=fedsvdd", "unknown method 'fedsvdd' (did you mean 'fedsvd'?)"),
        ("method=fedsrd method.fedsrd.ridg=0.1", "(did you mean 'method.fedsrd.ridge'?)"),
        ("data.label_colum=topic", "(did you mean 'data.label_column'?)"),
    ],
)
def test_a_mistyped_name_suggests_the_closest_known_one(
    override: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from fedlora.cli import main

    assert main(["run", *override.split()]) == 2
    assert says in capsys.readouterr().err
