"""Name -> (method class, config dataclass). The only place method names are looked up.

:data:`NAMES` lists the registered names without importing any method (which imports torch),
so that a mistyped name is answered at once; a test keeps it equal to the registry.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from fedlora.errors import ConfigError, did_you_mean

if TYPE_CHECKING:
    from fedlora.methods.base import Method, Setup

NAMES = (
    "fed_dare", "fed_sb", "fedavg", "fedex", "fedprox", "fedsa", "fedsrd", "fedsrd-e",
    "fedsvd", "ffa", "flexlora", "flora", "florist", "local", "rolora",
)  # fmt: skip

_REGISTRY: dict[str, tuple[type, type]] = {}

T = TypeVar("T", bound=type)


def register(name: str, config_cls: type) -> Callable[[T], T]:
    """Class decorator: make a method selectable as ``method = "<name>"``.

    The class is built as ``cls(config, setup)`` (``common.MethodBase`` takes both).
    """
    if not dataclasses.is_dataclass(config_cls):
        raise TypeError(f"config of method {name!r} must be a dataclass")

    def wrap(cls: T) -> T:
        if name in _REGISTRY and _REGISTRY[name][0] is not cls:
            raise ValueError(f"method {name!r} registered twice")
        cls.name = name  # type: ignore[attr-defined]
        _REGISTRY[name] = (cls, config_cls)
        return cls

    return wrap


def _load_all() -> None:
    # Importing the package runs every method module's @register.
    import fedlora.methods.all  # noqa: F401


def names() -> list[str]:
    """Registered method names, sorted."""
    _load_all()
    return sorted(_REGISTRY)


def entry(name: str) -> tuple[type, type]:
    """(class, config class) of a method, or ConfigError naming the choices."""
    if name not in NAMES:  # answered before any method (and torch) is imported
        raise ConfigError(
            f"unknown method {name!r}{did_you_mean(name, NAMES)}; choose one of: {', '.join(NAMES)}"
        )
    _load_all()
    if name not in _REGISTRY:
        raise ConfigError(
            f"unknown method {name!r}{did_you_mean(name, _REGISTRY)}; "
            f"choose one of: {', '.join(sorted(_REGISTRY))}"
        )
    return _REGISTRY[name]


def make_config(name: str, options: Mapping[str, Any] | None = None) -> Any:
    """Build method ``name``'s config from ``options``; unknown keys and bad values raise
    ConfigError naming ``method.<name>.<key>``."""
    _, config_cls = entry(name)
    options = dict(options or {})
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(
            f"unknown option method.{name}.{unknown[0]}"
            f"{did_you_mean(unknown[0], known, f'method.{name}.')}; options of {name}: "
            f"{', '.join(sorted(known)) or '(none)'}"
        )
    try:
        return config_cls(**options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"method.{name}: {exc}") from None


def build(name: str, options: Mapping[str, Any] | None = None, *, setup: Setup) -> Method:
    """Method ``name`` with its validated config, built for ``setup``: ConfigError names an
    option's bad value, or why the method cannot run this federation."""
    cls, _ = entry(name)
    return cls(make_config(name, options), setup)  # type: ignore[no-any-return]
