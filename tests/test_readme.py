"""The README's direct-API example runs as written, and the README opens with the two
commands."""

from __future__ import annotations

import re
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
