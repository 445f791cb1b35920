"""Bad input at every entrance: one line on stderr naming the problem, exit code 2, no
traceback. And no pickle anywhere in the package."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import fedlora
from fedlora.cli import main
from tests.conftest import tiny_overrides


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str], *needles: str) -> None:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


def test_malformed_toml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[train\nlr = 1\n")
    _fails(["run", "--config", str(cfg)], capsys, "bad.toml", "TOML")


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("method=fedsvdx", "unknown method 'fedsvdx'"),
        ("method.florist.tau=0", "tau"),
        ("method.florist.tau=1.01", "tau"),
        ("method.fedsrd.p_down=1.0", "p_down"),
        ("method.fed_dare.p_up=-0.1", "p_up"),
        ("lora.rank=0", "lora.rank"),
        ("method.florist.colour=1", "method.florist.colour"),
    ],
)
def test_options_out_of_range(
    override: str, needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    method = override.split(".")[1] if override.startswith("method.") else None
    extra = [f"method={method}"] if method else []
    _fails(["run", *extra, override, f"out_dir={json.dumps(str(tmp_path / 'r'))}"], capsys, needle)


def test_model_folder_that_is_not_a_causal_lm(
    tmp_path: Path, client_files: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "notalm"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps({"model_type": "bert", "architectures": ["BertForMaskedLM"]})
    )
    _fails(
        [
            "run",
            *tiny_overrides(tmp_path / "r", client_files),
            f"model.name={json.dumps(str(folder))}",
        ],
        capsys,
        "notalm",
    )


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("", "empty"),
        ('{"prompt": "a", "completion": 3}\n', "completion"),
        ("not json\n", "bad.jsonl: row 1: not valid JSON"),
    ],
)
def test_empty_or_malformed_client_files(
    content: str,
    needle: str,
    tmp_path: Path,
    client_files: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    files = [str(bad), *client_files[1:]]
    _fails(["run", *tiny_overrides(tmp_path / "r", files)], capsys, "bad.jsonl", needle)


def test_no_pickle_in_the_package() -> None:
    root = Path(fedlora.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        text = path.read_text()
        if re.search(r"^\s*(import|from)\s+(c?pickle|dill|joblib)\b", text, re.M):
            offenders.append(f"{path}: imports pickle")
        for call in re.finditer(r"torch\.load\(([^)]*)\)", text):
            if "weights_only=True" not in call.group(1):
                offenders.append(f"{path}: torch.load without weights_only=True")
        if re.search(r"allow_pickle\s*=\s*True", text):
            offenders.append(f"{path}: allow_pickle=True")
    assert offenders == []
