"""The centralised reference (``data.pool``) and the validation split (``data.eval_split``)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from fedlora.config import DataConfig
from fedlora.errors import ConfigError
from fedlora.runtime.client_data import OOD_NAME, client_split

BUILT_IN = {"max_train_per_client": 40, "max_eval_per_domain": 8}


def _key(ex: object) -> str:
    return json.dumps(dataclasses.asdict(ex), sort_keys=True)  # type: ignore[call-overload]


def test_pool_gives_one_client_the_union_of_the_clients_data() -> None:
    four = client_split(DataConfig(clients=4, **BUILT_IN), seed=3)
    one = client_split(DataConfig(clients=1, pool=4, **BUILT_IN), seed=3)
    assert len(one.clients) == 1
    union = sorted(_key(ex) for c in four.clients for ex in c)
    assert sorted(_key(ex) for ex in one.clients[0]) == union
    assert len(union) == sum(len(c) for c in four.clients) > 40
    assert one.heldout.keys() == four.heldout.keys()
    assert one.sources[0].startswith("pooled: ") and "code (40)" in one.sources[0]


def test_pooled_own_heldout_sets_belong_to_the_one_client(tmp_path: Path) -> None:
    files = []
    for k in range(3):
        path = tmp_path / f"c{k}.jsonl"
        rows = [{"prompt": f"q{k}-{i}", "completion": f"a{i}"} for i in range(20)]
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        files.append(str(path))
    cfg = DataConfig(clients=1, pool=3, partition="files", files=tuple(files))
    one = client_split(cfg, seed=0)
    assert len(one.clients) == 1 and len(one.clients[0]) == 3 * 18
    assert {h.owner for h in one.heldout.values()} == {0}


def test_validation_sets_are_disjoint_from_test_and_from_training() -> None:
    test = client_split(DataConfig(clients=4, max_eval_per_domain=16), seed=0)
    val = client_split(DataConfig(clients=4, max_eval_per_domain=16, eval_split="validation"), 0)
    trained = {_key(ex) for c in val.clients for ex in c}
    for name in ("code", "literature", "email", "dictionary"):
        held_val = {_key(ex) for ex in val.heldout[name].examples}
        held_test = {_key(ex) for ex in test.heldout[name].examples}
        assert held_val and not held_val & held_test and not held_val & trained
        assert val.heldout[name].questions == []  # choice tasks come from test records
    # code has 145 training records: its validation slice is 10% of them, not 16
    assert len(val.heldout["code"].examples) == 14
    assert len(val.heldout["literature"].examples) == 16
    assert OOD_NAME in val.heldout


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"clients": 4, "pool": 4}, "data.clients"),
        ({"clients": 1, "pool": 1}, "data.pool"),
        ({"eval_split": "dev"}, "data.eval_split"),
        ({"eval_split": "validation", "dataset": "x.jsonl", "partition": "iid"}, "data.eval_split"),
    ],
)
def test_bad_bounds_settings_name_the_key(kwargs: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        DataConfig(**kwargs)  # type: ignore[arg-type]


def test_a_files_validation_slice_is_the_rows_before_the_test_rows(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    rows = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(20)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    base = {"clients": 1, "partition": "files", "files": (str(path),)}
    test = client_split(DataConfig(**base), seed=0)  # type: ignore[arg-type]
    val = client_split(DataConfig(**base, eval_split="validation"), seed=0)  # type: ignore[arg-type]
    assert [ex.prompt for ex in test.heldout["client0"].examples] == ["q18", "q19"]
    assert [ex.prompt for ex in val.heldout["client0"].examples] == ["q16", "q17"]
    assert [ex.prompt for ex in val.clients[0]] == [f"q{i}" for i in range(16)]
