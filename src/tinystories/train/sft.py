"""Instruct-tune pretrained checkpoints on the instruction dataset (sft/<size>/).

    tinystories sft --run-dir runs/quickstart [--set sft.sizes=[8M] --set sft.epochs=3]
    tinystories sft --run-dir runs/quickstart --set sft.sizes=[/models/my-gpt-neo]   # any HF GPT-Neo dir
    accelerate launch -m tinystories.cli sft --run-dir runs/quickstart               # data-parallel

Input: data/instruction_dataset.jsonl (from `tinystories instruct-data`) and, for each entry of
`sft.sizes`, a pretrained GPT-Neo checkpoint: a size name means pretrain/<size>/ of this run, a
path means any GPTNeoForCausalLM save_pretrained directory with its tokenizer files.

Every pair is trained as

    ### Instruction:
    {instruction}

    ### Response:
    {story}<|endoftext|>

with the loss on the story and its end token only: the labels are -100 on everything up to and
including the `### Response:\\n` marker and on padding. The prompt and the response are tokenized
separately and their ids concatenated, so the boundary is exact whatever BPE would merge across
it, and generation from a prompt sees the very same prompt ids. A pair whose prompt alone fills
`sft.context` has no supervised token: it is skipped and counted (and if no pair is left the
stage stops with an error, never a NaN loss). Held-out pairs (a seeded split by story id, so
the sets of one story stay on one side) give the validation loss.

Training goes through the shared trainer (tinystories.train.trainer: accelerate, bf16 autocast,
gradient accumulation, checkpoint/resume, metrics.jsonl, progress). A correct run writes
sft/<size>/ for every size: config.json + model.safetensors loadable with
`GPTNeoForCausalLM.from_pretrained`, the tokenizer files, tinystories.json (the settings that
made it), metrics.jsonl and samples.json (a few held-out instructions and the model's stories).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from tinystories.errors import UserError
from tinystories.text.prompts import RESPONSE_MARKER, instruction_prompt

NAME = "sft"
SECTION = "sft"
USES = ("tokenizer", "pretrain")

DATASET = "data/instruction_dataset.jsonl"
OUT_DIR = "sft"
ENCODE_CHUNK = 8192  # pairs tokenized per batch call

log = logging.getLogger("tinystories.train.sft")


@dataclass
class Config:
    sizes: list[str] = field(default_factory=list)  # checkpoints to tune: size names (pretrain/<size>) or paths to GPT-Neo HF dirs; empty = every size in pretrain.sizes
    epochs: float = 3.0  # passes over the training pairs
    max_steps: int = 0  # stop after this many optimizer steps instead (0 = epochs decide)
    batch_size: int = 16  # pairs per micro-batch per process (padded to the longest pair of the batch)
    grad_accum: int = 1  # micro-batches per optimizer step
    context: int = 512  # tokens per pair (prompt + story + end token); longer pairs are cut, a prompt this long is skipped
    lr: float = 3e-4  # peak learning rate (lower than pretraining: the model already writes stories)
    min_lr: float = 3e-5  # learning rate at the end of the cosine schedule
    warmup_fraction: float = 0.05  # share of the steps spent in linear warmup
    weight_decay: float = 0.1  # AdamW decay on matmul weights
    grad_clip: float = 1.0  # clip the global gradient norm to this (0 = off)
    val_fraction: float = 0.05  # share of stories whose instruction pairs are held out for the validation loss (seeded)
    max_pairs: int = 0  # use only the first N pairs of the dataset (0 = all)
    eval_interval: int = 100  # steps between validation passes (and always at the end)
    eval_batches: int = 0  # validation batches per pass (0 = every held-out pair)
    checkpoint_interval: int = 200  # steps between resumable checkpoints (and always at the end)
    log_interval: int = 10  # steps between metrics.jsonl records and supervised-fraction log lines
    dtype: str = "auto"  # bf16 | fp32 | auto (bf16 autocast where the CPU/GPU supports it)
    compile: bool = False  # torch.compile the model (batches are then padded to `context` so shapes stay static)
    samples: int = 3  # held-out instructions the tuned model answers into sft/<size>/samples.json (0 = none)
    sample_tokens: int = 200  # longest sample story in tokens
    sample_temperature: float = 0.7  # sampling temperature of the samples

    def check(self) -> list[str]:
        problems = []
        if len(set(self.sizes)) != len(self.sizes):
            problems.append("sizes: a checkpoint is listed twice; list each once")
        if self.epochs <= 0 and self.max_steps < 1:
            problems.append("epochs: must be > 0 (or set sft.max_steps)")
        if self.max_steps < 0 or self.max_pairs < 0 or self.eval_batches < 0 or self.samples < 0:
            problems.append("max_steps, max_pairs, eval_batches and samples: must be >= 0")
        for key in ("batch_size", "grad_accum", "log_interval", "sample_tokens"):
            if getattr(self, key) < 1:
                problems.append(f"{key}: must be >= 1")
        if self.context < 2:
            problems.append("context: must be >= 2 (a prompt token and a story token)")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            problems.append("lr/min_lr: need lr > 0 and 0 <= min_lr <= lr")
        if not 0.0 <= self.warmup_fraction < 1.0:
            problems.append("warmup_fraction: must be in [0, 1)")
        if not 0.0 <= self.val_fraction < 1.0:
            problems.append("val_fraction: must be in [0, 1)")
        if self.dtype not in ("bf16", "fp32", "auto"):
            problems.append(f"dtype: {self.dtype!r} is not one of 'bf16', 'fp32', 'auto'")
        for key in ("weight_decay", "grad_clip", "eval_interval", "checkpoint_interval"):
            if getattr(self, key) < 0:
                problems.append(f"{key}: must be >= 0")
        if self.sample_temperature < 0:
            problems.append("sample_temperature: must be >= 0 (0 = greedy)")
        return problems


def _is_path(entry: str) -> bool:
    return "/" in entry or "\\" in entry or entry.startswith((".", "~"))


def checkpoints(cfg) -> list[tuple[str, str]]:
    """(name, source) per checkpoint to tune: source is pretrain/<size> (run-relative) or an
    absolute path to a Hugging Face GPT-Neo directory; the output goes to sft/<name>."""
    sizes = list(cfg.sft.sizes)
    if not sizes:
        pretrain = getattr(cfg, "pretrain", None)
        sizes = list(getattr(pretrain, "sizes", []) or [])
    if not sizes:
        raise UserError("sft.sizes: no checkpoint to tune; name one, e.g. --set sft.sizes=[1M] (pretrain/1M) or a path to a GPT-Neo directory")
    out = []
    for entry in sizes:
        if _is_path(entry):
            path = Path(entry).expanduser().resolve()
            out.append((path.name, str(path)))
        else:
            out.append((entry, f"pretrain/{entry}"))
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise UserError(f"sft.sizes: two checkpoints would both be written to sft/<name> ({', '.join(names)}); rename one directory")
    return out


def inputs(cfg) -> list[str]:
    return [DATASET, *(src for _, src in checkpoints(cfg))]


def outputs(cfg) -> list[str]:
    return [f"{OUT_DIR}/{name}" for name, _ in checkpoints(cfg)]


def build_example(prompt_ids, story_ids, eos_id: int, context: int, dtype: str = "int32"):
    """One pair as (input_ids, n_prompt), cut to `context` tokens; None when no token is supervised.

    Kept compact (a numpy array and the prompt length; labels are made per batch by `collate`)
    because a paper-scale dataset has millions of pairs. Labels follow the transformers
    convention (same length as the inputs, shifted inside the model): label i is what the model
    must predict after positions < i, so the prompt's labels, the marker's included, are -100
    and the first story token is predicted from the marker's last token.
    """
    import numpy as np

    ids = np.asarray((list(prompt_ids) + list(story_ids) + [eos_id])[:context], dtype=dtype)
    n_prompt = len(prompt_ids)
    if n_prompt >= len(ids):
        return None
    return ids, n_prompt


def labels_of(example) -> list[int]:
    """The label list of an example: -100 over the prompt, the token ids over the story and eos."""
    ids, n_prompt = example
    return [-100] * n_prompt + [int(t) for t in ids[n_prompt:]]


def collate(examples, pad_id: int, pad_to: int | None = None):
    """(input_ids, labels) LongTensors right-padded to the longest example (or `pad_to`):
    inputs with `pad_id`, labels -100 on the prompt and on the padding.

    No attention mask is needed: attention is causal and the padding comes after every real
    token, so no real position can see a pad.
    """
    import numpy as np
    import torch

    T = pad_to or max(len(ids) for ids, _ in examples)
    inp = np.full((len(examples), T), pad_id, dtype=np.int64)
    lab = np.full((len(examples), T), -100, dtype=np.int64)
    for i, (ids, n_prompt) in enumerate(examples):
        inp[i, : len(ids)] = ids
        lab[i, n_prompt : len(ids)] = ids[n_prompt:]
    return torch.from_numpy(inp), torch.from_numpy(lab)


def supervised_fraction(labels) -> float:
    """Share of the batch's label positions that count in the loss (the shifted-out first one excluded)."""
    counted = (labels[:, 1:] != -100).sum().item()
    return counted / max(1, labels[:, 1:].numel())


def val_story_ids(story_ids, seed: int, val_fraction: float) -> set[str]:
    """The held-out stories: round(val_fraction * stories), at least one when there are two or
    more, picked by a seeded hash of the id. Split by story, so the instruction sets of one
    story never sit on both sides, and independent of the order of the file."""
    unique = sorted({str(i) for i in story_ids})
    if val_fraction <= 0 or len(unique) < 2:
        return set()
    k = min(len(unique) - 1, max(1, round(val_fraction * len(unique))))
    key = lambda sid: hashlib.sha256(f"{seed}:{sid}".encode()).digest()  # noqa: E731
    return set(sorted(unique, key=key)[:k])


# -- the instruction pairs ------------------------------------------------------------------------


def read_pairs(path: Path, limit: int = 0) -> list[dict]:
    """The (instruction, story, id) records, each checked; a torn last line is ignored."""
    from tinystories.io.rundir import read_jsonl_numbered

    pairs: list[dict] = []
    for lineno, rec in read_jsonl_numbered(path):
        if not isinstance(rec, dict) or not isinstance(rec.get("instruction"), str) or not isinstance(rec.get("story"), str):
            raise UserError(f"{path}:{lineno}: needs text fields 'instruction' and 'story'; rerun `tinystories instruct-data --force`")
        if not rec["story"].strip():
            raise UserError(f"{path}:{lineno}: empty 'story'; remove the line or rerun `tinystories instruct-data --force`")
        pairs.append({"instruction": rec["instruction"], "story": rec["story"].strip(), "id": rec.get("id", lineno)})
        if limit and len(pairs) >= limit:
            break
    return pairs


def encode_pairs(tokenizer, pairs: list[dict], context: int) -> tuple[list, dict]:
    """Tokenize every pair (prompt and story separately) into an (input_ids, n_prompt) example.

    Returns one entry per pair (None where the prompt fills the context, so no token is
    supervised) and counts: skipped, truncated (story cut by the context), tokens, supervised
    tokens, and the UTF-8 bytes of the supervised story text (for bits per byte).
    """
    raw = tokenizer.backend_tokenizer  # batch encoding in Rust on all cores
    eos = tokenizer.eos_token_id
    if eos is None:
        raise UserError("sft: the checkpoint's tokenizer has no end-of-text token; use a tokenizer from `tinystories tokenizer`")
    examples: list = []
    counts = {"pairs": len(pairs), "skipped_no_supervised_token": 0, "truncated": 0, "tokens": 0, "supervised_tokens": 0, "supervised_bytes": 0}
    # Per example: supervised tokens and the UTF-8 bytes they cover (bits per byte of each split).
    per_example: list[tuple[int, int]] = []
    dtype = "uint16" if raw.get_vocab_size() <= 1 << 16 else "int32"

    def encoded() -> Iterator[tuple[dict, Any, Any]]:
        # In chunks: an Encoding carries tokens, offsets and masks besides the ids, far too
        # much to hold for millions of pairs at once.
        for start in range(0, len(pairs), ENCODE_CHUNK):
            chunk = pairs[start : start + ENCODE_CHUNK]
            prompts = raw.encode_batch([instruction_prompt(p["instruction"]) for p in chunk], add_special_tokens=False)
            stories = raw.encode_batch([p["story"] for p in chunk], add_special_tokens=False)
            yield from zip(chunk, prompts, stories)

    for pair, p, st in encoded():
        ex = build_example(p.ids, st.ids, eos, context, dtype)
        examples.append(ex)
        if ex is None:
            counts["skipped_no_supervised_token"] += 1
            per_example.append((0, 0))
            continue
        n_story = len(ex[0]) - len(p.ids)  # story tokens kept, plus the end token when it fits
        if len(p.ids) + len(st.ids) + 1 > context:
            counts["truncated"] += 1
            nbytes = len(tokenizer.decode(st.ids[:n_story]).encode("utf-8"))
        else:
            nbytes = len(pair["story"].encode("utf-8"))
        per_example.append((n_story, nbytes))
        counts["supervised_bytes"] += nbytes
        counts["tokens"] += len(ex[0])
        counts["supervised_tokens"] += n_story
    counts["per_example"] = per_example
    return examples, counts


# -- batch sources for the shared trainer ----------------------------------------------------------


class PairBatches:
    """Training batches: epochs of seeded permutations of the examples, cut into micro-batches.

    `batch(step, micro, rank, world)` is a pure function of its arguments (the trainer resumes
    by step alone): micro-batch g = (step * grad_accum + micro) * world + rank takes examples
    g*B .. g*B+B-1 of the endless sequence perm(epoch 0), perm(epoch 1), ...
    """

    def __init__(self, examples, batch_size: int, grad_accum: int, seed: int, pad_id: int, pad_to: int | None = None, log_interval: int = 0, name: str = "sft"):
        self.examples, self.batch_size, self.grad_accum = examples, batch_size, grad_accum
        self.seed, self.pad_id, self.pad_to = seed, pad_id, pad_to
        self.log_interval, self.name = log_interval, name
        self._perm_epoch, self._perm = -1, None

    def _perm_for(self, epoch: int):
        import numpy as np

        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.examples))
            self._perm_epoch = epoch
        return self._perm

    def indices(self, step: int, micro: int, rank: int, world: int) -> list[int]:
        n = len(self.examples)
        g = (step * self.grad_accum + micro) * world + rank
        out = []
        for k in range(g * self.batch_size, (g + 1) * self.batch_size):
            out.append(int(self._perm_for(k // n)[k % n]))
        return out

    def batch(self, step: int, micro: int, rank: int, world: int):
        x, y = collate([self.examples[i] for i in self.indices(step, micro, rank, world)], self.pad_id, self.pad_to)
        if self.log_interval and micro == 0 and rank == 0 and (step + 1) % self.log_interval == 0:
            log.info("%s step %d: supervised fraction %.3f of %d x %d tokens", self.name, step + 1, supervised_fraction(y), *y.shape)
        return x, y

    def fraction_stats(self, max_steps: int, world: int) -> dict:
        """Supervised share of every padded micro-batch of the run, from lengths alone (the
        batches are a pure function of their position, so this needs no forward pass)."""
        lengths = [len(ids) for ids, _ in self.examples]
        supervised = [len(ids) - n_prompt for ids, n_prompt in self.examples]  # n_prompt >= 1: label 0 is never counted
        fracs = []
        for step in range(max_steps):
            for micro in range(self.grad_accum):
                for rank in range(world):
                    idx = self.indices(step, micro, rank, world)
                    T = self.pad_to or max(lengths[i] for i in idx)
                    fracs.append(sum(supervised[i] for i in idx) / (len(idx) * max(1, T - 1)))
        if not fracs:
            return {}
        return {"mean": round(sum(fracs) / len(fracs), 4), "min": round(min(fracs), 4), "max": round(max(fracs), 4)}


class ValPairs:
    """Validation batches: every held-out example once, sorted by length so padding is small."""

    def __init__(self, examples, batch_size: int, pad_id: int, pad_to: int | None = None):
        self.examples = sorted(examples, key=lambda ex: len(ex[0]))
        self.batch_size, self.pad_id, self.pad_to = batch_size, pad_id, pad_to

    @property
    def n_batches(self) -> int:
        return math.ceil(len(self.examples) / self.batch_size)

    def batch(self, i: int):
        return collate(self.examples[i * self.batch_size : (i + 1) * self.batch_size], self.pad_id, self.pad_to)


# -- the stage -------------------------------------------------------------------------------------

# Settings that do not change the trained weights: a checkpoint made with other values is resumed.
_NOT_TRAJECTORY = ("sizes", "eval_interval", "eval_batches", "checkpoint_interval", "log_interval", "compile", "samples", "sample_tokens", "sample_temperature")


def _weights_sha256(ckpt: Path) -> str:
    from tinystories.io.rundir import sha256_path

    h = hashlib.sha256()
    for f in sorted([ckpt / "config.json", *ckpt.glob("*.safetensors")]):
        h.update(f.name.encode() + b"\0" + bytes.fromhex(sha256_path(f)))
    return h.hexdigest()


def run(cfg, rundir, force: bool = False) -> dict:
    import time

    from tinystories.pipeline.config import derive_seed
    from tinystories.train.model import load_hf
    from tinystories.io.rundir import read_json, sha256_path
    from tinystories.train.trainer import STATE_FILE, TrainSettings, discard_checkpoint, process_state, recover_checkpoint, train

    sc: Config = cfg.sft
    seed = derive_seed(cfg.seed, NAME)
    state = process_state()  # rank and world size before training (a torchrun/accelerate launch)
    world = state.num_processes
    dataset = rundir.path(DATASET)
    if not dataset.exists():
        raise UserError(f"sft: missing {dataset}; run `tinystories instruct-data --run-dir {rundir.root}` first")
    pairs = read_pairs(dataset, sc.max_pairs)
    if not pairs:
        raise UserError(f"{dataset}: no instruction pairs; rerun `tinystories instruct-data --run-dir {rundir.root} --force`")
    val_ids = val_story_ids([p["id"] for p in pairs], seed, sc.val_fraction)
    data_sha = sha256_path(dataset)
    encoded: dict[str, tuple] = {}  # tokenizer hash -> (examples, counts): sizes sharing a tokenizer encode once
    metrics: dict[str, Any] = {}

    for name, src in checkpoints(cfg):
        ckpt = rundir.path(src)  # an absolute source stays absolute
        if not (ckpt / "config.json").exists():
            if src == f"pretrain/{name}":
                raise UserError(f"sft: no pretrained checkpoint {ckpt}; run `tinystories pretrain --run-dir {rundir.root}` (with {name} in pretrain.sizes) first")
            raise UserError(f"sft.sizes: {ckpt} is not a GPT-Neo checkpoint (no config.json); point to a save_pretrained directory")
        tokenizer, tok_dir = _checkpoint_tokenizer(ckpt, rundir, name)
        eos = tokenizer.eos_token_id
        tok_sha = sha256_path(Path(tok_dir) / "tokenizer.json")
        if tok_sha not in encoded:
            encoded[tok_sha] = encode_pairs(tokenizer, pairs, sc.context)
        examples, counts = encoded[tok_sha]
        train_ex, val_ex, bpt = _split(pairs, examples, counts["per_example"], val_ids)
        if not train_ex and not val_ex:
            raise UserError(
                f"sft: no pair in {dataset} has a story token to learn: every prompt fills sft.context ({sc.context} tokens); "
                "raise sft.context or shorten the instructions"
            )
        if counts["skipped_no_supervised_token"]:
            log.warning(
                "sft %s: %d of %d pairs skipped: the prompt fills sft.context (%d tokens), leaving no story token to learn",
                name, counts["skipped_no_supervised_token"], len(pairs), sc.context,
            )
        if not train_ex:
            raise UserError(f"sft: every usable pair of {dataset} is held out; lower sft.val_fraction ({sc.val_fraction}) or add data")

        model = load_hf(ckpt)
        if sc.context > model.shape.max_position:
            raise UserError(f"sft.context: {sc.context} is longer than the position table of {name} (max_position {model.shape.max_position}); lower sft.context")
        n_vocab = tokenizer.backend_tokenizer.get_vocab_size()
        if n_vocab > model.vocab_size:
            raise UserError(f"sft: the tokenizer in {tok_dir} has {n_vocab} tokens, more than {name}'s vocabulary ({model.vocab_size}); use the tokenizer the checkpoint was trained with")

        base_sha = _weights_sha256(ckpt)
        trajectory = {k: v for k, v in asdict(sc).items() if k not in _NOT_TRAJECTORY}
        fingerprint = hashlib.sha256(json.dumps({"base": base_sha, "data": data_sha, "tokenizer": tok_sha, "sft": trajectory, "seed": seed}, sort_keys=True).encode()).hexdigest()
        out_dir = rundir.path(f"{OUT_DIR}/{name}")
        if state.is_main_process:
            recover_checkpoint(out_dir)  # a kill while a checkpoint moved in: finish the move first
            prev = read_json(out_dir / "tinystories.json").get("fingerprint") if (out_dir / "tinystories.json").exists() else None
            if force or not (out_dir / STATE_FILE).exists() or prev != fingerprint:
                # Resume only the very same run: another base checkpoint, dataset or setting starts over.
                if out_dir.exists():
                    log.info("sft %s: starting over in %s", name, out_dir)
                discard_checkpoint(out_dir)
        state.wait_for_everyone()

        per_step = sc.batch_size * sc.grad_accum * world
        max_steps = sc.max_steps or max(1, math.ceil(sc.epochs * len(train_ex) / per_step))
        pad_to = sc.context if sc.compile else None  # static shapes: no recompilation per batch length
        val = ValPairs(val_ex, sc.batch_size, eos, pad_to) if val_ex else None
        settings = TrainSettings(
            max_steps=max_steps,
            batch_size=sc.batch_size,
            grad_accum=sc.grad_accum,
            context=sc.context,
            lr=sc.lr,
            min_lr=sc.min_lr,
            warmup_steps=round(sc.warmup_fraction * max_steps),
            schedule="cosine",
            weight_decay=sc.weight_decay,
            grad_clip=sc.grad_clip,
            eval_interval=sc.eval_interval,
            eval_batches=min(sc.eval_batches or val.n_batches, val.n_batches) if val else 0,
            checkpoint_interval=sc.checkpoint_interval,
            log_interval=sc.log_interval,
            dtype=sc.dtype,
            compile=sc.compile,
            seed=seed,
        )
        batches = PairBatches(train_ex, sc.batch_size, sc.grad_accum, seed, eos, pad_to, sc.log_interval, f"sft {name}")
        fractions = batches.fraction_stats(max_steps, world)
        log.info("sft %s: %d train / %d val pairs, %d steps, supervised fraction per batch %s", name, len(train_ex), len(val_ex), max_steps, fractions)
        t0 = time.time()
        result = train(
            model,
            settings,
            out_dir,
            batches,
            val,
            tokenizer_dir=tok_dir,
            eos_token_id=eos,
            bytes_per_token=bpt,
            description=f"sft {name}",
            stage=NAME,
            extra={
                "stage": NAME,
                "base": src,
                "base_weights_sha256": base_sha,
                "fingerprint": fingerprint,
                "prompt_format": instruction_prompt("{instruction}") + "{story}<|endoftext|>",
                "sft": trajectory,
            },
        )
        if state.is_main_process and sc.samples:
            # Held-out instructions first; training ones only when too few stories were held out.
            pool = [p for p in pairs if str(p["id"]) in val_ids] + [p for p in pairs if str(p["id"]) not in val_ids]
            write_samples(out_dir, tokenizer, pool, sc.samples, sc.sample_tokens, sc.sample_temperature, seed, val_ids)
        state.wait_for_everyone()
        samples = len(read_json(out_dir / "samples.json")) if sc.samples and (out_dir / "samples.json").exists() else 0
        metrics[name] = {
            **{k: _finite(result.get(k)) for k in ("train_loss", "val_loss", "val_bpb", "steps", "tokens_per_s", "dtype")},
            "pairs_train": len(train_ex),
            "pairs_val": len(val_ex),
            "skipped_no_supervised_token": counts["skipped_no_supervised_token"],
            "truncated": counts["truncated"],
            "supervised_fraction": fractions,
            "samples": samples,
            "wall_s": round(time.time() - t0, 2),
            "skipped": bool(result.get("skipped", False)),
        }
    return metrics


def _checkpoint_tokenizer(ckpt: Path, rundir, name: str):
    """(tokenizer, directory holding its tokenizer.json) for a base checkpoint.

    Ours carry tokenizer.json. A checkpoint from elsewhere may carry only GPT-2 style
    vocab.json/merges.txt: transformers converts that to a fast tokenizer, which is saved once
    under sft/ so the tuned checkpoint ships a tokenizer.json like every other. Without any
    tokenizer files, the run's own tokenizer/ is used.
    """
    from tinystories.train.tokenizer import load_tokenizer

    if (ckpt / "tokenizer.json").exists():
        return load_tokenizer(ckpt), ckpt
    if (ckpt / "vocab.json").exists() or (ckpt / "tokenizer_config.json").exists():
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(ckpt), use_fast=True)
        staged = rundir.path(f"{OUT_DIR}/.{name}.tokenizer")
        tok.save_pretrained(str(staged))
        return load_tokenizer(staged), staged
    return load_tokenizer(rundir), rundir.path("tokenizer")


def _finite(v):
    """NaN (e.g. no validation pairs) as null: the manifest stays strict JSON."""
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _split(pairs, examples, per_example, val_ids) -> tuple[list, list, tuple[float, float]]:
    """Train and val examples, and the UTF-8 bytes per supervised token of each (bits per byte)."""
    train_ex, val_ex = [], []
    totals = {"train": [0, 0], "val": [0, 0]}  # supervised tokens, bytes
    for pair, ex, (n_tok, n_bytes) in zip(pairs, examples, per_example):
        if ex is None:
            continue
        side = "val" if str(pair["id"]) in val_ids else "train"
        (val_ex if side == "val" else train_ex).append(ex)
        totals[side][0] += n_tok
        totals[side][1] += n_bytes
    bpt = tuple(b / t if t else 0.0 for t, b in (totals["train"], totals["val"]))
    return train_ex, val_ex, bpt


def write_samples(out_dir: Path, tokenizer, pairs: list[dict], n: int, max_new_tokens: int, temperature: float, seed: int, held_out: set[str] = frozenset()) -> int:
    """The tuned checkpoint, loaded back with transformers, answers `n` instructions: samples.json.

    Loading through `GPTNeoForCausalLM.from_pretrained` (not our training module) proves the
    saved directory is what other tools will see.
    """
    import torch
    from transformers import GPTNeoForCausalLM

    from tinystories.io.rundir import write_json

    model = GPTNeoForCausalLM.from_pretrained(str(out_dir))
    model.eval()
    eos = tokenizer.eos_token_id
    max_pos = model.config.max_position_embeddings
    gen = torch.Generator().manual_seed(seed)
    out = []
    seen: set[str] = set()
    for pair in pairs:
        if len(out) >= n:
            break
        if str(pair["id"]) in seen:
            continue  # one sample per story
        seen.add(str(pair["id"]))
        ids = tokenizer.backend_tokenizer.encode(instruction_prompt(pair["instruction"]), add_special_tokens=False).ids
        room = min(max_new_tokens, max_pos - len(ids))
        if room < 1:
            continue
        x = torch.tensor([ids])
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
        with torch.no_grad():
            y = model.generate(
                x,
                attention_mask=torch.ones_like(x),
                max_new_tokens=room,
                do_sample=temperature > 0,
                temperature=temperature if temperature > 0 else None,
                top_k=None,
                eos_token_id=eos,
                pad_token_id=eos,
            )
        new = y[0, len(ids) :].tolist()
        ended = eos in new
        if ended:
            new = new[: new.index(eos)]
        out.append({"id": pair["id"], "held_out": str(pair["id"]) in held_out, "instruction": pair["instruction"], "generated": tokenizer.decode(new), "ended": ended, "reference": pair["story"]})
    write_json(out_dir / "samples.json", out)
    return len(out)
