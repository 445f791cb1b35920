"""Experiments are data: a benchmark's plan, targets and claims are TOML files beside it."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any


def beside(module_file: str, name: str) -> dict[str, Any]:
    """The TOML file ``name`` in the folder of ``module_file`` (a module's ``__file__``)."""
    path = Path(module_file).with_name(name)
    with path.open("rb") as f:
        return tomllib.load(f)
