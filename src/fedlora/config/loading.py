"""Loading a run's configuration: TOML plus ``key=value`` overrides, to and from plain data."""

from __future__ import annotations

import dataclasses
import json
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedlora.config.sections import MethodChoice, RunConfig, _check
from fedlora.errors import ConfigError, did_you_mean


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (types.UnionType, typing.Union):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None  # an optional key written as JSON null (config.json)
        return _coerce(value, [a for a in args if a is not type(None)][0], key)
    if origin is tuple:
        if isinstance(value, str):
            value = [value]  # a single string is a list of one (target_modules = "all-linear")
        _check(isinstance(value, list | tuple), key, f"must be a list, got {value!r}")
        (item,) = typing.get_args(tp)[:1]
        return tuple(_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is float:
        _check(
            isinstance(value, int | float) and not isinstance(value, bool),
            key,
            f"must be a number, got {value!r}",
        )
        return float(value)
    if tp is int:
        _check(
            isinstance(value, int) and not isinstance(value, bool),
            key,
            f"must be an integer, got {value!r}",
        )
        return value
    if tp is str:
        _check(isinstance(value, str), key, f"must be a string, got {value!r}")
        return value
    if tp is bool:
        _check(isinstance(value, bool), key, f"must be true or false, got {value!r}")
        return value
    return value


def _build(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if k not in fields:
            raise ConfigError(
                f"unknown config key {key!r}{did_you_mean(k, fields, prefix)}; "
                f"known: {', '.join(sorted(fields))}"
            )
        tp = hints[k]
        if dataclasses.is_dataclass(tp):
            _check(isinstance(v, dict), key, "must be a table")
            kwargs[k] = _build(tp, v, key + ".")  # type: ignore[arg-type]
        else:
            kwargs[k] = _coerce(v, tp, key)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: {exc}") from None


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare word is a string


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with each ``dotted.key=value`` set (value parsed as TOML)."""
    out = json.loads(json.dumps(raw))  # deep copy of plain TOML data
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        dotted, text = item.split("=", 1)
        parts = dotted.strip().split(".")
        if parts == ["method"]:
            parts = ["method", "name"]
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {dotted!r}: {p!r} is not a table")
        node[parts[-1]] = _parse_value(text.strip())
    return out


def from_dict(raw: Mapping[str, Any]) -> RunConfig:
    """Build and check a RunConfig from plain TOML data."""
    raw = dict(raw)
    method_raw = raw.pop("method", {})
    if isinstance(method_raw, str):
        method_raw = {"name": method_raw}
    _check(isinstance(method_raw, dict), "method", "must be a table or a method name")
    name = method_raw.get("name", "fedavg")
    _check(isinstance(name, str), "method.name", "must be a string")
    unknown = [k for k, v in method_raw.items() if k != "name" and not isinstance(v, dict)]
    _check(
        not unknown,
        f"method.{unknown[0] if unknown else ''}",
        "method options belong in [method.<name>] tables",
    )
    options = dict(method_raw.get(name, {}))
    cfg: RunConfig = _build(RunConfig, raw, "")
    # Validate the method name and its options now, so a bad option stops the run at start.
    from fedlora.methods.registry import make_config

    make_config(name, options)
    return dataclasses.replace(cfg, method=MethodChoice(name=name, options=options))


def load(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Load ``path`` (TOML; None = defaults only) and apply ``overrides``."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            raw = tomllib.loads(p.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {p} is not valid TOML: {exc}") from None
    return from_dict(apply_overrides(raw, overrides or []))


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    """Plain data of a config (method options under ``method.<name>``), JSON/TOML-able."""
    out = dataclasses.asdict(cfg)
    choice = out.pop("method")
    out["method"] = {"name": choice["name"], choice["name"]: dict(choice["options"])}
    return out
