"""Named model shapes: the linear layers a LoRA adapter can target, from the real configs.

Only shapes are kept (no weights): enough to count LoRA parameters and to build
:class:`~fedlora.methods.base.Setup` objects for communication accounting. Each decoder
block of these Llama-style models has seven linear layers; with hidden size ``h``,
intermediate size ``f``, ``H`` query heads, ``G`` key/value heads and head dim ``d``:

====================  ============  =============
module                in_features   out_features
====================  ============  =============
self_attn.q_proj      h             H·d
self_attn.k_proj      h             G·d
self_attn.v_proj      h             G·d
self_attn.o_proj      H·d           h
mlp.gate_proj         h             f
mlp.up_proj           h             f
mlp.down_proj         f             h
====================  ============  =============

Layer names follow Hugging Face: ``model.layers.{i}.self_attn.q_proj`` etc.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fedlora.errors import ConfigError
from fedlora.methods.base import LayerSpec

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""LoRA on all linear layers of a block (lm_head excluded)."""

_PARENT = {
    "q_proj": "self_attn",
    "k_proj": "self_attn",
    "v_proj": "self_attn",
    "o_proj": "self_attn",
    "gate_proj": "mlp",
    "up_proj": "mlp",
    "down_proj": "mlp",
}


@dataclass(frozen=True)
class ModelShape:
    """The dimensions of a Llama-style decoder that fix its linear layers' shapes."""

    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int

    def block_modules(self) -> dict[str, tuple[int, int]]:
        """Module short name -> (in_features, out_features) for one block."""
        h, f = self.hidden, self.intermediate
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_proj": (h, f),
            "up_proj": (h, f),
            "down_proj": (f, h),
        }


def _shapes() -> dict[str, ModelShape]:
    # Values from each model's published config.json on the Hugging Face hub.
    return {
        s.name: s
        for s in (
            ModelShape("llama-3.2-3b", 3072, 8192, 28, 24, 8, 128),
            ModelShape("qwen2-7b", 3584, 18944, 28, 28, 4, 128),
            ModelShape("tinyllama-1.1b", 2048, 5632, 22, 32, 4, 64),
            ModelShape("smollm2-135m", 576, 1536, 30, 9, 3, 64),
        )
    }


def names() -> list[str]:
    """Known model shape names, sorted."""
    return sorted(_shapes())


def model_shape(name: str) -> ModelShape:
    """The shape called ``name``, or ConfigError naming the choices."""
    shapes = _shapes()
    if name not in shapes:
        choices = ", ".join(sorted(shapes))
        raise ConfigError(f"unknown model shape {name!r}; choose one of: {choices}")
    return shapes[name]


def parse_targets(targets: str | Sequence[str] | None) -> tuple[str, ...]:
    """Target modules from a list or a comma-separated string; ``None`` or ``"all-linear"``
    (PEFT's name, the run config's default) means all linear."""
    if targets is None or targets == "all-linear" or list(targets) == ["all-linear"]:
        return ALL_LINEAR
    items = targets.split(",") if isinstance(targets, str) else list(targets)
    chosen = tuple(t.strip() for t in items if t.strip())
    unknown = [t for t in chosen if t not in ALL_LINEAR]
    if unknown or not chosen:
        raise ConfigError(
            f"unknown LoRA target {unknown[0] if unknown else '(none)'!r}; "
            f"choose from: {', '.join(ALL_LINEAR)}"
        )
    # Block order, duplicates dropped, so the same set always gives the same layers.
    return tuple(t for t in ALL_LINEAR if t in chosen)


def layer_specs(
    name: str,
    targets: str | Sequence[str] | None = None,
    blocks: int | None = None,
) -> tuple[LayerSpec, ...]:
    """Adapted layers of model ``name``.

    Parameters
    ----------
    name : a shape from :func:`names`.
    targets : module short names (``q_proj``, ...) or a comma-separated string; default all
        seven linear layers of a block.
    blocks : only the first ``blocks`` decoder blocks (default: all of them).

    Returns
    -------
    tuple of LayerSpec, block by block, modules in block order.
    """
    shape = model_shape(name)
    mods = shape.block_modules()
    wanted = parse_targets(targets)
    count = shape.layers if blocks is None else blocks
    if not 1 <= count <= shape.layers:
        raise ConfigError(f"blocks must be in [1, {shape.layers}] for {name}, got {blocks}")
    return tuple(
        LayerSpec(f"model.layers.{i}.{_PARENT[m]}.{m}", *mods[m])
        for i in range(count)
        for m in wanted
    )


def lora_params(layers: tuple[LayerSpec, ...], rank: int) -> int:
    """LoRA parameters of a rank-``rank`` adapter on ``layers``: ``Σ r·(n + m)``."""
    return sum(rank * (spec.in_features + spec.out_features) for spec in layers)
