"""The README's direct-API example runs as written, the README opens with the two commands,
and every shell block of the README and the docs names real commands (make targets, fedlora
subcommands and their options, modules and their options)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

README = Path(__file__).parents[1] / "README.md"


def test_readme_opens_with_the_two_commands() -> None:
    first_block = re.search(r"```sh\n(.*?)```", README.read_text(), re.S)
    assert first_block is not None
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines()]
    assert commands == ["make demo", "make test"]


def test_api_example_runs(capsys) -> None:  # type: ignore[no-untyped-def]
    text = README.read_text()
    block = re.search(r"<!-- readme-api-example -->\n```python\n(.*?)```", text, re.S)
    assert block is not None
    exec(compile(block.group(1), "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "layer0" in out and "torch.Size([32," in out


DOCS = [README, *sorted((README.parent / "docs").glob("*.md"))]
DOCS += sorted((README.parent / "benchmarks").rglob("README.md"))
MAKE_MODULES = {
    "bench-server": "benchmarks.server",
    "bench-client": "benchmarks.client",
    "bench-round": "benchmarks.round",
    "bench-quality": "benchmarks.quality",
}
OTHER_TOOLS = {
    "git",
    "flwr",
    "flower-superlink",
    "flower-supernode",
    "lm_eval",
    "openssl",
    "ssh-keygen",
}


def shell_commands(text: str) -> list[str]:
    """Every command line of the ```sh blocks of ``text`` (continuations joined, comments
    and environment assignments dropped)."""
    out = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                words = shlex.split(line)
                while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                    words = words[1:]
                if words:
                    out.append(shlex.join(words))
    return out


def _parses(module: str, args: list[str]) -> None:
    import importlib

    if importlib.util.find_spec(module) is None:
        raise AssertionError(f"no module {module}")
    for name in (f"{module}.run", module):
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(mod, "build_parser"):
            mod.build_parser().parse_args(args)
            return


def _imports_resolve(code: str) -> None:
    """That ``python -c`` code compiles and every ``from M import N`` in it names a real N."""
    import importlib

    compile(code, "<doc>", "exec")
    for module, names in re.findall(r"from ([\w.]+) import ([\w, ]+)", code):
        mod = importlib.import_module(module)
        for name in names.split(","):
            assert hasattr(mod, name.strip()), f"{module} has no {name.strip()}"


def check_command(command: str, targets: set[str]) -> None:
    """That ``command`` names a real make target, a real fedlora subcommand with options
    its parser takes, a real module, or one of the known outside tools."""
    words = shlex.split(command)
    tool = words[0].removeprefix(".venv/bin/")
    if tool == "make":
        names = [w for w in words[1:] if "=" not in w]
        assert names and all(n in targets for n in names), command
        extra = next((w.split("=", 1)[1] for w in words if w.startswith("ARGS=")), "")
        if names[0] in MAKE_MODULES:
            _parses(MAKE_MODULES[names[0]], shlex.split(extra))
    elif tool == "fedlora":
        from fedlora.cli import build_parser

        build_parser().parse_args(words[1:])
    elif tool in ("python", "python3") and words[1] == "-m":
        _parses(words[2], words[3:])
    elif tool in ("python", "python3") and words[1] == "-c":
        _imports_resolve(words[2])
    else:
        assert tool in OTHER_TOOLS, f"unknown command in a doc: {command}"


def test_every_shell_block_of_the_readme_and_docs_names_real_commands() -> None:
    targets = set(re.findall(r"^([a-z][a-z-]*):", (README.parent / "Makefile").read_text(), re.M))
    checked = 0
    for doc in DOCS:
        for command in shell_commands(doc.read_text()):
            try:
                check_command(command, targets)
            except SystemExit as exc:  # argparse refused it
                raise AssertionError(f"{doc.name}: {command}") from exc
            checked += 1
    assert checked > 20


def test_the_command_checker_refuses_what_does_not_exist() -> None:
    import pytest

    targets = {"demo", "test"}
    for bad in (
        "make deploy",
        "fedlora fly",
        "fedlora run --no-such-flag",
        "python -m fedlora.nothing",
        "python -c 'from fedlora.runtime.flower.launch import write_ap'",
        "rm -rf /",
    ):
        with pytest.raises((AssertionError, SystemExit)):
            check_command(bad, targets)
