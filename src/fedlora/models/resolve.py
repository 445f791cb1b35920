"""Turn a model name or folder into a ready (model, tokenizer) pair."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from fedlora.data.cache import cache_root
from fedlora.errors import ConfigError
from fedlora.files import follow_umask
from fedlora.models.local import load_model_folder
from fedlora.models.smollm2 import SMOLLM2_NAME, provision_smollm2
from fedlora.models.tiny import build_tiny_model

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    ModelAndTokenizer = tuple[PreTrainedModel, PreTrainedTokenizerBase]

#: Names that :func:`resolve_model` accepts besides local folders.
BUILTIN_MODELS: tuple[str, ...] = (SMOLLM2_NAME, "tiny-llama", "tiny-qwen2")


def _builtin_loaders() -> dict[str, Callable[[int, torch.dtype], ModelAndTokenizer]]:
    # Built per call (it is tiny) so the module holds no state.
    return {
        SMOLLM2_NAME: lambda seed, dtype: load_model_folder(provision_smollm2(), dtype=dtype),
        "tiny-llama": lambda seed, dtype: build_tiny_model("llama", seed=seed, dtype=dtype),
        "tiny-qwen2": lambda seed, dtype: build_tiny_model("qwen2", seed=seed, dtype=dtype),
    }


def resolve_model(
    name_or_path: str | os.PathLike[str], *, seed: int = 0, dtype: torch.dtype = torch.float32
) -> ModelAndTokenizer:
    """Return the model and tokenizer named by ``name_or_path``, without any network access.

    Parameters
    ----------
    name_or_path
        One of :data:`BUILTIN_MODELS` (``smollm2-135m`` is converted and cached on first
        use; the ``tiny-*`` models are built in code) or a local Hugging Face causal-LM
        folder with safetensors weights. A built-in name wins over a folder of the same
        name in the working directory; write ``./tiny-llama`` to mean the folder.
    seed
        Weight-initialisation seed of the ``tiny-*`` models; ignored by pretrained models.
    dtype
        Precision of the model's weights.

    Returns
    -------
    tuple[PreTrainedModel, PreTrainedTokenizerBase]
        The model in ``dtype``, eval mode, on CPU, and its tokenizer (with a chat template for
        every built-in model).

    Raises
    ------
    ConfigError
        If the name is not built in and is not a valid causal-LM folder.
    DataError
        If ``smollm2-135m`` must be provisioned and its download or hash check fails.
    """
    name = os.fspath(name_or_path)
    loader = _builtin_loaders().get(name)
    if loader is not None:
        return loader(seed, dtype)
    path = Path(name).expanduser()
    if not path.exists():
        raise ConfigError(
            f"model folder {path} does not exist and {name!r} is not a built-in model "
            f"({', '.join(BUILTIN_MODELS)}); fedlora loads local folders only, never a model hub"
        )
    return load_model_folder(path, dtype=dtype)


def model_folder(name_or_path: str | os.PathLike[str], *, seed: int = 0) -> Path:
    """A local Hugging Face folder holding the model ``name_or_path`` names (absolute).

    What a run's adapter records as ``base_model_name_or_path``, so that the adapter loads
    outside fedlora (``AutoPeftModelForCausalLM``). ``smollm2-135m``: its converted cache
    folder; ``tiny-*``: the seeded tiny model and its tokenizer saved once to the cache (the
    same weights :func:`resolve_model` builds in code); a folder: itself.
    """
    name = os.fspath(name_or_path)
    if name == SMOLLM2_NAME:
        return provision_smollm2().resolve()
    if name in BUILTIN_MODELS:
        return _saved_tiny(name, seed)
    path = Path(name).expanduser()
    if not path.is_dir():
        raise ConfigError(f"model folder {path} does not exist")
    return path.resolve()


def _saved_tiny(name: str, seed: int) -> Path:
    folder = cache_root() / "models" / f"{name}-seed{seed}"
    if (folder / "config.json").is_file():
        return folder.resolve()
    model, tokenizer = _builtin_loaders()[name](seed, torch.float32)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    follow_umask(tmp)
    if not folder.exists():  # another process may have won the race: keep theirs
        os.replace(tmp, folder)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder.resolve()
