"""Named model shapes: layer shapes from the model configs and LoRA parameter counts."""

from __future__ import annotations

import pytest

from fedlora import shapes
from fedlora.errors import ConfigError


def test_llama_3_2_3b_rank_64_all_linear_has_the_papers_parameter_count() -> None:
    # Execute
    layers = shapes.layer_specs("llama-3.2-3b")

    # Assert: the FedSRD paper's figure, and 371 MiB of float32.
    assert len(layers) == 28 * 7
    assert shapes.lora_params(layers, 64) == 97_255_424
    assert round(4 * shapes.lora_params(layers, 64) / 2**20) == 371


@pytest.mark.parametrize("name", ["llama-3.2-3b", "qwen2-7b", "tinyllama-1.1b", "smollm2-135m"])
def test_block_shapes_follow_the_config(name: str) -> None:
    # Prepare
    cfg = shapes.model_shape(name)
    q_out, kv_out = cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim

    # Execute
    block = {
        s.name.rsplit(".", 1)[-1]: (s.in_features, s.out_features)
        for s in shapes.layer_specs(name, blocks=1)
    }

    # Assert
    assert block == {
        "q_proj": (cfg.hidden, q_out),
        "k_proj": (cfg.hidden, kv_out),
        "v_proj": (cfg.hidden, kv_out),
        "o_proj": (q_out, cfg.hidden),
        "gate_proj": (cfg.hidden, cfg.intermediate),
        "up_proj": (cfg.hidden, cfg.intermediate),
        "down_proj": (cfg.intermediate, cfg.hidden),
    }


def test_head_dims_match_hidden_sizes() -> None:
    # Every model here has H·d equal to the hidden size (no projection mismatch).
    for name in shapes.names():
        cfg = shapes.model_shape(name)
        assert cfg.heads * cfg.head_dim == cfg.hidden, name


def test_targets_and_blocks_select_layers() -> None:
    # Execute
    layers = shapes.layer_specs("smollm2-135m", "v_proj, q_proj", blocks=3)

    # Assert: block order, module order within a block, HF names.
    assert [s.name for s in layers] == [
        f"model.layers.{i}.self_attn.{m}" for i in range(3) for m in ("q_proj", "v_proj")
    ]
    assert shapes.lora_params(layers, 4) == 3 * 4 * ((576 + 576) + (576 + 192))


def test_unknown_names_targets_and_block_counts_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="llama-3.2-3b"):
        shapes.layer_specs("gpt-5")
    with pytest.raises(ConfigError, match="lm_head"):
        shapes.layer_specs("smollm2-135m", "lm_head")
    with pytest.raises(ConfigError, match="blocks"):
        shapes.layer_specs("smollm2-135m", blocks=31)


def test_all_linear_is_every_linear_layer_of_a_block() -> None:
    from fedlora import shapes

    assert shapes.parse_targets("all-linear") == shapes.ALL_LINEAR
    assert shapes.parse_targets(["all-linear"]) == shapes.ALL_LINEAR
    assert {
        s.name.rsplit(".", 1)[-1] for s in shapes.layer_specs("llama-3.2-3b", "all-linear")
    } == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
