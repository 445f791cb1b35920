"""A run's result stands alone: its adapter loads with AutoPeftModelForCausalLM (its
``base_model_name_or_path`` is a real local folder), and ``fedlora export --merged`` writes a
model folder that AutoModelForCausalLM loads with the same outputs as base + adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import AutoPeftModelForCausalLM, PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from fedlora.cli import main
from fedlora.models import resolve_model
from tests.conftest import tiny_overrides


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.conftest import write_client_files

    root = tmp_path_factory.mktemp("export")
    files = write_client_files(root, 2)
    assert main(["run", *tiny_overrides(root / "run", files), "method=fedsrd"]) == 0
    return root / "run"


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_the_adapter_loads_with_nothing_but_its_folder(run_dir: Path) -> None:
    # Prepare
    config = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    base_folder = Path(config["base_model_name_or_path"])
    # Execute: the ecosystem's own loader, given only the adapter folder
    model = AutoPeftModelForCausalLM.from_pretrained(str(run_dir / "adapter"))
    # Assert: the base is a real folder, and the adapter changes the outputs
    assert base_folder.is_absolute() and (base_folder / "config.json").is_file()
    ids = torch.tensor([[5, 17, 42, 99, 3]])
    base = AutoModelForCausalLM.from_pretrained(str(base_folder))
    assert not torch.allclose(_logits(model, ids), _logits(base, ids))


def test_export_merged_gives_the_outputs_of_base_plus_adapter(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    out = tmp_path / "merged"
    assert main(["export", str(run_dir), "--merged", str(out)]) == 0
    # Assert: loads alone, with its tokenizer, and matches base + adapter
    merged = AutoModelForCausalLM.from_pretrained(str(out))
    base, tokenizer = resolve_model("tiny-llama", seed=0)
    saved = AutoTokenizer.from_pretrained(str(out))
    text = "def add(a, b): return a + b"
    assert saved(text)["input_ids"] == tokenizer(text)["input_ids"]
    with_adapter = PeftModel.from_pretrained(base, str(run_dir / "adapter"))
    ids = torch.tensor([[5, 17, 42, 99, 3, 250]])
    torch.testing.assert_close(
        _logits(merged, ids), _logits(with_adapter, ids), rtol=1e-4, atol=1e-5
    )
    assert str(out) in capsys.readouterr().out


def test_export_refuses_a_folder_that_is_not_a_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export", str(tmp_path), "--merged", str(tmp_path / "m")]) == 2
    assert "is not a finished run" in capsys.readouterr().err
