"""Read and write standard PEFT LoRA adapter folders.

A folder holds ``adapter_config.json`` and ``adapter_model.safetensors`` with tensors named
``base_model.model.<layer>.lora_A.weight`` (r×n) and ``...lora_B.weight`` (m×r). Federated
results can have a different rank per layer (FLoRIST); those use PEFT's ``rank_pattern`` and
``alpha_pattern`` keyed by the full module path.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from fedlora.errors import ConfigError
from fedlora.files import follow_umask
from fedlora.methods.base import Factored, Lora, LoraPair
from fedlora.ops.factored import factored_svd, numerical_rank

_PREFIX = "base_model.model."


@dataclass(frozen=True)
class PeftAdapter:
    """An adapter read from a PEFT folder: factors plus each layer's scaling ``alpha/r``."""

    path: Path
    lora: Lora
    scaling: dict[str, float]
    rank: dict[str, int]
    alpha: dict[str, float]
    target_modules: tuple[str, ...]
    base_model: str | None


def compact(deltas: Mapping[str, Factored]) -> dict[str, Factored]:
    """Re-factor each ``L @ R`` at its numerical rank (exact up to float noise)."""
    out: dict[str, Factored] = {}
    for name, (left, right) in deltas.items():
        u, s, v = factored_svd(left.double(), right.double())
        k = max(numerical_rank(s), 1)
        out[name] = ((u[:, :k] * s[:k]).float(), v[:, :k].T.contiguous().float())
    return out


def write_adapter(
    folder: str | Path,
    deltas: Mapping[str, Factored],
    *,
    base_model: str | None,
    target_modules: list[str] | tuple[str, ...] | None = None,
) -> Path:
    """Write ``deltas`` (scaled ``L @ R`` per layer) as a PEFT LoRA folder, atomically.

    Each layer gets rank ``q`` = its factor width and ``alpha = q`` (scaling 1), so
    ``B = L`` and ``A = R`` exactly. ``target_modules`` defaults to the module names the
    layers end with (what ``"all-linear"`` resolved to).
    """
    folder = Path(folder)
    ranks = {name: int(left.shape[1]) for name, (left, _) in deltas.items()}
    if not ranks:
        raise ValueError("no layers to write")
    top = max(ranks.values())
    tensors: dict[str, torch.Tensor] = {}
    for name, (left, right) in deltas.items():
        tensors[f"{_PREFIX}{name}.lora_A.weight"] = right.float().contiguous()
        tensors[f"{_PREFIX}{name}.lora_B.weight"] = left.float().contiguous()
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": top,
        "lora_alpha": top,
        "rank_pattern": {n: r for n, r in ranks.items() if r != top},
        "alpha_pattern": {n: r for n, r in ranks.items() if r != top},
        "target_modules": sorted(
            set(target_modules or {name.rsplit(".", 1)[-1] for name in deltas})
        ),
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "use_rslora": False,
    }
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
    (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    follow_umask(tmp)
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder


def _pattern_value(pattern: Mapping[str, object], name: str, default: float) -> float:
    for key, value in pattern.items():
        if name == key or name.endswith("." + key):
            return float(value)  # type: ignore[arg-type]
    return default


def read_adapter(folder: str | Path) -> PeftAdapter:
    """Read a PEFT LoRA folder; errors name the folder and what is wrong."""
    folder = Path(folder)
    cfg_path, st_path = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    if not folder.is_dir():
        raise ConfigError(f"adapter folder not found: {folder}")
    if not cfg_path.is_file() or not st_path.is_file():
        raise ConfigError(
            f"{folder} is not a PEFT adapter folder (needs adapter_config.json "
            "and adapter_model.safetensors)"
        )
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{cfg_path}: invalid JSON: {exc}") from None
    if cfg.get("peft_type") != "LORA":
        raise ConfigError(f"{folder}: peft_type is {cfg.get('peft_type')!r}, not LORA")
    if cfg.get("use_rslora"):
        raise ConfigError(f"{folder}: rsLoRA adapters are not supported yet")
    tensors = load_file(str(st_path))
    lora: Lora = {}
    scaling: dict[str, float] = {}
    ranks: dict[str, int] = {}
    alphas: dict[str, float] = {}
    for key, a in tensors.items():
        if not key.endswith(".lora_A.weight"):
            continue
        name = key.removeprefix(_PREFIX).removesuffix(".lora_A.weight")
        b_key = key.replace(".lora_A.weight", ".lora_B.weight")
        if b_key not in tensors:
            raise ConfigError(f"{folder}: layer {name} has lora_A but no lora_B")
        b = tensors[b_key]
        r = int(a.shape[0])
        if b.shape[1] != r:
            raise ConfigError(
                f"{folder}: layer {name}: A is {tuple(a.shape)} but B is {tuple(b.shape)}"
            )
        alpha = _pattern_value(
            cfg.get("alpha_pattern") or {}, name, float(cfg.get("lora_alpha", r))
        )
        lora[name] = LoraPair(a.float(), b.float())
        ranks[name] = r
        alphas[name] = alpha
        scaling[name] = alpha / r
    if not lora:
        raise ConfigError(f"{folder}: adapter_model.safetensors holds no LoRA layers")
    targets = cfg.get("target_modules") or []
    if isinstance(targets, str):
        targets = [targets]
    return PeftAdapter(
        folder, lora, scaling, ranks, alphas, tuple(targets), cfg.get("base_model_name_or_path")
    )
