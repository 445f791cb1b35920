"""`benchmarks/device`: the kit for a lent GPU machine keeps the project's pins, its
random-weight model keeps the architecture and tokenizer, and its scripts parse."""

from __future__ import annotations

import importlib.metadata
import subprocess
import tomllib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from benchmarks.device.kit import HERE, ROOT, main, pins
from benchmarks.device.random_model import build
from fedlora.models.local import load_model_folder
from fedlora.models.tiny import build_tiny_model


def test_the_kit_carries_the_projects_pins() -> None:
    # Every wheel the kit downloads is the version this project's environment runs (what CI
    # installs from pyproject.toml), and bitsandbytes is the [gpu] extra's pin.
    core = dict(p.split("==") for p in pins(HERE / "wheels.txt"))
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert "transformers" in core and "flwr" in core
    for name, version in core.items():
        assert importlib.metadata.version(name) == version, name
    assert pins(HERE / "wheels-quantize.txt") == extras["gpu"]


def test_a_random_model_keeps_the_architecture_and_tokenizer(tmp_path: Path) -> None:
    # Prepare: a model folder (tiny-llama) standing in for SmolLM2's config and tokenizer
    model, tokenizer = build_tiny_model("llama", seed=3)
    source = tmp_path / "source"
    model.save_pretrained(source)
    tokenizer.save_pretrained(source)
    (source / "model.safetensors").unlink()  # the kit carries no weights

    # Execute
    first = build(source, tmp_path / "a", seed=0)
    again = build(source, tmp_path / "b", seed=0)
    other = build(source, tmp_path / "c", seed=1)
    loaded, loaded_tokenizer = load_model_folder(first)

    # Assert: same architecture and tokenizer, bfloat16 weights that depend on the seed only
    assert loaded.config.hidden_size == model.config.hidden_size
    assert loaded.num_parameters() == model.num_parameters()
    assert loaded_tokenizer("fedlora")["input_ids"] == tokenizer("fedlora")["input_ids"]
    weights = load_file(first / "model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.bfloat16}
    same = load_file(again / "model.safetensors")
    changed = load_file(other / "model.safetensors")
    assert all(torch.equal(weights[k], same[k]) for k in weights)
    assert not all(torch.equal(weights[k], changed[k]) for k in weights)


@pytest.mark.parametrize("script", ["benchmarks/gpu.sh", "benchmarks/device/run.sh"])
def test_the_device_scripts_parse(script: str) -> None:
    done = subprocess.run(["bash", "-n", str(ROOT / script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_a_dry_run_lists_every_pin_and_downloads_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--dry-run", "--out", str(tmp_path / "kit")]) == 0
    listed = capsys.readouterr().out.split()
    assert [p for p in listed if "==" in p] == [
        *pins(HERE / "wheels.txt"),
        *pins(HERE / "wheels-quantize.txt"),
    ]
    assert not (tmp_path / "kit").exists()
