"""Datasets from real, pinned registry packages; templates; client partitioners.

Public entry points:

* :func:`load_domain` / :data:`DOMAINS` - the four real domains as prompt/completion
  :class:`Example` lists split into train and held-out parts.
* :func:`by_domain`, :func:`dirichlet`, :func:`iid` - assign examples to clients.
* :mod:`fedlora.data.eval_tasks` - held-out multiple-choice items and the OOD task.
* :func:`cache_root` - the cache folder shared with model provisioning.
"""

from fedlora.data.cache import cache_root, data_cache_dir
from fedlora.data.domains import DOMAINS, load_domain, load_records, load_split_records
from fedlora.data.partition import by_domain, dirichlet, iid
from fedlora.data.types import DomainData, Example

__all__ = [
    "DOMAINS",
    "DomainData",
    "Example",
    "by_domain",
    "cache_root",
    "data_cache_dir",
    "dirichlet",
    "iid",
    "load_domain",
    "load_records",
    "load_split_records",
]
