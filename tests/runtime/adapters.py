"""Reading a run's final adapter as the update it adds to each layer."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors.torch import load_file


def products(run: Path) -> dict[str, torch.Tensor]:
    """Each adapted layer's ``B @ A`` (float64) from a run's PEFT adapter. The scaling is
    left out: runs compared with one another here share their adapter config."""
    tensors = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    out = {}
    for name, a in tensors.items():
        if name.endswith("lora_A.weight"):
            b = tensors[name.replace("lora_A", "lora_B")]
            out[name.removesuffix(".lora_A.weight")] = b.double() @ a.double()
    return out


def distance(run: Path, reference: Path) -> float:
    """Relative Frobenius distance of ``run``'s global update from ``reference``'s."""
    a, b = products(run), products(reference)
    assert a.keys() == b.keys()
    num = sum(float((a[k] - b[k]).pow(2).sum()) for k in a)
    den = sum(float(b[k].pow(2).sum()) for k in b)
    return math.sqrt(num / den)
