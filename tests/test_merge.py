"""`fedlora merge` on real PEFT adapter folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from fedlora.cli import main
from fedlora.models import resolve_model
from fedlora.train.peft_io import read_adapter


def _save_adapter(folder: Path, rank: int, seed: int, targets: list[str]) -> Path:
    model, _ = resolve_model("tiny-llama", seed=0)
    peft_model = get_peft_model(
        model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets)
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    peft_model.save_pretrained(folder)
    return folder


def _dense(folder: Path) -> dict[str, torch.Tensor]:
    ad = read_adapter(folder)
    return {n: ad.scaling[n] * p.B.double() @ p.A.double() for n, p in ad.lora.items()}


def test_florist_at_threshold_one_is_exact_and_reports_ranks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    targets = ["q_proj", "v_proj"]
    folders = [_save_adapter(tmp_path / f"a{k}", r, k, targets) for k, r in enumerate([8, 4, 2])]
    out = tmp_path / "merged"

    code = main(
        [
            "merge",
            "--method",
            "florist",
            "--threshold",
            "1.0",
            "--weights",
            "1,2,1",
            "--out",
            str(out),
            *map(str, folders),
        ]
    )

    assert code == 0
    weights = [0.25, 0.5, 0.25]
    expected: dict[str, torch.Tensor] = {}
    for w, f in zip(weights, folders, strict=True):
        for n, d in _dense(f).items():
            expected[n] = expected.get(n, 0) + w * d
    got = _dense(out)
    for n, e in expected.items():
        assert torch.linalg.norm(got[n] - e) / torch.linalg.norm(e) < 1e-5
    report = json.loads((out / "merge_report.json").read_text())
    assert set(report["ranks"]) == set(expected)
    assert all(r == 14 for r in report["ranks"].values())  # 8+4+2, all directions kept
    assert "rank 14" in capsys.readouterr().out
    base, _ = resolve_model("tiny-llama", seed=0)
    PeftModel.from_pretrained(base, out)  # loads in the ecosystem


@pytest.mark.parametrize("method", ["fedavg", "flexlora", "flora"])
def test_other_mergeable_methods_write_loadable_adapters(method: str, tmp_path: Path) -> None:
    folders = [_save_adapter(tmp_path / f"a{k}", 4, k, ["q_proj"]) for k in range(2)]
    out = tmp_path / "merged"
    assert main(["merge", "--method", method, "--out", str(out), *map(str, folders)]) == 0
    base, _ = resolve_model("tiny-llama", seed=0)
    PeftModel.from_pretrained(base, out)
    if method == "flora":  # exact: the stack is the weighted sum of products
        expected = {n: 0.5 * d for n, d in _dense(folders[0]).items()}
        for n, d in _dense(folders[1]).items():
            expected[n] = expected[n] + 0.5 * d
        for n, d in _dense(out).items():
            torch.testing.assert_close(d, expected[n], rtol=1e-5, atol=1e-6)


def test_mismatched_target_modules_are_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = _save_adapter(tmp_path / "a", 4, 0, ["q_proj"])
    b = _save_adapter(tmp_path / "b", 4, 1, ["v_proj"])
    code = main(["merge", "--method", "florist", "--out", str(tmp_path / "m"), str(a), str(b)])
    err = capsys.readouterr().err
    assert code == 2 and "target modules differ" in err


def test_bad_weights_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _save_adapter(tmp_path / "a", 4, 0, ["q_proj"])
    code = main(
        [
            "merge",
            "--method",
            "fedavg",
            "--weights",
            "1,x",
            "--out",
            str(tmp_path / "m"),
            str(a),
            str(a),
        ]
    )
    assert code == 2 and "--weights" in capsys.readouterr().err


def test_adapters_with_per_layer_ranks_merge_exactly(tmp_path: Path) -> None:
    # Run folders hold adapters with a rank per layer (rank_pattern); merge pads them.
    from fedlora.train.peft_io import write_adapter

    base, _ = resolve_model("tiny-llama", seed=0)
    names = [n for n, _ in base.named_modules() if n.endswith("q_proj")]
    gen = torch.Generator().manual_seed(3)
    folders = []
    for k in range(2):
        deltas = {
            n: (torch.randn(64, 1 + (i + k) % 3, generator=gen), torch.randn(1 + (i + k) % 3, 64))
            for i, n in enumerate(names)
        }
        folders.append(
            write_adapter(
                tmp_path / f"r{k}", deltas, base_model="tiny-llama", target_modules=["q_proj"]
            )
        )
    out = tmp_path / "merged"

    assert (
        main(
            [
                "merge",
                "--method",
                "florist",
                "--threshold",
                "1.0",
                "--out",
                str(out),
                *map(str, folders),
            ]
        )
        == 0
    )

    got = _dense(out)
    for n in names:
        expected = 0.5 * _dense(folders[0])[n] + 0.5 * _dense(folders[1])[n]
        assert torch.linalg.norm(got[n] - expected) / torch.linalg.norm(expected) < 1e-5
