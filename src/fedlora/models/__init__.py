"""Model provisioning: local Hugging Face folders, the built-in SmolLM2-135M, tiny test models.

Nothing is ever fetched from a model hub: every loader passes ``local_files_only``.
:func:`resolve_model` is the entry point. Offline mode for the whole process
(:func:`set_offline`) is the command line's choice (``fedlora``'s CLI and the Flower apps set
it), not a side effect of loading a model, so a program importing fedlora keeps its own.
"""

from fedlora.models.local import load_model_folder, validate_model_folder
from fedlora.models.offline import OFFLINE_ENV, is_offline, set_offline
from fedlora.models.resolve import BUILTIN_MODELS, model_folder, resolve_model
from fedlora.models.smollm2 import provision_smollm2, smollm2_dir
from fedlora.models.tiny import build_tiny_model, tiny_config
from fedlora.models.tokenizer import CHATML_TEMPLATE, build_byte_tokenizer

__all__ = [
    "BUILTIN_MODELS",
    "CHATML_TEMPLATE",
    "OFFLINE_ENV",
    "build_byte_tokenizer",
    "build_tiny_model",
    "is_offline",
    "load_model_folder",
    "model_folder",
    "provision_smollm2",
    "resolve_model",
    "set_offline",
    "smollm2_dir",
    "tiny_config",
    "validate_model_folder",
]
