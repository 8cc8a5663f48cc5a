"""GPT-Neo for TinyStories: the size presets, a fast training module, and HF export/import.

    from tinystories.train.model import resolve_shape, FastGPTNeo, save_hf, load_hf
    model = FastGPTNeo(resolve_shape("8M"), vocab_size=10000)
    loss = model(input_ids, labels=input_ids)           # HF convention: labels shifted inside
    save_hf(model, "pretrain/8M", tokenizer_dir="tokenizer", eos_token_id=0)
    GPTNeoForCausalLM.from_pretrained("pretrain/8M")     # the same function, HF's slow code

The paper's models (Eldan & Li 2023, and the released TinyStories-* checkpoints) are GPT-Neo
with 16 heads, alternating global/local attention with a 256-token window, trained at context
512. Checkpoints are plain `GPTNeoForCausalLM` directories so every later stage (and anyone
else) can load them with transformers.

Why a module of our own for training: transformers' GPT-Neo runs eager attention only (it
materialises fp32 B*H*T*T score tensors and masks them with `torch.where`), which is slow on a
CPU and memory-hungry everywhere. `FastGPTNeo` computes exactly the same function
(tests/test_model.py checks the logits against `GPTNeoForCausalLM` on the same weights) with:
- `F.scaled_dot_product_attention(scale=1.0)` (GPT-Neo does not scale scores by 1/sqrt(d)),
  never a materialised score tensor; on CPU in query chunks that see only their reachable keys
  (causal, and the window for local layers; see chunked_attention for why and the timings);
  on GPUs one call with the banded mask (fused_attention, checked against the CPU path on a CPU);
- one fused QKV projection (one GEMM instead of three; q/k/v have no bias in GPT-Neo);
- a loss that never materialises shifted copies of the logits (labels are shifted instead);
- bf16 autocast and optional `torch.compile` (both chosen by the trainer).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from tinystories.errors import UserError
from tinystories.io.layout import CHECKPOINT_INFO

# Re-exported: benchmarks and older callers import the shapes from here.
from tinystories.train.shapes import PRESETS, SHAPE_FIELDS, Shape, count_params, resolve_shape, train_flops_per_token  # noqa: F401

# Query rows per SDPA call on CPU (see causal_attention); 256 measured best of 64/128/256.
ATTN_CHUNK = 256
# GPT-Neo's layer norm epsilon; FastGPTNeo hard-codes it (load_hf refuses checkpoints with another).
LAYER_NORM_EPS = 1e-5


def band_mask(query_start: int, query_end: int, key_start: int, key_end: int, window: int | None, device) -> torch.Tensor:
    """Boolean [queries, keys] mask of what GPT-Neo lets a query see: keys at or before it,
    and for a local layer (window = w) only the last w of them, self included."""
    i = torch.arange(query_start, query_end, device=device)[:, None]
    j = torch.arange(key_start, key_end, device=device)[None, :]
    return (j <= i) if window is None else (j <= i) & (i - j < window)


def fused_attention(q, k, v, window: int | None):
    """One SDPA call over the whole sequence: is_causal, or the band mask for a local layer.

    The path for GPUs, whose fused kernels skip fully masked blocks themselves; it runs on a
    CPU too, which is how tests/test_model.py checks it against the chunked CPU path."""
    T = q.size(2)
    if window is None or window >= T:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=band_mask(0, T, 0, T, window, q.device), scale=1.0)


def chunked_attention(q, k, v, window: int | None):
    """The CPU path: queries in chunks of ATTN_CHUNK rows, each given only the keys it can see.

    PyTorch's CPU flash kernel does about as much work for a causal T x T square as for a full
    one (its cost is per query block x key block, and at small head sizes that overhead, not
    the arithmetic, dominates), so cutting the key range per chunk is what saves time; a masked
    full square would cost more still. Measured (1 thread, B=4, T=512, bf16, fwd+bwd per layer):
    head size 4: 69 -> 58 ms, 48: 138 -> 113 ms (global); local: full band mask 79 -> 60 ms.
    """
    T = q.size(2)
    outs = []
    for start in range(0, T, ATTN_CHUNK):
        end = min(T, start + ATTN_CHUNK)
        lo = 0 if window is None else max(0, start - window + 1)
        if start == 0 and (window is None or window >= end):
            outs.append(F.scaled_dot_product_attention(q[:, :, :end], k[:, :, :end], v[:, :, :end], is_causal=True, scale=1.0))
            continue
        mask = band_mask(start, end, lo, end, window, q.device)
        outs.append(F.scaled_dot_product_attention(q[:, :, start:end], k[:, :, lo:end], v[:, :, lo:end], attn_mask=mask, scale=1.0))
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)


def causal_attention(q, k, v, window: int | None):
    """GPT-Neo attention on (B, H, T, hd): causal, unscaled scores (scale=1.0), and for local
    layers (window = w) only the last w positions, self included; chunked on CPU, fused elsewhere."""
    return chunked_attention(q, k, v, window) if q.device.type == "cpu" else fused_attention(q, k, v, window)


class Block(nn.Module):
    def __init__(self, shape: Shape, kind: str):
        super().__init__()
        d = shape.hidden_size
        self.kind = kind
        self.num_heads = shape.num_heads
        self.window = shape.window_size
        self.ln_1 = nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        # q, k, v stacked in one [3d, d] weight: one GEMM; split apart again on export.
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.out_proj = nn.Linear(d, d, bias=True)
        self.ln_2 = nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        self.c_fc = nn.Linear(d, shape.ffn_size)
        self.c_proj = nn.Linear(shape.ffn_size, d)

    def attention(self, x):
        B, T, d = x.shape
        H = self.num_heads
        qkv = self.qkv(x).view(B, T, 3, H, d // H).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        window = self.window if self.kind == "local" else None
        y = causal_attention(q, k, v, window)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, d))

    def forward(self, x):
        x = x + self.attention(self.ln_1(x))
        # gelu_new (GPT-Neo's activation) is GELU's tanh approximation.
        return x + self.c_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class FastGPTNeo(nn.Module):
    """GPT-Neo's function (see the module docstring), built for training speed."""

    def __init__(self, shape: Shape, vocab_size: int):
        super().__init__()
        self.shape = shape
        self.vocab_size = vocab_size
        d = shape.hidden_size
        self.wte = nn.Embedding(vocab_size, d)
        self.wpe = nn.Embedding(shape.max_position, d)
        self.h = nn.ModuleList(Block(shape, kind) for kind in shape.attention_layers)
        self.ln_f = nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        self.reset_parameters()

    def reset_parameters(self, std: float = 0.02) -> None:
        # GPT-Neo's own initialisation (transformers' _init_weights with initializer_range 0.02).
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=std)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def hidden(self, input_ids):
        B, T = input_ids.shape
        if T > self.shape.max_position:
            raise ValueError(f"sequence length {T} exceeds max_position {self.shape.max_position}")
        pos = torch.arange(T, device=input_ids.device)
        x = self.wte(input_ids) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        return self.ln_f(x)

    def forward(self, input_ids, labels=None, reduction: str = "mean"):
        """Logits (B, T, V); or with `labels` (HF convention: same length as input_ids,
        -100 = ignored, shifted inside) the cross-entropy, `mean` over counted tokens or `sum`."""
        h = self.hidden(input_ids)
        logits = F.linear(h, self.wte.weight)  # tied lm_head, as in GPT-Neo
        if labels is None:
            return logits
        # Shift the labels, not the logits: slicing logits[:, :-1] would copy B*T*V values.
        targets = F.pad(labels[:, 1:], (0, 1), value=-100)
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100, reduction=reduction)

    def num_params(self, embeddings: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        if not embeddings:
            n -= self.wte.weight.numel() + self.wpe.weight.numel()
        return n


# --- Hugging Face export / import --------------------------------------------------------------


# The GPT-Neo settings FastGPTNeo computes with (and exports); a checkpoint with others is a
# different function, which load_hf refuses rather than silently replaces.
FIXED_HF_SETTINGS = {
    "activation_function": "gelu_new",
    "layer_norm_epsilon": LAYER_NORM_EPS,
    "resid_dropout": 0.0,
    "embed_dropout": 0.0,
    "attention_dropout": 0.0,
}


def hf_config(shape: Shape, vocab_size: int, eos_token_id: int | None = None):
    from transformers import GPTNeoConfig

    layers = shape.attention_layers
    pattern = shape.attention_pattern
    if len(layers) % len(pattern) == 0:
        attention_types = [[pattern, len(layers) // len(pattern)]]
    else:
        attention_types = [[[kind], 1] for kind in layers]
    return GPTNeoConfig(
        vocab_size=vocab_size,
        max_position_embeddings=shape.max_position,
        hidden_size=shape.hidden_size,
        num_layers=shape.num_layers,
        attention_types=attention_types,
        num_heads=shape.num_heads,
        intermediate_size=shape.intermediate_size or None,
        window_size=shape.window_size,
        **FIXED_HF_SETTINGS,
        initializer_range=0.02,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
        tie_word_embeddings=True,
    )


def shape_from_hf_config(config) -> Shape:
    layers = list(config.attention_layers)
    # The shortest cycle that reproduces the per-layer list.
    for n in range(1, len(layers) + 1):
        if all(layers[i] == layers[i % n] for i in range(len(layers))):
            pattern = layers[:n]
            break
    inter = config.intermediate_size or 0
    return Shape(
        hidden_size=config.hidden_size,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        window_size=config.window_size,
        max_position=config.max_position_embeddings,
        intermediate_size=0 if inter == 4 * config.hidden_size else inter,
        attention=",".join(pattern),
    )


def _hf_name_pairs(num_layers: int) -> list[tuple[str, str]]:
    """(our name, GPTNeoForCausalLM's name) for every parameter copied as it is; the fused qkv
    weight, the one that is split, is handled by the two converters below."""
    pairs = [(n, f"transformer.{n}") for n in ("wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias")]
    for i in range(num_layers):
        p, o = f"h.{i}.", f"transformer.h.{i}."
        pairs += [(p + f"out_proj.{t}", o + f"attn.attention.out_proj.{t}") for t in ("weight", "bias")]
        pairs += [(p + f"{ln}.{t}", o + f"{ln}.{t}") for ln in ("ln_1", "ln_2") for t in ("weight", "bias")]
        pairs += [(p + f"{name}.{t}", o + f"mlp.{name}.{t}") for name in ("c_fc", "c_proj") for t in ("weight", "bias")]
    return pairs


def _qkv_names(i: int) -> tuple[str, list[str]]:
    attention = f"transformer.h.{i}.attn.attention."
    return f"h.{i}.qkv.weight", [attention + f"{x}_proj.weight" for x in "qkv"]


def to_hf_state_dict(model) -> dict:
    """FastGPTNeo parameters under GPTNeoForCausalLM's names (fused qkv split into q/k/v)."""
    src = {k: v.detach() for k, v in model.state_dict().items()}
    sd = {hf: src[ours] for ours, hf in _hf_name_pairs(model.shape.num_layers)}
    for i in range(model.shape.num_layers):
        fused, split = _qkv_names(i)
        sd.update(zip(split, src[fused].chunk(3, dim=0)))
    return sd


def from_hf_state_dict(sd: dict, num_layers: int) -> dict:
    out = {ours: sd[hf] for ours, hf in _hf_name_pairs(num_layers)}
    for i in range(num_layers):
        fused, split = _qkv_names(i)
        out[fused] = torch.cat([sd[name] for name in split], dim=0)
    return out


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def save_hf(model, out_dir: str | Path, tokenizer_dir: str | Path | None = None, eos_token_id: int | None = None, extra: dict | None = None) -> None:
    """Write `model` as a GPTNeoForCausalLM save_pretrained directory (safetensors + config.json),
    with the tokenizer files copied in, so AutoTokenizer/AutoModelForCausalLM load it as is.

    Writes into `out_dir` directly; callers wanting atomicity write to a temp dir and rename.
    `extra` (JSON-able) goes to tinystories.json beside the weights (e.g. training settings).
    """
    from transformers import GPTNeoForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = hf_config(model.shape, model.vocab_size, eos_token_id)
    # Building the HF module costs a random init, but save_pretrained then owns the format
    # details (tied-weight handling, metadata, config) instead of us re-implementing them.
    hf = GPTNeoForCausalLM(config)
    sd = {k: v.to(torch.float32).cpu().contiguous() for k, v in to_hf_state_dict(model).items()}
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    missing = [m for m in missing if m != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"export mismatch: missing {missing}, unexpected {unexpected}")
    hf.tie_weights()
    from transformers.utils import logging as hf_logging

    # transformers draws a shard-writing bar; inside a training loop it only breaks our own bar.
    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        hf.save_pretrained(out_dir, safe_serialization=True)
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()
    if tokenizer_dir is not None:
        for name in TOKENIZER_FILES:
            src = Path(tokenizer_dir) / name
            if src.exists():
                shutil.copy2(src, out_dir / name)
    if extra is not None:
        (out_dir / CHECKPOINT_INFO).write_text(json.dumps(extra, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def check_fast_compatible(config, where) -> None:
    """UserError naming the first setting of a GPT-Neo config FastGPTNeo does not compute."""
    for name, ours in FIXED_HF_SETTINGS.items():
        theirs = getattr(config, name, ours)
        if theirs != ours:
            raise UserError(f"{where}/config.json: {name} is {theirs!r}, but the training module computes GPT-Neo with {name}={ours!r} only; use a checkpoint with {name}={ours!r}")
    if not getattr(config, "tie_word_embeddings", True):
        raise UserError(f"{where}/config.json: tie_word_embeddings is false, but the training module ties the output layer to the embeddings; use a checkpoint with tied embeddings")


def read_hf_shape(ckpt_dir: str | Path) -> tuple[Shape, int]:
    """(shape, vocab_size) from a checkpoint's config.json."""
    from transformers import GPTNeoConfig

    config = GPTNeoConfig.from_pretrained(str(ckpt_dir))
    check_fast_compatible(config, ckpt_dir)
    return shape_from_hf_config(config), config.vocab_size


def load_hf(ckpt_dir: str | Path):
    """A FastGPTNeo with the weights of a GPTNeoForCausalLM directory (ours or any GPT-Neo)."""
    from safetensors.torch import load_file

    ckpt_dir = Path(ckpt_dir)
    if not (ckpt_dir / "config.json").exists():
        raise UserError(f"{ckpt_dir}: no config.json; point to a GPT-Neo save_pretrained directory (e.g. pretrain/1M)")
    shape, vocab = read_hf_shape(ckpt_dir)
    files = sorted(ckpt_dir.glob("*.safetensors"))
    if not files:
        raise UserError(f"{ckpt_dir}: no *.safetensors weights; re-export the checkpoint")
    sd: dict = {}
    for f in files:
        sd.update(load_file(str(f)))
    model = FastGPTNeo(shape, vocab)
    model.load_state_dict(from_hf_state_dict(sd, shape.num_layers), strict=True)
    return model


def param_groups(model, weight_decay: float) -> list[dict]:
    """AdamW groups: decay matmul weights only; norms, biases and embeddings are not decayed."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim >= 2 and not name.startswith(("wte.", "wpe.")):
            decay.append(p)
        else:
            no_decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
