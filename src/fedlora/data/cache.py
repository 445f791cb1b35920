"""Where ``fedlora`` keeps downloaded and derived files.

One root folder serves every layer (data now, converted models later) so that a user has a
single place to inspect or delete. The root is ``$FEDLORA_CACHE`` when that variable is set
and not empty, else ``~/.cache/fedlora``; each layer takes a sub-folder of it.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "FEDLORA_CACHE"


def cache_root() -> Path:
    """Return the root of the ``fedlora`` cache (not created).

    Returns
    -------
    Path
        ``$FEDLORA_CACHE`` if set and non-empty, otherwise ``~/.cache/fedlora``.
    """
    override = os.environ.get(CACHE_ENV, "").strip()
    if override:
        return Path(override).expanduser()
    return Path.home() / ".cache" / "fedlora"


def data_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the folder that holds processed datasets (not created).

    Parameters
    ----------
    cache_dir
        Explicit folder to use instead of ``cache_root() / "data"``.
    """
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    return cache_root() / "data"
