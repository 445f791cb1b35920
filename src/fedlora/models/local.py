"""Load a causal LM from a local Hugging Face folder, after checking that it is one.

The checks run before transformers sees the folder so that a wrong path gives one clear
:class:`~fedlora.errors.ConfigError` naming the folder and the problem, instead of a stack
trace from deep inside ``from_pretrained`` (or, worse, an attempt to reach a model hub).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from fedlora.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

#: Weight files accepted. Pickle-based ``*.bin`` checkpoints are refused on purpose.
SAFETENSORS_FILES: tuple[str, ...] = ("model.safetensors", "model.safetensors.index.json")


def validate_model_folder(path: Path) -> dict[str, Any]:
    """Check that ``path`` is a local causal-LM folder and return its parsed ``config.json``.

    Parameters
    ----------
    path
        Folder expected to hold ``config.json``, safetensors weights and a tokenizer.

    Returns
    -------
    dict[str, Any]
        The contents of ``config.json``.

    Raises
    ------
    ConfigError
        If the folder is missing, has no readable ``config.json``, has a ``model_type`` that
        ``AutoModelForCausalLM`` does not support, lists only non-causal-LM
        ``architectures``, or has no safetensors weights.
    """
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if not path.exists():
        raise ConfigError(f"model folder {path} does not exist")
    if not path.is_dir():
        raise ConfigError(f"model path {path} is not a folder")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ConfigError(f"model folder {path} has no config.json")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"{config_file} is not valid JSON: {error}") from error
    if not isinstance(config, dict):
        raise ConfigError(f"{config_file} must hold a JSON object")

    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        raise ConfigError(f"{config_file}: unknown or missing model_type {model_type!r}")
    causal_class = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)
    if causal_class is None:
        raise ConfigError(
            f"model folder {path} is not a causal LM: model_type {model_type!r} has no "
            "AutoModelForCausalLM class"
        )
    causal_names = {causal_class} if isinstance(causal_class, str) else set(causal_class)
    architectures = config.get("architectures") or []
    # A folder saved from e.g. a sequence classifier has the right model_type but a head
    # that a causal LM would silently drop and re-initialise: refuse it.
    if architectures and not causal_names.intersection(architectures):
        raise ConfigError(
            f"model folder {path} is not a causal LM: architectures {architectures} "
            f"include none of {sorted(causal_names)}"
        )
    if not any((path / name).is_file() for name in SAFETENSORS_FILES):
        raise ConfigError(
            f"model folder {path} has no safetensors weights (expected one of "
            f"{', '.join(SAFETENSORS_FILES)}; pickle-based .bin checkpoints are not loaded)"
        )
    return config


def load_model_folder(
    path: Path, *, dtype: torch.dtype = torch.float32, extra: dict[str, Any] | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load the model and tokenizer of a validated local folder, offline.

    Parameters
    ----------
    path
        A causal-LM folder (see :func:`validate_model_folder`).
    dtype
        Precision of the loaded weights (read straight into it: no float32 copy first).
    extra
        More ``from_pretrained`` keywords (``quantization_config``, ``device_map``).

    Returns
    -------
    tuple[PreTrainedModel, PreTrainedTokenizerBase]
        The model in ``dtype``, eval mode, on CPU (unless ``extra`` places it), and its
        tokenizer. If the tokenizer has no
        padding token its EOS token is used for padding.

    Raises
    ------
    ConfigError
        If the folder fails validation or transformers cannot load it.
    """
    validate_model_folder(path)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, TypeError) as error:
        raise ConfigError(f"model folder {path}: cannot load its tokenizer: {error}") from error
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, use_safetensors=True, dtype=dtype, **(extra or {})
        )
    except (OSError, ValueError, TypeError, RuntimeError) as error:
        raise ConfigError(f"model folder {path}: cannot load the model: {error}") from error
    model.eval()
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        # Batched training and evaluation need a pad id; the EOS token is the usual stand-in
        # and is masked out of the loss by the attention mask anyway.
        tokenizer.pad_token = tokenizer.eos_token
        logger.info("tokenizer of %s has no pad token; using EOS %r", path, tokenizer.eos_token)
    if tokenizer.chat_template is None:
        logger.warning("tokenizer of %s has no chat template; chat prompts will fail", path)
    return model, tokenizer
