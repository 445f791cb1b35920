"""``fedlora`` builds one parser tree: every command and benchmark adds its own subparser, so
its real options show in ``--help`` and bad options fail in argparse like any other."""

from __future__ import annotations

import pytest

from fedlora.cli import build_parser, main


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["comm"], "--shape"),
        (["bench", "server"], "--model-blocks"),
        (["bench", "client"], "--rss-clients"),
        (["bench", "quality"], "--seeds"),
    ],
)
def test_each_tool_shows_its_own_options(
    argv: list[str], option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        main([*argv, "--help"])
    assert done.value.code == 0
    assert option in capsys.readouterr().out


def test_a_tools_options_are_parsed_by_the_tree() -> None:
    args = build_parser().parse_args(["comm", "--shape", "smollm2-135m", "--rank", "2", "--json"])
    assert (args.shape, args.rank, args.json) == ("smollm2-135m", 2, True)
    args = build_parser().parse_args(["bench", "server", "--blocks", "1", "--methods", "fedavg"])
    assert args.which == "server" and args.blocks == 1


def test_an_unknown_option_of_a_tool_fails_with_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["bench", "client", "--no-such-option"])
    assert done.value.code == 2
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err
