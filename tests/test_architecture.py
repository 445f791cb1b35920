"""Guard rails: the layering (arrows point down only) and what every method must ship."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import io
import re
import tokenize
from pathlib import Path

import pytest
import torch

import fedlora
from fedlora.methods.registry import build, entry, names
from tests.methods.helpers import run_round, tiny_setup

PACKAGE = Path(fedlora.__file__).parent
TESTS = Path(__file__).parent

# Rank of each top-level part of the package: a module may import only parts of equal or
# lower rank (ops -> methods -> wire -> train -> runtime -> cli, with the leaves beside them).
RANK = {
    "errors": 0,
    "files": 0,
    "validate": 0,
    "__init__": 0,
    "ops": 1,
    "methods": 2,
    "wire": 3,
    "shapes": 3,
    "data": 3,
    "config": 3,
    "models": 4,
    "train": 5,
    "eval": 5,
    "runtime": 6,
    "comm": 7,
    "merge": 7,
    "export": 7,
    "plan": 7,
    "eval_cmd": 7,
    "cli": 8,
}
FORBIDDEN_IN_OPS = ("torch.nn", "transformers", "peft", "flwr")


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1].removesuffix(".py") if len(parts) > 1 else "__init__"


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    out: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
            out.extend(f"{node.module}.{a.name}" for a in node.names)
    return out


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        out.append((".".join(rel.parts), path))
    return out


def test_every_part_has_a_rank() -> None:
    parts = {_part(m) for m, _ in _modules()}
    assert parts <= set(RANK), sorted(parts - set(RANK))


NO_PAPER = {"local"}
"""Reference rows that are no paper's method (local-only training, the lower bound)."""


@pytest.mark.parametrize(("module", "path"), _modules(), ids=[m for m, _ in _modules()])
def test_imports_point_down(module: str, path: Path) -> None:
    own = RANK[_part(module)]
    upward = [
        imp
        for imp in _imports(path)
        if imp.startswith("fedlora.") and RANK.get(_part(imp), 0) > own
    ]
    assert upward == [], f"{module} imports a higher layer: {upward}"
    if _part(module) == "ops":
        bad = [i for i in _imports(path) if i.startswith(FORBIDDEN_IN_OPS)]
        assert bad == [], f"{module} imports {bad}"
    if module != "fedlora.cli":
        assert not any(
            i == "fedlora.cli" or i.startswith("fedlora.cli.") for i in _imports(path)
        ), f"{module} imports the CLI"


BENCHMARKS = TESTS.parent / "benchmarks"


def test_the_package_never_imports_the_benchmarks() -> None:
    found = [
        (module, imp)
        for module, path in _modules()
        for imp in _imports(path)
        if imp == "benchmarks" or imp.startswith("benchmarks.")
    ]
    assert found == []


def test_the_benchmarks_use_fedlora_through_its_public_layers_only() -> None:
    # Prepare: every benchmark module and what it imports
    modules = sorted(BENCHMARKS.rglob("*.py"))
    assert len(modules) > 10
    # Assert: fedlora's CLI is not a library, and nothing imports the tests
    for path in modules:
        imports = _imports(path)
        assert not any(i == "fedlora.cli" or i.startswith("fedlora.cli.") for i in imports), path
        assert not any(i == "tests" or i.startswith("tests.") for i in imports), path


@pytest.mark.parametrize("name", names())
def test_method_ships_config_paper_and_runs(name: str) -> None:
    cls, config_cls = entry(name)
    assert dataclasses.is_dataclass(config_cls) and config_cls.__dataclass_params__.frozen
    module = importlib.import_module(cls.__module__)
    doc = module.__doc__ or ""
    if name not in NO_PAPER:
        assert re.search(r"(arXiv \d{4}\.\d{4,5}|Paper:|\b(19|20)\d{2}\b)", doc), (
            f"{cls.__module__} docstring names no paper"
        )
    # Exercised: one round through its real hooks on a tiny federation, checked for shape
    # and finiteness (its own invariants are its test module's job)
    setup = tiny_setup()
    method = build(name, setup=setup)
    result = run_round(method, method.init_server(), setup)
    assert result.state.round == 1
    delta = method.global_delta(result.state)
    assert set(delta) == {s.name for s in setup.layers}
    for layer, (left, right) in delta.items():
        spec = setup.layer(layer)
        assert left.shape[0] == spec.out_features and right.shape[1] == spec.in_features
        assert bool(torch.isfinite(left @ right).all()), f"{name}: non-finite update of {layer}"


def _sources() -> list[Path]:
    return sorted([*(TESTS.parent / "src").rglob("*.py"), *BENCHMARKS.rglob("*.py")])


def code_lines(source: str) -> set[int]:
    """The line numbers of ``source`` that hold code: not blank, not only a comment, not part
    of a module's, class's or function's docstring."""
    tree = ast.parse(source)
    docs: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
                and first.end_lineno is not None
            ):
                docs.update(range(first.lineno, first.end_lineno + 1))
    lines = set()
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in skip and tok.type != tokenize.ENDMARKER:
            lines.update(range(tok.start[0], tok.end[0] + 1))
    return lines - docs


def test_code_lines_leave_out_docstrings_comments_and_blank_lines() -> None:
    source = 'def f(x):\n    """Doc.\n\n    More."""\n    # why\n\n    return (x +\n        1)\n'
    assert code_lines(source) == {1, 7, 8}


def test_no_module_is_over_500_code_lines_and_no_function_over_80() -> None:
    long_modules, long_functions = {}, {}
    for p in _sources():
        source = p.read_text(encoding="utf-8")
        lines = code_lines(source)
        if len(lines) > 500:
            long_modules[str(p)] = len(lines)
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno:
                n = len(lines & set(range(node.lineno, node.end_lineno + 1)))
                if n > 80:
                    long_functions[f"{p}:{node.name}"] = n
    assert long_modules == {} and long_functions == {}


def _parameters(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    a = node.args
    names = [*a.posonlyargs, *a.args, *a.kwonlyargs]
    n = len(names) + (a.vararg is not None) + (a.kwarg is not None)
    return n - (1 if names and names[0].arg in ("self", "cls") else 0)


def test_no_function_of_the_library_takes_more_than_8_parameters() -> None:
    # what travels together is grouped into a type (ClientSide, Turn, Received, LocalRun)
    wide = {
        f"{path.relative_to(PACKAGE)}:{node.name}": _parameters(node)
        for path in sorted(PACKAGE.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and _parameters(node) > 8
    }
    assert wide == {}
