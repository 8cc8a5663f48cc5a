"""Pretrain GPT-Neo models of the paper's sizes on the tokenized stories (pretrain/<size>/).

    tinystories pretrain --run-dir runs/quickstart [--set pretrain.sizes=[1M,8M] --set pretrain.train.max_steps=2000]
    torchrun --nproc_per_node 2 -m tinystories.cli pretrain --run-dir runs/quickstart   # data-parallel
    accelerate launch -m tinystories.cli pretrain --run-dir runs/quickstart              # GPUs

Reads data/train.bin, data/val.bin (uint16 token ids) and data/meta.json from `prepare`, and
the tokenizer. Each size in `pretrain.sizes` is a preset of the paper (1M, 3M, 8M, 28M, 33M:
GPT-Neo, 16 heads, alternating global/local attention with a 256 window) or a shape defined
under `pretrain.shapes`. Training samples random contiguous windows of `train.context` tokens from
train.bin (windows cross story boundaries, as in GPT pretraining), uses the fast GPT-Neo of
tinystories.train.model and the shared loop of tinystories.train.trainer (AdamW, warmup + cosine,
clipping, accumulation, bf16 autocast where supported, optional torch.compile), with the
settings under `pretrain.train` (tinystories.train.args.TrainArgs).

A correct run writes, per size, pretrain/<size>/: config.json + model.safetensors loadable with
`GPTNeoForCausalLM.from_pretrained`, the tokenizer files, tinystories.json, train_state.pt (for
resume), metrics.jsonl (train/val loss in nats/token and bits/byte, lr, tokens/s, tokens seen)
and tb/ (TensorBoard). Kill it and rerun the same command: it resumes from the last
checkpoint; a size that finished is skipped; a size trained on other tokens (data/meta.json
changed) or `--force pretrain` starts over.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from tinystories.errors import UserError
from tinystories.io.layout import CHECKPOINT_INFO, META, PRETRAIN_DIR, TOKENIZER_DIR, TRAIN_BIN, UINT16_VOCAB, VAL_BIN
from tinystories.train.args import TrainArgs
from tinystories.train.checkpoints import pretrain_dirs
from tinystories.train.shapes import PRESETS, Shape, shape_problems

log = logging.getLogger(__name__)

NAME = "pretrain"
SECTION = "pretrain"
USES: tuple[str, ...] = ("tokenizer", "prepare")


@dataclass
class Config:
    sizes: list[str] = field(default_factory=lambda: ["1M"])  # presets (1M, 3M, 8M, 28M, 33M) or names under `shapes`
    shapes: dict[str, dict[str, Any]] = field(default_factory=dict)  # custom shapes: name -> {hidden_size, num_layers, num_heads, window_size, max_position, intermediate_size, attention}
    max_tokens: int = 0  # train on this many tokens instead of train.max_steps (steps = ceil(tokens / tokens per step)); 0 = use train.max_steps
    train: TrainArgs = field(default_factory=TrainArgs)  # the training settings (tinystories.train.args.TrainArgs)

    def check(self) -> list[str]:
        problems = [f"pretrain.train.{p}" for p in self.train.check()]
        if not self.sizes:
            problems.append("pretrain.sizes: empty; name at least one size, e.g. --set pretrain.sizes=[1M]")
        for name in self.shapes:
            problems.extend(shape_problems(name, self.shapes))
        problems.extend(p for name in self.sizes if name not in self.shapes for p in shape_problems(name, self.shapes))
        if len(set(self.sizes)) != len(self.sizes):
            problems.append("pretrain.sizes: a size is listed twice; list each once")
        if self.train.max_steps < 1 and self.max_tokens < 1:
            problems.append("pretrain.train.max_steps: must be >= 1 (or set pretrain.max_tokens)")
        if self.max_tokens < 0:
            problems.append("pretrain.max_tokens: must be >= 0")
        if not problems:
            for name in self.sizes:
                shape = Shape(**self.shapes.get(name, PRESETS.get(name, {})))
                if self.train.context > shape.max_position:
                    problems.append(
                        f"pretrain.train.context: {self.train.context} is longer than the position table of size {name} "
                        f"(max_position {shape.max_position}); lower pretrain.train.context or set pretrain.shapes.{name}.max_position"
                    )
        return problems


def inputs(cfg) -> list[str]:
    return [TRAIN_BIN, VAL_BIN, META, TOKENIZER_DIR]


def outputs(cfg) -> list[str]:
    return pretrain_dirs(cfg)


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
    t = c.train
    one_batch = t.batch_size * t.context
    if len(splits["train"]) < one_batch:
        raise UserError(
            f"{rundir.path(TRAIN_BIN)}: {len(splits['train'])} tokens, fewer than one batch "
            f"(pretrain.train.batch_size {t.batch_size} x pretrain.train.context {t.context} = {one_batch}); "
            "lower pretrain.train.batch_size or pretrain.train.context, or generate more stories"
        )
    if len(splits["val"]) < t.context:
        raise UserError(
            f"{rundir.path(VAL_BIN)}: {len(splits['val'])} tokens, shorter than one window (pretrain.train.context {t.context}); "
            "lower pretrain.train.context or raise prepare.val_fraction"
        )
    return meta, splits["train"], splits["val"]


def _start_over_if_stale(out_dir, data_id: str, force: bool) -> None:
    """A checkpoint (finished or not) from other tokens must not be resumed or kept as current:
    the executor reruns pretrain because its inputs changed, so that size starts over; so it
    does with --force. The checkpoint's info file records the data it was trained on."""
    from tinystories.io.resume import resume_or_reset
    from tinystories.train.checkpoint_files import recover_checkpoint, tmp_dir

    recover_checkpoint(out_dir)  # a kill while a checkpoint moved in: finish the move first
    info = out_dir / CHECKPOINT_INFO
    if force or info.exists():  # without a checkpoint there is nothing to keep or discard
        resume_or_reset(info, data_id, force, [out_dir, tmp_dir(out_dir)], why="trained on other data (data/meta.json changed)", write_state=False)


def _data_summary(meta: dict) -> dict:
    """The training and validation stories and tokens of data/meta.json."""
    return {f"{split}_{what}": meta[split][what] for split in ("train", "val") for what in ("stories", "tokens") if what in meta.get(split, {})}


def run(cfg, rundir, force: bool = False) -> dict:
    import torch

    from tinystories.io.rundir import sha256_path
    from tinystories.pipeline.ids import derive_seed
    from tinystories.train.bpe import load_raw_tokenizer, token_byte_lengths
    from tinystories.train.hardware import process_state
    from tinystories.train.model import FastGPTNeo
    from tinystories.train.shapes import count_params, resolve_shape
    from tinystories.train.trainer import train

    c: Config = cfg.pretrain
    t = c.train
    seed = derive_seed(cfg.seed, NAME)
    shapes = {size: resolve_shape(size, c.shapes) for size in c.sizes}
    meta, train_tokens, val_tokens = load_data(rundir, c)
    vocab, eos_id = int(meta["vocab_size"]), meta.get("eos_id")
    token_bytes = token_byte_lengths(load_raw_tokenizer(rundir), vocab)
    state = process_state()
    tokens_per_step = t.batch_size * t.context * t.grad_accum * state.num_processes
    max_steps = math.ceil(c.max_tokens / tokens_per_step) if c.max_tokens > 0 else t.max_steps
    val = ValWindows(val_tokens, t.batch_size, t.context)
    args = t.resolved(max_steps, val.n_batches)
    # The tokens a checkpoint was trained on: meta.json records the tokenizer's sha256 and the split counts.
    data_id = sha256_path(rundir.path(META))
    metrics: dict[str, Any] = {}
    for size, shape in shapes.items():
        out_dir = rundir.path(f"{PRETRAIN_DIR}/{size}")
        if state.is_main_process:
            _start_over_if_stale(out_dir, data_id, force)
        state.wait_for_everyone()
        torch.manual_seed(seed)
        model = FastGPTNeo(shape, vocab)
        t0 = time.time()
        result = train(
            model,
            args,
            seed,
            out_dir,
            RandomWindows(train_tokens, t.batch_size, t.context, seed),
            val,
            token_bytes=token_bytes,
            tokenizer_dir=rundir.path(TOKENIZER_DIR),
            eos_token_id=eos_id,
            description=f"pretrain {size}",
            stage=NAME,
            # fingerprint: what io.resume compares on the next run (the data trained on).
            extra={"stage": NAME, "size": size, "shape": shape.to_dict(), "settings": {**asdict(args), "seed": seed}, "data_id": data_id, "fingerprint": data_id,
                   "data": _data_summary(meta)},  # the model card's data line
        )
        metrics[size] = {
            **{k: result.get(k) for k in ("train_loss", "val_loss", "val_bpb", "tokens_seen", "tokens_per_s", "steps", "dtype")},
            **count_params(shape, vocab),
            "wall_s": round(time.time() - t0, 2),
            "skipped": bool(result.get("skipped", False)),
        }
    return metrics
