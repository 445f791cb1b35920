"""``fedlora`` builds one parser tree: every command adds its own subparser, so its real
options show in ``--help`` and bad options fail in argparse like any other. The benchmarks
are not fedlora commands: each is ``python -m benchmarks.<name>`` with a parser of its own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fedlora.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("argv", "option"),
    [(["comm"], "--shape"), (["data"], "--config"), (["eval"], "--tasks")],
)
def test_each_tool_shows_its_own_options(
    argv: list[str], option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        main([*argv, "--help"])
    assert done.value.code == 0
    assert option in capsys.readouterr().out


def test_a_tools_options_are_parsed_by_the_tree() -> None:
    argv = ["comm", "--shape", "smollm2-135m", "--rank", "2", "--json"]
    args = build_parser(argv).parse_args(argv)
    assert (args.shape, args.rank, args.json) == ("smollm2-135m", 2, True)


def test_an_unknown_option_of_a_tool_fails_with_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["comm", "--shape", "smollm2-135m", "--rank", "2", "--no-such-option"])
    assert done.value.code == 2
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err


def test_fedlora_has_no_bench_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["bench", "server"])
    assert "invalid choice: 'bench'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "option"),
    [("server", "--model-blocks"), ("client", "--rss-clients"), ("quality", "--seeds")],
)
def test_each_benchmark_runs_as_a_module_with_its_options(name: str, option: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name}", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert option in done.stdout and f"benchmarks.{name}" in done.stdout
