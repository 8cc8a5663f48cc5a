"""Pretrain GPT-Neo models of the paper's sizes on the tokenized stories (pretrain/<size>/).

    tinystories pretrain --run-dir runs/quickstart [--set pretrain.sizes=[1M,8M] --set pretrain.max_steps=2000]
    torchrun --nproc_per_node 2 -m tinystories.cli pretrain --run-dir runs/quickstart   # data-parallel
    accelerate launch -m tinystories.cli pretrain --run-dir runs/quickstart              # GPUs

Reads data/train.bin, data/val.bin (uint16 token ids) and data/meta.json from `prepare`, and
the tokenizer. Each size in `pretrain.sizes` is a preset of the paper (1M, 3M, 8M, 28M, 33M:
GPT-Neo, 16 heads, alternating global/local attention with a 256 window) or a shape defined
under `pretrain.shapes`. Training samples random contiguous windows of `context` tokens from
train.bin (windows cross story boundaries, as in GPT pretraining), uses the fast GPT-Neo of
tinystories.train.model and the shared loop of tinystories.train.trainer (AdamW, warmup + cosine,
clipping, accumulation, bf16 autocast where supported, optional torch.compile).

A correct run writes, per size, pretrain/<size>/: config.json + model.safetensors loadable with
`GPTNeoForCausalLM.from_pretrained`, the tokenizer files, tinystories.json, train_state.pt (for
resume), metrics.jsonl (train/val loss in nats/token and bits/byte, lr, tokens/s, tokens seen)
and tb/ (TensorBoard). Kill it and rerun the same command: it resumes from the last
checkpoint; a size that finished is skipped; `--force pretrain` starts over.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

from tinystories.errors import UserError
from tinystories.io.rundir import sha256_path

log = logging.getLogger(__name__)

NAME = "pretrain"
SECTION = "pretrain"
USES: tuple[str, ...] = ("tokenizer", "prepare")

TRAIN_BIN = "data/train.bin"
VAL_BIN = "data/val.bin"
META = "data/meta.json"
TOKENIZER_DIR = "tokenizer"
OUT_DIR = "pretrain"
UINT16_VOCAB = 1 << 16


@dataclass
class Config:
    sizes: list[str] = field(default_factory=lambda: ["1M"])  # presets (1M, 3M, 8M, 28M, 33M) or names under `shapes`
    shapes: dict[str, dict[str, Any]] = field(default_factory=dict)  # custom shapes: name -> {hidden_size, num_layers, num_heads, window_size, max_position, intermediate_size, attention}
    context: int = 512  # tokens per training sequence (the paper: 512)
    batch_size: int = 8  # sequences per micro-batch per process
    grad_accum: int = 1  # micro-batches per optimizer step
    max_steps: int = 1000  # optimizer steps per size (ignored when max_tokens > 0)
    max_tokens: int = 0  # train on this many tokens instead (steps = ceil(tokens / tokens per step)); 0 = use max_steps
    lr: float = 1e-3  # peak learning rate
    min_lr: float = 1e-4  # learning rate at the end of the cosine schedule
    warmup_steps: int = 100  # linear warmup steps
    schedule: str = "cosine"  # cosine | constant (after warmup)
    weight_decay: float = 0.1  # AdamW weight decay on matmul weights (not norms, biases, embeddings)
    grad_clip: float = 1.0  # clip the global gradient norm to this (0 = off)
    eval_interval: int = 100  # steps between validation passes (and always at the end)
    eval_batches: int = 20  # validation batches per pass (capped by the size of val.bin)
    checkpoint_interval: int = 200  # steps between resumable checkpoints (and always at the end)
    log_interval: int = 10  # steps between metrics.jsonl records
    dtype: str = "auto"  # bf16 | fp32 | auto (bf16 autocast where the CPU/GPU supports it)
    compile: bool = True  # torch.compile the model: ~1.1-1.3x faster steps for ~30 s of compiling per size (falls back to eager on failure)

    def check(self) -> list[str]:
        from tinystories.train.model import PRESETS, SHAPE_FIELDS, Shape

        problems = []
        if not self.sizes:
            problems.append("pretrain.sizes: empty; name at least one size, e.g. --set pretrain.sizes=[1M]")
        for name, fields in self.shapes.items():
            unknown = sorted(set(fields) - set(SHAPE_FIELDS))
            if unknown:
                problems.append(f"pretrain.shapes.{name}: unknown field(s) {', '.join(unknown)} (known: {', '.join(SHAPE_FIELDS)})")
                continue
            try:
                problems.extend(Shape(**fields).problems(f"pretrain.shapes.{name}"))
            except TypeError as exc:
                problems.append(f"pretrain.shapes.{name}: {exc}")
        for name in self.sizes:
            if name not in PRESETS and name not in self.shapes:
                problems.append(f"pretrain.sizes: unknown size {name!r}; use one of {', '.join([*PRESETS, *self.shapes])} or define it under pretrain.shapes")
        if len(set(self.sizes)) != len(self.sizes):
            problems.append("pretrain.sizes: a size is listed twice; list each once")
        for key in ("context", "batch_size", "grad_accum"):
            if getattr(self, key) < 1:
                problems.append(f"pretrain.{key}: must be >= 1")
        if self.context < 2:
            problems.append("pretrain.context: must be >= 2 (a window needs an input and a target)")
        if self.max_steps < 1 and self.max_tokens < 1:
            problems.append("pretrain.max_steps: must be >= 1 (or set pretrain.max_tokens)")
        if self.max_tokens < 0:
            problems.append("pretrain.max_tokens: must be >= 0")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            problems.append("pretrain.lr/min_lr: need lr > 0 and 0 <= min_lr <= lr")
        if self.schedule not in ("cosine", "constant"):
            problems.append(f"pretrain.schedule: {self.schedule!r} is not one of 'cosine', 'constant'")
        if self.dtype not in ("bf16", "fp32", "auto"):
            problems.append(f"pretrain.dtype: {self.dtype!r} is not one of 'bf16', 'fp32', 'auto'")
        for key in ("warmup_steps", "weight_decay", "grad_clip", "eval_interval", "eval_batches", "checkpoint_interval"):
            if getattr(self, key) < 0:
                problems.append(f"pretrain.{key}: must be >= 0")
        if self.log_interval < 1:
            problems.append("pretrain.log_interval: must be >= 1")
        if not problems:
            for name in self.sizes:
                fields = self.shapes.get(name, PRESETS.get(name, {}))
                shape = Shape(**fields)
                if self.context > shape.max_position:
                    problems.append(
                        f"pretrain.context: {self.context} is longer than the position table of size {name} "
                        f"(max_position {shape.max_position}); lower pretrain.context or set pretrain.shapes.{name}.max_position"
                    )
        return problems


def inputs(cfg) -> list[str]:
    return [TRAIN_BIN, VAL_BIN, META, TOKENIZER_DIR]


def outputs(cfg) -> list[str]:
    return [f"{OUT_DIR}/{size}" for size in cfg.pretrain.sizes]


class RandomWindows:
    """Training batches: `batch_size` windows of `context` tokens at random offsets.

    The offsets come from a generator seeded by (seed, rank, step, micro), so a batch is a pure
    function of its position: resume needs no iterator state, and ranks draw different windows.
    """

    def __init__(self, tokens, batch_size: int, context: int, seed: int):
        self.tokens, self.batch_size, self.context, self.seed = tokens, batch_size, context, seed

    def batch(self, step: int, micro: int, rank: int, world: int):
        import numpy as np
        import torch

        rng = np.random.default_rng([self.seed, rank, step, micro])
        starts = rng.integers(0, len(self.tokens) - self.context + 1, size=self.batch_size)
        x = torch.from_numpy(np.stack([np.asarray(self.tokens[s : s + self.context], dtype=np.int64) for s in starts]))
        return x, x


class ValWindows:
    """Validation batches: consecutive non-overlapping windows from the start of val.bin."""

    def __init__(self, tokens, batch_size: int, context: int):
        self.tokens, self.batch_size, self.context = tokens, batch_size, context
        self.n_windows = len(tokens) // context

    @property
    def n_batches(self) -> int:
        return math.ceil(self.n_windows / self.batch_size)

    def batch(self, i: int):
        import numpy as np
        import torch

        T = self.context
        ks = range(i * self.batch_size, min(self.n_windows, (i + 1) * self.batch_size))
        x = torch.from_numpy(np.stack([np.asarray(self.tokens[k * T : (k + 1) * T], dtype=np.int64) for k in ks]))
        return x, x


def load_data(rundir, c: Config) -> tuple[dict, Any, Any]:
    """meta, train and val token memmaps, with every size check the data allows."""
    import numpy as np

    from tinystories.io.rundir import read_json

    meta = read_json(rundir.path(META))
    vocab = int(meta.get("vocab_size", 0))
    if vocab > UINT16_VOCAB:
        raise UserError(
            f"{rundir.path(META)}: vocab_size {vocab} does not fit the uint16 token files (at most {UINT16_VOCAB}); "
            f"retrain with --set tokenizer.vocab_size={UINT16_VOCAB} or less, then rerun prepare"
        )
    if vocab < 1:
        raise UserError(f"{rundir.path(META)}: no vocab_size; rerun `tinystories prepare --run-dir {rundir.root} --force`")
    splits = {}
    for split, rel in (("train", TRAIN_BIN), ("val", VAL_BIN)):
        path = rundir.path(rel)
        data = np.memmap(path, dtype=np.uint16, mode="r") if path.stat().st_size else np.zeros(0, dtype=np.uint16)
        expected = (meta.get(split) or {}).get("tokens")
        if expected is not None and expected != len(data):
            raise UserError(f"{path}: holds {len(data)} tokens but meta.json says {expected}; rerun `tinystories prepare --run-dir {rundir.root} --force`")
        splits[split] = data
    one_batch = c.batch_size * c.context
    if len(splits["train"]) < one_batch:
        raise UserError(
            f"{rundir.path(TRAIN_BIN)}: {len(splits['train'])} tokens, fewer than one batch "
            f"(pretrain.batch_size {c.batch_size} x pretrain.context {c.context} = {one_batch}); "
            "lower pretrain.batch_size or pretrain.context, or generate more stories"
        )
    if len(splits["val"]) < c.context:
        raise UserError(
            f"{rundir.path(VAL_BIN)}: {len(splits['val'])} tokens, shorter than one window (pretrain.context {c.context}); "
            "lower pretrain.context or raise prepare.val_fraction"
        )
    return meta, splits["train"], splits["val"]


def _trained_on_other_data(out_dir, data_id: str) -> bool:
    """A checkpoint (finished or not) from other tokens must not be resumed or kept as current:
    the executor reruns pretrain because its inputs changed, so start that size over."""
    import json

    info = out_dir / "tinystories.json"
    if not info.exists():
        return False
    saved = json.loads(info.read_text(encoding="utf-8")).get("data_id")
    if saved is not None and saved != data_id:
        log.warning("pretrain: %s was trained on other data (data/meta.json changed); starting it over", out_dir)
        return True
    return False


def run(cfg, rundir, force: bool = False) -> dict:
    import dataclasses

    from tinystories.pipeline.config import derive_seed
    from tinystories.train.model import FastGPTNeo, count_params, resolve_shape
    from tinystories.train.trainer import TrainSettings, discard_checkpoint, process_state, train

    c: Config = cfg.pretrain
    seed = derive_seed(cfg.seed, NAME)
    shapes = {size: resolve_shape(size, c.shapes) for size in c.sizes}
    meta, train_tokens, val_tokens = load_data(rundir, c)
    vocab, eos_id = int(meta["vocab_size"]), meta.get("eos_id")
    world = process_state().num_processes
    tokens_per_step = c.batch_size * c.context * c.grad_accum * world
    max_steps = math.ceil(c.max_tokens / tokens_per_step) if c.max_tokens > 0 else c.max_steps
    val = ValWindows(val_tokens, c.batch_size, c.context)
    bpt = tuple(
        (meta[s]["bytes"] / meta[s]["tokens"]) if (meta.get(s) or {}).get("tokens") and meta[s].get("bytes") else 0.0
        for s in ("train", "val")
    )
    settings = TrainSettings(
        max_steps=max_steps,
        batch_size=c.batch_size,
        grad_accum=c.grad_accum,
        context=c.context,
        lr=c.lr,
        min_lr=c.min_lr,
        warmup_steps=c.warmup_steps,
        schedule=c.schedule,
        weight_decay=c.weight_decay,
        grad_clip=c.grad_clip,
        eval_interval=c.eval_interval,
        eval_batches=min(c.eval_batches, val.n_batches),
        checkpoint_interval=c.checkpoint_interval,
        log_interval=c.log_interval,
        dtype=c.dtype,
        compile=c.compile,
        seed=seed,
    )
    # The tokens a checkpoint was trained on: meta.json records the tokenizer's sha256 and the split counts.
    data_id = sha256_path(rundir.path(META))
    metrics: dict[str, Any] = {}
    for size, shape in shapes.items():
        out_dir = rundir.path(f"{OUT_DIR}/{size}")
        if process_state().is_main_process and (force or _trained_on_other_data(out_dir, data_id)):
            discard_checkpoint(out_dir)
        process_state().wait_for_everyone()
        import torch

        torch.manual_seed(seed)
        model = FastGPTNeo(shape, vocab)
        t0 = time.time()
        result = train(
            model,
            settings,
            out_dir,
            RandomWindows(train_tokens, c.batch_size, c.context, seed),
            val,
            tokenizer_dir=rundir.path(TOKENIZER_DIR),
            eos_token_id=eos_id,
            bytes_per_token=bpt,
            description=f"pretrain {size}",
            stage=NAME,
            extra={"size": size, "shape": shape.to_dict(), "settings": dataclasses.asdict(settings), "data_id": data_id},
        )
        metrics[size] = {
            **{k: result.get(k) for k in ("train_loss", "val_loss", "val_bpb", "tokens_seen", "tokens_per_s", "steps", "dtype")},
            **count_params(shape, vocab),
            "wall_s": round(time.time() - t0, 2),
            "skipped": bool(result.get("skipped", False)),
        }
    return metrics
