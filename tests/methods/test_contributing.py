"""CONTRIBUTING.md's account of the method protocol is the protocol: its hook tables name the
hooks of ``methods/base.py`` with their arguments, and its walkthrough is a working method."""

from __future__ import annotations

import inspect
import re
import types
from pathlib import Path

import pytest
import torch

from fedlora.errors import ConfigError
from fedlora.methods import base, registry, secure
from fedlora.methods.base import CAPABILITIES, Core
from tests.methods.helpers import run_round, tiny_setup

CONTRIBUTING = Path(__file__).resolve().parents[2] / "CONTRIBUTING.md"
HOOK = re.compile(r"`(\w+)(?:\(([^)]*)\))?`")


def table_after(marker: str) -> list[list[str]]:
    """The rows (cells) of the markdown table that follows ``<!-- marker -->``."""
    text = CONTRIBUTING.read_text()
    at = text.index(f"<!-- {marker} -->")
    rows = []
    for line in text[at:].splitlines()[1:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows[2:]  # past the header and its rule


def hooks_in(cell: str) -> dict[str, tuple[str, ...] | None]:
    """``{hook: its argument names}`` named in one table cell (``None`` for an attribute,
    written without parentheses)."""
    out: dict[str, tuple[str, ...] | None] = {}
    for match in HOOK.finditer(cell):
        name, args = match.group(1), match.group(2)
        out[name] = None if args is None else tuple(a.strip() for a in args.split(",") if a.strip())
    return out


def protocol_hooks(proto: type, *, attributes: bool) -> dict[str, tuple[str, ...] | None]:
    """What ``proto`` declares: its methods with their argument names, and (when asked)
    its annotated attributes."""
    out: dict[str, tuple[str, ...] | None] = {}
    for name, value in vars(proto).items():
        if not name.startswith("_") and inspect.isfunction(value):
            params = list(inspect.signature(value).parameters)[1:]  # past self
            out[name] = tuple(params)
    if attributes:
        out.update({name: None for name in vars(proto).get("__annotations__", {})})
    return out


def test_the_core_table_is_the_core_protocol() -> None:
    rows = table_after("core-hooks")
    documented: dict[str, tuple[str, ...] | None] = {}
    for cells in rows:
        documented.update(hooks_in(cells[0]))
    assert documented == protocol_hooks(Core, attributes=False)
    assert len(documented) <= 6


def test_the_capability_table_is_the_capability_protocols() -> None:
    rows = table_after("capabilities")
    protocols = {p.__name__: p for p in (*CAPABILITIES, secure.SecureForm)}
    seen = []
    for cells in rows:
        (name,) = re.findall(r"`(\w+)`", cells[0])
        seen.append(name)
        assert hooks_in(cells[1]) == protocol_hooks(protocols[name], attributes=True), name
    assert sorted(seen) == sorted(protocols)
    # what the runtime drives is the core and exactly these capabilities
    assert set(base.Method.__mro__) >= {Core, *CAPABILITIES}


def walkthrough_module(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    text = CONTRIBUTING.read_text()
    block = re.search(r"<!-- walkthrough -->\n```python\n(.*?)```", text, re.S)
    assert block is not None
    assert len(block.group(1).splitlines()) < 80
    # registered into a copy of the registry, so no other test sees "mymethod"
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    module = types.ModuleType("mymethod")
    exec(compile(block.group(1), str(CONTRIBUTING), "exec"), module.__dict__)
    return module


def test_the_walkthrough_reaches_fedavgs_global_model(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: the walkthrough's method and the registered FedAvg on one federation
    module = walkthrough_module(monkeypatch)
    setup = tiny_setup(ranks=(4, 4, 4))
    mine = module.MyMethod(module.MyConfig(), setup)
    fedavg = registry.build("fedavg", setup=setup)
    # Execute: two rounds each, with the same synthetic training
    states = []
    for method in (mine, fedavg):
        gen = torch.Generator().manual_seed(5)
        r1 = run_round(method, method.init_server(), setup, gen=gen)
        r2 = run_round(method, r1.state, setup, gen=gen, views=r1.views)
        states.append((method, r2.state))
    # Assert: the same global update, bit for bit
    (m1, s1), (m2, s2) = states
    d1, d2 = m1.global_delta(s1), m2.global_delta(s2)
    assert d1.keys() == d2.keys()
    for layer in d1:
        assert torch.equal(d1[layer][0], d2[layer][0]) and torch.equal(d1[layer][1], d2[layer][1])
    assert mine.name == "mymethod" and mine.dp_refusal is None


def test_the_walkthrough_refuses_mixed_ranks_when_built(monkeypatch: pytest.MonkeyPatch) -> None:
    module = walkthrough_module(monkeypatch)
    with pytest.raises(ConfigError, match="same LoRA rank and alpha"):
        module.MyMethod(module.MyConfig(), tiny_setup(ranks=(4, 2, 4)))
