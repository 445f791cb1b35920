"""``fedlora export RUN --merged OUT``: a run's result as a full model folder.

The run's base model (from its ``config.json``, resolved offline like the run resolved it)
with the run's adapter (``RUN/adapter``: every base merge and the global adapter, as one PEFT
LoRA) merged into its weights, saved with its tokenizer in the base's dtype: a folder that
``AutoModelForCausalLM.from_pretrained`` loads with nothing else.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from fedlora import config as config_mod
from fedlora.errors import ConfigError
from fedlora.files import follow_umask

log = logging.getLogger(__name__)

DESCRIPTION = (
    "Write a run's result as a full model folder: its base model with the run's adapter "
    "merged in, with the tokenizer, loadable by AutoModelForCausalLM."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``fedlora export`` (own parser or ``fedlora``'s)."""
    p.add_argument("run", metavar="RUN", help="a run folder (holds config.json and adapter/)")
    p.add_argument("--merged", required=True, metavar="OUT", help="output model folder")


def export_merged(run: str | os.PathLike[str], out: str | os.PathLike[str]) -> Path:
    """Merge ``run``'s adapter into its base model and save both to ``out`` (atomically).

    Raises
    ------
    ConfigError
        If ``run`` is not a finished run folder, or ``out`` exists and is not empty.
    """
    from peft import PeftModel

    from fedlora.models import resolve_model
    from fedlora.models.placement import DTYPES

    run_dir, out_dir = Path(run), Path(out)
    cfg_path, adapter = run_dir / "config.json", run_dir / "adapter"
    if not cfg_path.is_file() or not (adapter / "adapter_model.safetensors").is_file():
        raise ConfigError(f"{run_dir} is not a finished run: it needs config.json and adapter/")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ConfigError(f"{out_dir} exists and is not empty; choose another --merged folder")
    try:
        cfg = config_mod.from_dict(json.loads(cfg_path.read_text()))
    except json.JSONDecodeError:
        raise ConfigError(f"{cfg_path} is corrupt") from None
    # The base in the run's model.dtype; a quantized run's base is merged unquantized (in its
    # bfloat16 compute dtype), since merging into 4- or 8-bit weights would round the result.
    dtype = torch.bfloat16 if cfg.model.quantize != "none" else DTYPES[cfg.model.dtype]
    base, tokenizer = resolve_model(cfg.model.name, seed=cfg.seed, dtype=dtype)
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    merged = merged.to(dtype)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    merged.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    follow_umask(tmp)
    if out_dir.exists():
        out_dir.rmdir()
    shutil.move(str(tmp), str(out_dir))
    log.info("merged %s into %s (%s)", adapter, out_dir, dtype)
    return out_dir


def run(args: argparse.Namespace) -> int:
    """``fedlora export`` on parsed options."""
    out = export_merged(args.run, args.merged)
    print(f"merged model: {out}")  # the command's output
    return 0
