"""Model provisioning: local Hugging Face folders, the built-in SmolLM2-135M, tiny test models.

Nothing is ever fetched from a model hub: every loader passes ``local_files_only``.
:func:`resolve_model` is the entry point. Offline mode for the whole process
(:func:`set_offline`) is the command line's choice (``fedlora``'s CLI and the Flower apps set
it), not a side effect of loading a model, so a program importing fedlora keeps its own.

The names below are imported on first use (PEP 562), so that ``set_offline`` and the
command line's help do not import torch and transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "load_model_folder": "local",
    "validate_model_folder": "local",
    "OFFLINE_ENV": "offline",
    "is_offline": "offline",
    "set_offline": "offline",
    "BUILTIN_MODELS": "resolve",
    "model_folder": "resolve",
    "resolve_model": "resolve",
    "provision_smollm2": "smollm2",
    "smollm2_dir": "smollm2",
    "build_tiny_model": "tiny",
    "tiny_config": "tiny",
    "CHATML_TEMPLATE": "tokenizer",
    "build_byte_tokenizer": "tokenizer",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'fedlora.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"fedlora.models.{_WHERE[name]}"), name)
    globals()[name] = value
    return value
