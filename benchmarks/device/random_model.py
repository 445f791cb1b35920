"""A model folder with a real model's architecture and tokenizer and random weights, for speed
measurements where the weights cannot travel (the lent GPU machine reaches no registry).

``python -m benchmarks.device.random_model CONFIG_FOLDER OUT_FOLDER [--seed N]``: the config
and tokenizer files of ``CONFIG_FOLDER`` and weights drawn by the architecture's own
initialisation under the seed, saved in bfloat16. Its scores mean nothing; its speed is the
model's.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from benchmarks.device.kit import MODEL_FILES


def build(config_folder: Path, out: Path, seed: int = 0) -> Path:
    """Write the random-weight model folder ``out``; returns it."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(config_folder)
    with torch.random.fork_rng(devices=[]):  # the caller's own draws stay as they were
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    for name in MODEL_FILES:
        if name != "config.json" and (config_folder / name).exists():
            shutil.copyfile(config_folder / name, out / name)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.device.random_model", description=__doc__
    )
    p.add_argument("config_folder", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    print(f"random-weight model: {build(args.config_folder, args.out, args.seed)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
