"""The model shapes of the paper and the arithmetic on them that needs no torch.

Config loading (`tinystories --help`, `Config.check`) reads this module, so it must stay free
of torch; the model itself lives in tinystories.train.model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from tinystories.errors import UserError

# The named sizes of the paper (hidden size, layers); everything else is shared. The names
# count non-embedding parameters roughly, as the paper does. max_position 2048 matches the
# released TinyStories-* checkpoints (the paper trains at context 512).
PRESETS: dict[str, dict[str, Any]] = {
    "1M": {"hidden_size": 64, "num_layers": 8},
    "3M": {"hidden_size": 128, "num_layers": 8},
    "8M": {"hidden_size": 256, "num_layers": 8},
    "28M": {"hidden_size": 512, "num_layers": 8},
    "33M": {"hidden_size": 768, "num_layers": 4},
}


@dataclass(frozen=True)
class Shape:
    """A GPT-Neo architecture without its vocabulary (that comes from the tokenizer)."""

    hidden_size: int = 64  # model width d
    num_layers: int = 8  # transformer blocks
    num_heads: int = 16  # attention heads (hidden_size must be divisible by it)
    window_size: int = 256  # local layers attend to the last window_size positions (self included)
    max_position: int = 2048  # rows of the learned position table = longest usable context
    intermediate_size: int = 0  # MLP width (0 = 4 * hidden_size, GPT-Neo's default)
    attention: str = "global,local"  # per-layer attention types, repeated cyclically over the layers

    @property
    def ffn_size(self) -> int:
        return self.intermediate_size or 4 * self.hidden_size

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def attention_pattern(self) -> list[str]:
        return [p.strip() for p in self.attention.split(",") if p.strip()]

    @property
    def attention_layers(self) -> list[str]:
        pattern = self.attention_pattern
        return [pattern[i % len(pattern)] for i in range(self.num_layers)]

    def problems(self, where: str = "shape") -> list[str]:
        out = []
        for name in ("hidden_size", "num_layers", "num_heads", "window_size", "max_position"):
            if getattr(self, name) < 1:
                out.append(f"{where}.{name}: must be >= 1")
        if self.intermediate_size < 0:
            out.append(f"{where}.intermediate_size: must be >= 0 (0 = 4 * hidden_size)")
        if self.num_heads >= 1 and self.hidden_size % self.num_heads:
            out.append(f"{where}: hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}; pick a divisor")
        pattern = self.attention_pattern
        if not pattern or any(p not in ("global", "local") for p in pattern):
            out.append(f"{where}.attention: {self.attention!r} must be a comma-separated list of 'global' and 'local'")
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SHAPE_FIELDS = tuple(f.name for f in dataclasses.fields(Shape))


def shape_problems(name: str, custom: dict[str, dict]) -> list[str]:
    """What is wrong with size `name` (a preset or a name defined in `custom`); empty when it builds."""
    if name in custom:
        fields = custom[name]
        unknown = sorted(set(fields) - set(SHAPE_FIELDS))
        if unknown:
            return [f"pretrain.shapes.{name}: unknown field(s) {', '.join(unknown)} (known: {', '.join(SHAPE_FIELDS)})"]
        try:
            return Shape(**fields).problems(f"pretrain.shapes.{name}")
        except TypeError as exc:
            return [f"pretrain.shapes.{name}: {exc}"]
    if name in PRESETS:
        return []
    known = ", ".join(list(PRESETS) + sorted(custom))
    return [f"pretrain.sizes: unknown size {name!r}; use one of {known} or define it under pretrain.shapes"]


def resolve_shape(name: str, custom: dict[str, dict] | None = None) -> Shape:
    """A preset name, or a name defined in `custom` (name -> Shape fields)."""
    custom = custom or {}
    problems = shape_problems(name, custom)
    if problems:
        raise UserError("; ".join(problems))
    return Shape(**custom[name]) if name in custom else Shape(**PRESETS[name])


def count_params(shape: Shape, vocab_size: int) -> dict[str, int]:
    d, f, L = shape.hidden_size, shape.ffn_size, shape.num_layers
    per_layer = 3 * d * d + (d * d + d) + d * f + f + f * d + d + 4 * d
    non_embedding = L * per_layer + 2 * d
    return {
        "params": non_embedding + vocab_size * d + shape.max_position * d,
        "params_non_embedding": non_embedding,
    }


def train_flops_per_token(shape: Shape, vocab_size: int, context: int) -> float:
    """Training FLOPs per token: 6 * matmul params + attention.

    matmul params = layers * (4 d^2 [qkv + out] + 2 d f [MLP]) + V d [tied lm_head]; embeddings
    lookups and position table are not matmuls. Attention per token per layer, forward:
    2 * 2 * d * n_keys (QK^T and PV), n_keys the mean number of keys a query attends to
    (causal: (T+1)/2, local: capped by the window); backward is 2x forward, so x3 overall.
    """
    d, f, L = shape.hidden_size, shape.ffn_size, shape.num_layers
    n_matmul = L * (4 * d * d + 2 * d * f) + vocab_size * d
    attn = 0.0
    for kind in shape.attention_layers:
        if kind == "local" and shape.window_size < context:
            w = shape.window_size
            keys = (w * (w + 1) / 2 + (context - w) * w) / context
        else:
            keys = (context + 1) / 2
        attn += 3 * 4 * d * keys
    return 6.0 * n_matmul + attn
