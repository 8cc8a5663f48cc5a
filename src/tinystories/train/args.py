"""The training settings pretrain and sft share: one dataclass, nested as `<stage>.train`.

    pretrain:
      sizes: [1M, 8M]
      train: {max_steps: 2000, lr: 0.001, batch_size: 8}

Declared once and checked once here; a stage subclasses it only to change defaults (sft tunes
with a lower learning rate, for instance). No torch: config loading reads this module.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

DTYPES = ("bf16", "fp32", "auto")
SCHEDULES = ("cosine", "constant")
MAX_EVAL_SAMPLES = 4  # how many fixed story beginnings train/training_log.SAMPLE_BEGINNINGS holds
# Settings that change the optimisation trajectory: a checkpoint made with other values is
# not resumed silently (the other fields, e.g. eval_interval or compile, may change freely).
# The seed is not a field (each stage derives it from the run's seed) but is part of it too.
TRAJECTORY_FIELDS = ("max_steps", "batch_size", "grad_accum", "lr", "min_lr", "warmup_steps", "schedule", "weight_decay", "grad_clip", "dtype", "context")


@dataclass
class TrainArgs:
    max_steps: int = 1000  # optimizer steps (pretrain: replaced by pretrain.max_tokens when that is > 0; sft: 0 = sft.epochs decide)
    batch_size: int = 8  # sequences per micro-batch per process
    grad_accum: int = 1  # micro-batches per optimizer step
    context: int = 512  # tokens per training sequence (the paper: 512)
    lr: float = 1e-3  # peak learning rate
    min_lr: float = 1e-4  # learning rate at the end of the cosine schedule
    warmup_steps: int = 100  # linear warmup steps from 0 (ignored when warmup_fraction > 0)
    warmup_fraction: float = 0.0  # share of the steps spent in linear warmup (0 = use warmup_steps)
    schedule: str = "cosine"  # cosine | constant (after warmup)
    weight_decay: float = 0.1  # AdamW decay on matmul weights (not norms, biases, embeddings)
    grad_clip: float = 1.0  # clip the global gradient norm to this (0 = off)
    eval_interval: int = 100  # steps between validation passes (and always at the end; 0 = only at the end)
    eval_batches: int = 20  # validation batches per pass, capped by the validation data (0 = all of it)
    eval_samples: int = 2  # greedy ~40-token stories from fixed beginnings written to TensorBoard at each validation pass (0 = none, at most 4)
    checkpoint_interval: int = 200  # steps between resumable checkpoints (and always at the end; 0 = only at the end)
    log_interval: int = 10  # steps between metrics.jsonl records (the final step is always logged)
    dtype: str = "auto"  # bf16 | fp32 | auto (bf16 autocast where the CPU/GPU supports it)
    compile: bool = True  # torch.compile the model: ~1.1-1.3x faster steps for ~30 s of compiling (falls back to eager on failure)

    def check(self) -> list[str]:
        """Problems, each `field: what is wrong` (the config loader prefixes the section)."""
        problems = []
        for key in ("batch_size", "grad_accum", "log_interval"):
            if getattr(self, key) < 1:
                problems.append(f"{key}: must be >= 1")
        if self.context < 2:
            problems.append("context: must be >= 2 (a sequence needs an input and a target)")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            problems.append("lr/min_lr: need lr > 0 and 0 <= min_lr <= lr")
        if not 0.0 <= self.warmup_fraction < 1.0:
            problems.append("warmup_fraction: must be in [0, 1)")
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule: {self.schedule!r} is not one of {', '.join(map(repr, SCHEDULES))}")
        if self.dtype not in DTYPES:
            problems.append(f"dtype: {self.dtype!r} is not one of {', '.join(map(repr, DTYPES))}")
        for key in ("max_steps", "warmup_steps", "weight_decay", "grad_clip", "eval_interval", "eval_batches", "checkpoint_interval"):
            if getattr(self, key) < 0:
                problems.append(f"{key}: must be >= 0")
        if not 0 <= self.eval_samples <= MAX_EVAL_SAMPLES:
            problems.append(f"eval_samples: must be between 0 and {MAX_EVAL_SAMPLES} (the fixed story beginnings there are)")
        return problems

    def resolved(self, max_steps: int, eval_batches_available: int) -> "TrainArgs":
        """The settings one run trains with: its step count, the warmup in steps, and
        eval_batches cut to the validation batches there are."""
        warmup = round(self.warmup_fraction * max_steps) if self.warmup_fraction > 0 else self.warmup_steps
        wanted = self.eval_batches or eval_batches_available
        return dataclasses.replace(self, max_steps=max_steps, warmup_steps=warmup, warmup_fraction=0.0, eval_batches=min(wanted, eval_batches_available))

    def trajectory(self, seed: int) -> dict[str, Any]:
        return {**{k: getattr(self, k) for k in TRAJECTORY_FIELDS}, "seed": seed}
