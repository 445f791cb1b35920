"""Your data: every local format read with ``datasets``, the formats and column mappings,
the templates, a dataset split across clients (IID, Dirichlet, one per column value), bad
data named by file, row and field."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest

from fedlora.data.dataset_split import assign_rows
from fedlora.data.formats import Columns, examples_of
from fedlora.data.local import read_rows
from fedlora.data.types import Example
from fedlora.errors import ConfigError, DataError
from fedlora.models.tokenizer import build_byte_tokenizer
from fedlora.train.batches import IGNORE, encode
from fedlora.train.prompt_format import alpaca_text, vicuna_text

ROWS = [
    {
        "instruction": f"Say {i}",
        "context": "" if i % 2 else f"ctx {i}",
        "response": f"r{i}",
        "category": ["qa", "brainstorm", "summary"][i % 3],
    }
    for i in range(12)
]


def _write_all(folder: Path, rows: list[dict[str, object]]) -> dict[str, Path]:
    import datasets

    out = {"jsonl": folder / "d.jsonl", "json": folder / "d.json", "csv": folder / "d.csv"}
    out["jsonl"].write_text("".join(json.dumps(r) + "\n" for r in rows))
    out["json"].write_text(json.dumps(rows))
    with out["csv"].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    ds = datasets.Dataset.from_list(rows)
    out["parquet"] = folder / "d.parquet"
    ds.to_parquet(str(out["parquet"]))
    out["disk"] = folder / "saved"
    ds.save_to_disk(str(out["disk"]))
    return out


def test_every_local_format_reads_the_same_rows(tmp_path: Path) -> None:
    files = _write_all(tmp_path, ROWS)
    for kind, path in files.items():
        rows = read_rows(path)
        # CSV reads an empty cell as missing; everything else round-trips exactly
        got = [{k: ("" if v is None else v) for k, v in r.items()} for r in rows]
        assert got == ROWS, kind


def test_formats_and_column_mapping() -> None:
    dolly = examples_of(ROWS[:2], "d", "dolly")
    assert dolly[0] == [Example("Say 0", "r0", label="qa", context="ctx 0")]
    alpaca = examples_of([{"instruction": "Add", "input": "1 2", "output": "3"}], "a", "alpaca")
    assert alpaca[0] == [Example("Add", "3", context="1 2")]
    mapped = examples_of(
        [{"question": "Q?", "answer": "A."}],
        "m",
        "prompt-completion",
        Columns(prompt="question", completion="answer"),
    )
    assert mapped[0] == [Example("Q?", "A.")]


def test_messages_train_every_assistant_turn_with_its_history() -> None:
    chat = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Name?"},
            {"role": "assistant", "content": "Bot"},
        ]
    }
    sharegpt = {
        "conversations": [
            {"from": "human", "value": "Hi"},
            {"from": "gpt", "value": "Hello"},
        ]
    }
    (turns,) = examples_of([chat], "c", "messages")
    assert [(e.prompt, e.completion) for e in turns] == [("Hi", "Hello"), ("Name?", "Bot")]
    assert turns[1].history == (("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello"))
    (share,) = examples_of([sharegpt], "s", "messages")
    assert share == [Example("Hi", "Hello")]


@pytest.mark.parametrize("template", ["chat", "chatml", "alpaca", "vicuna"])
def test_templates_label_only_the_completion(template: str) -> None:
    tok = build_byte_tokenizer()
    ex = Example("Add the numbers", "3", context="1 2")
    enc = encode(tok, ex, 256, template)
    labelled = [t for t, lab in zip(enc.input_ids, enc.labels, strict=True) if lab != IGNORE]
    assert labelled == list(tok("3", add_special_tokens=False)["input_ids"]) + [tok.eos_token_id]
    prompt_text = tok.decode(
        [t for t, lab in zip(enc.input_ids, enc.labels, strict=True) if lab == IGNORE]
    )
    assert "Add the numbers" in prompt_text and "1 2" in prompt_text
    assert not enc.truncated
    assert encode(tok, ex, 8, template).truncated


def test_chatml_leaves_out_a_default_system_message_the_chat_template_adds() -> None:
    # Prepare: a tokenizer whose own template adds a system turn, as SmolLM2's does
    tok = build_byte_tokenizer()
    tok.chat_template = (
        "{{ '<|im_start|>system\\nYou are a helpful AI assistant.<|im_end|>\\n' }}"
        + tok.chat_template
    )
    ex = Example("Define 'cat':", "a small feline")

    # Execute
    chat, chatml = (tok.decode(encode(tok, ex, 256, t).input_ids) for t in ("chat", "chatml"))

    # Assert
    assert chat.startswith("<|im_start|>system\nYou are a helpful AI assistant.")
    assert chatml.startswith("<|im_start|>user\nDefine 'cat':<|im_end|>\n<|im_start|>assistant\n")
    assert chat.endswith(chatml)


def test_alpaca_and_vicuna_texts() -> None:
    assert alpaca_text(Example("Do it", "x")).endswith("### Instruction:\nDo it\n\n### Response:\n")
    assert "### Input:\nctx" in alpaca_text(Example("Do it", "x", context="ctx"))
    text = vicuna_text(Example("Q2", "x", history=(("user", "Q1"), ("assistant", "A1"))), "</s>")
    assert text.endswith("USER: Q1 ASSISTANT: A1</s> USER: Q2 ASSISTANT:")


def _labelled_rows(n: int, labels: int) -> list[dict[str, object]]:
    return [
        {"prompt": f"p{i}", "completion": f"c{i}", "category": f"L{i % labels}"} for i in range(n)
    ]


def test_dirichlet_split_follows_its_definition() -> None:
    rows = _labelled_rows(3000, 6)
    # Every row to exactly one client, and the same split under the same seed.
    parts = assign_rows(rows, "d", "dirichlet", 8, seed=3, label_column="category", alpha=0.5)
    assert sorted(i for p in parts for i in p) == list(range(3000))
    assert parts == assign_rows(
        rows, "d", "dirichlet", 8, seed=3, label_column="category", alpha=0.5
    )
    assert parts != assign_rows(
        rows, "d", "dirichlet", 8, seed=4, label_column="category", alpha=0.5
    )

    def shares(alpha: float) -> list[float]:
        """Per label, the largest fraction of its rows any one client holds."""
        split = assign_rows(rows, "d", "dirichlet", 8, seed=1, label_column="category", alpha=alpha)
        owner = {i: k for k, p in enumerate(split) for i in p}
        out = []
        for label in range(6):
            held = Counter(owner[i] for i in range(label, 3000, 6))
            out.append(max(held.values()) / 500)
        return out

    # Dir(alpha·1): small alpha concentrates each label on few clients, large alpha spreads
    # it evenly (expected largest share of 8 with alpha 1000: just above 1/8).
    assert min(shares(0.05)) > 0.5
    assert max(shares(1000.0)) < 0.2


def test_column_partition_gives_one_client_per_value() -> None:
    rows = _labelled_rows(30, 3)
    parts = assign_rows(rows, "d", "column", 3, seed=0, label_column="category")
    assert [{rows[i]["category"] for i in p} for p in parts] == [{"L0"}, {"L1"}, {"L2"}]
    with pytest.raises(ConfigError, match="set data.clients = 3"):
        assign_rows(rows, "d", "column", 4, seed=0, label_column="category")
    with pytest.raises(DataError, match="single value 'L0'"):
        assign_rows(_labelled_rows(10, 1), "d", "column", 1, seed=0, label_column="category")


@pytest.mark.parametrize(
    ("content", "named"),
    [
        ('{"prompt": "a", "completion": "b"}\n{"prompt": "a", "completion"\n', "row 2"),
        (
            '{"prompt": "a", "completion": "b"}\n{"prompt": "a"}\n',
            "row 2: missing field 'completion'",
        ),
        ('{"prompt": "a", "completion": 3}\n', "row 1: field 'completion' must be text"),
        ("", "the file is empty"),
    ],
)
def test_bad_rows_are_named_by_file_row_and_field(content: str, named: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=named) as info:
        examples_of(read_rows(path), str(path), "prompt-completion")
    assert str(path) in str(info.value) and "\n" not in str(info.value)
