"""``fedlora eval ADAPTER_OR_RUN --tasks FILE...``: score any PEFT adapter folder (or a run's
``adapter/``) on the user's own evaluation files, as a run scores ``eval.tasks``.

Multiple-choice files (``question``, ``choices``, ``answer``) give ``acc`` (likelihood of
each choice), completion files give ``loss`` (mean per-token cross-entropy of their
completions). Given a run folder, its config supplies the template, format, sequence length
and base dtype; given an adapter folder, the flags do, and its base is the folder its
``adapter_config.json`` names.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from fedlora import config as config_mod
from fedlora.errors import ConfigError

DESCRIPTION = (
    "Score a PEFT adapter folder or a run's adapter on local evaluation files "
    "(multiple-choice accuracy, completion loss)."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="ADAPTER_OR_RUN", help="a PEFT adapter folder or a run")
    p.add_argument("--tasks", nargs="+", required=True, metavar="FILE", help="evaluation files")
    p.add_argument("--format", default=None, help="data.format of completion files")
    p.add_argument("--template", default=None, help="data.template (chat, alpaca, vicuna)")
    p.add_argument("--seq-len", type=int, default=None, help="train.seq_len (default 512)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--dtype", default=None, help="the base's dtype (default float32)")
    p.add_argument("--limit", type=int, default=0, help="first N items of each task (0 = all)")
    p.add_argument("--json", action="store_true", help="print JSON")


def _settings(args: argparse.Namespace) -> tuple[Path, config_mod.RunConfig]:
    target = Path(args.target)
    run_cfg = target / "config.json"
    if run_cfg.is_file():
        cfg = config_mod.from_dict(json.loads(run_cfg.read_text()))
        adapter = target / "adapter"
    else:
        cfg = config_mod.load(None, ["train.seq_len=512"])
        adapter = target
    if not (adapter / "adapter_config.json").is_file():
        raise ConfigError(f"{adapter} is not a PEFT adapter folder (no adapter_config.json)")
    overrides = []
    for key, value in (
        ("data.format", args.format),
        ("data.template", args.template),
        ("train.seq_len", args.seq_len),
        ("model.dtype", args.dtype),
    ):
        if value is not None:
            overrides.append(f"{key}={json.dumps(value)}")
    raw = config_mod.to_dict(cfg)
    return adapter, config_mod.from_dict(config_mod.apply_overrides(raw, overrides))


def evaluate_adapter(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Scores per task of the adapter ``args.target`` on ``args.tasks``."""
    from peft import PeftModel

    from fedlora.data.user_tasks import load_tasks
    from fedlora.eval.scores import ChoiceQuestion, choice_accuracy, completion_loss
    from fedlora.models import resolve_model
    from fedlora.models.placement import DTYPES, placement
    from fedlora.train.batches import encode, pad_id_of

    adapter, cfg = _settings(args)
    base_ref = json.loads((adapter / "adapter_config.json").read_text()).get(
        "base_model_name_or_path"
    )
    if not base_ref:
        raise ConfigError(f"{adapter}/adapter_config.json names no base_model_name_or_path")
    place = placement(cfg.model, cfg.train.device)
    base, tokenizer = resolve_model(base_ref, seed=cfg.seed, dtype=DTYPES[cfg.model.dtype])
    base.to(place.device)  # type: ignore[arg-type]
    model = PeftModel.from_pretrained(base, str(adapter))
    model.eval()
    pad = pad_id_of(tokenizer)
    scores: dict[str, dict[str, float]] = {}
    for task in load_tasks(tuple(args.tasks), cfg.data.format, cfg.data.columns, args.limit):
        entry: dict[str, float] = {}
        if task.examples:
            encoded = [
                encode(tokenizer, e, cfg.train.seq_len, cfg.data.template) for e in task.examples
            ]
            entry["loss"] = completion_loss(model, encoded, args.batch_size, pad)
        if task.questions:
            entry["acc"] = choice_accuracy(
                model,
                tokenizer,
                [ChoiceQuestion(q.prompt, q.choices, q.answer) for q in task.questions],
                cfg.train.seq_len,
                args.batch_size,
                pad,
                cfg.data.template,
            )
        entry["items"] = len(task.examples) + len(task.questions)
        scores[task.name] = entry
    return scores


def run(args: argparse.Namespace) -> int:
    scores = evaluate_adapter(args)
    if args.json:
        print(json.dumps(scores, indent=2, sort_keys=True))
        return 0
    for name, entry in scores.items():
        shown: list[Any] = [f"{k} {v:.4f}" for k, v in entry.items() if k != "items"]
        print(f"{name}: {', '.join(shown)} ({entry['items']} items)")
    return 0
