"""Where and in what precision the frozen base model lives: ``train.device``,
``model.dtype`` and ``model.quantize``.

Only the base changes precision. LoRA factors stay float32 (PEFT upcasts adapter weights of a
low-precision base), and so do the optimiser state, every payload and every server
computation. A quantized base needs CUDA and bitsandbytes; without them the run stops at
start with one :class:`~fedlora.errors.ConfigError` naming the option.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from fedlora.config import ModelConfig
from fedlora.errors import ConfigError
from fedlora.models.local import load_model_folder
from fedlora.models.resolve import model_folder, resolve_model

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

#: Non-reentrant checkpointing needs no input that requires grad and keeps dropout's RNG.
_NON_REENTRANT = {"use_reentrant": False}

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Placement:
    """A resolved device, the base's dtype and its quantization."""

    device: torch.device
    dtype: torch.dtype
    quantize: str = "none"


def resolve_device(name: str) -> torch.device:
    """``auto`` → the first CUDA device when there is one, else the CPU; ``cuda[:N]`` must
    exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device = {name!r}, but this machine has no CUDA device")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"train.device = {name!r}, but there are only {torch.cuda.device_count()} "
                "CUDA devices"
            )
    return device


def placement(model: ModelConfig, device: str) -> Placement:
    """Check ``model.dtype``/``model.quantize`` against ``train.device`` and this machine."""
    place = Placement(resolve_device(device), DTYPES[model.dtype], model.quantize)
    if place.quantize != "none":
        key = f"model.quantize = {place.quantize!r}"
        if place.device.type != "cuda":
            raise ConfigError(
                f"{key} needs a CUDA GPU (bitsandbytes k-bit layers do not run on "
                f"{place.device.type}); set model.quantize = 'none' here"
            )
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ConfigError(f"{key} needs bitsandbytes: pip install 'fedlora[gpu]'")
    return place


def _bnb_config(place: Placement) -> Any:
    from transformers import BitsAndBytesConfig

    if place.quantize == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.bfloat16,
        bnb_4bit_use_double_quant=True,
    )


def load_base(
    model: ModelConfig, place: Placement, *, seed: int, gradient_checkpointing: bool = False
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The base model and tokenizer, on ``place.device`` in ``place.dtype`` (or quantized,
    then prepared for k-bit training as PEFT recommends)."""
    if place.quantize == "none":
        base, tokenizer = resolve_model(model.name, seed=seed, dtype=place.dtype)
        base.to(place.device)  # type: ignore[arg-type]
        if gradient_checkpointing:
            base.activation_checkpointing_enable(activation_checkpointing_kwargs=_NON_REENTRANT)
        return base, tokenizer
    from peft import prepare_model_for_kbit_training

    folder = model_folder(model.name, seed=seed)
    index = place.device.index if place.device.index is not None else 0
    base, tokenizer = load_model_folder(
        folder,
        dtype=torch.bfloat16,
        extra={"quantization_config": _bnb_config(place), "device_map": {"": index}},
    )
    base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=gradient_checkpointing)
    return base, tokenizer


def device_of(module: torch.nn.Module) -> torch.device:
    """The device of ``module``'s first parameter (CPU for a module without any)."""
    first = next(module.parameters(), None)
    return first.device if first is not None else torch.device("cpu")
