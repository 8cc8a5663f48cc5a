"""Instruct-tune pretrained checkpoints on the instruction dataset (sft/<size>/).

    tinystories sft --run-dir runs/quickstart [--set sft.sizes=[8M] --set sft.epochs=3 --set sft.train.lr=0.0003]
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
`sft.train.context` has no supervised token: it is skipped and counted (and if no pair is left
the stage stops with an error, never a NaN loss). The held-out pairs, which give the
validation loss, are those whose story is a pretraining validation story (data/val_stories.json
from `prepare`, see tinystories.train.heldout), so the model has seen none of them; without
that file (a run that did not prepare its own data) a seeded share of the stories is held out.
The examples and batches are built in tinystories.train.sft_data.

Training goes through the shared trainer (tinystories.train.trainer: accelerate, bf16 autocast,
gradient accumulation, checkpoint/resume, metrics.jsonl, progress) with the settings under
`sft.train` (tinystories.train.args.TrainArgs, with the sft defaults of SFTTrainArgs). A correct run writes
sft/<size>/ for every size: config.json + model.safetensors loadable with
`GPTNeoForCausalLM.from_pretrained`, the tokenizer files, tinystories.json (the settings that
made it), metrics.jsonl and samples.json (a few held-out instructions and the model's stories).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tinystories.errors import UserError
from tinystories.io.layout import CHECKPOINT_INFO, EOS, INSTRUCTIONS, SFT_DIR, TOKENIZER_DIR, TOKENIZER_JSON, TRAIN_STATE, VAL_STORIES
from tinystories.text.prompts import instruction_prompt
from tinystories.train.args import TrainArgs
from tinystories.train.checkpoints import sft_checkpoints, sft_dirs
from tinystories.train.sft_data import PairBatches, ValPairs, encode_pairs, read_pairs, val_story_ids

NAME = "sft"
SECTION = "sft"
USES = ("tokenizer", "pretrain")

log = logging.getLogger("tinystories.train.sft")


@dataclass
class SFTTrainArgs(TrainArgs):
    """TrainArgs with the defaults of tuning: a model that already writes stories needs a lower
    learning rate, fewer steps (sft.epochs decide) and a warmup in proportion to them."""

    max_steps: int = 0  # stop after this many optimizer steps (0 = sft.epochs decide)
    batch_size: int = 16  # pairs per micro-batch per process (padded to the longest pair of the batch)
    lr: float = 3e-4  # peak learning rate (lower than pretraining: the model already writes stories)
    min_lr: float = 3e-5  # learning rate at the end of the cosine schedule
    warmup_steps: int = 0  # linear warmup steps (ignored when warmup_fraction > 0)
    warmup_fraction: float = 0.05  # share of the steps spent in linear warmup
    eval_batches: int = 0  # validation batches per pass (0 = every held-out pair)
    compile: bool = False  # torch.compile the model (batches are then padded to `context` so shapes stay static)


@dataclass
class Config:
    sizes: list[str] = field(default_factory=list)  # checkpoints to tune: size names (pretrain/<size>) or paths to GPT-Neo HF dirs; empty = every size in pretrain.sizes
    epochs: float = 3.0  # passes over the training pairs (unless train.max_steps > 0)
    val_fraction: float = 0.05  # share of stories held out (seeded) when the run has no pretraining validation split (data/val_stories.json) to follow
    max_pairs: int = 0  # use only the first N pairs of the dataset (0 = all)
    samples: int = 3  # held-out instructions the tuned model answers into sft/<size>/samples.json (0 = none)
    sample_tokens: int = 200  # longest sample story in tokens
    sample_temperature: float = 0.7  # sampling temperature of the samples
    train: SFTTrainArgs = field(default_factory=SFTTrainArgs)  # the training settings (tinystories.train.args.TrainArgs)

    def check(self) -> list[str]:
        problems = [f"train.{p}" for p in self.train.check()]
        if len(set(self.sizes)) != len(self.sizes):
            problems.append("sizes: a checkpoint is listed twice; list each once")
        if self.epochs <= 0 and self.train.max_steps < 1:
            problems.append("epochs: must be > 0 (or set sft.train.max_steps)")
        if self.max_pairs < 0 or self.samples < 0:
            problems.append("max_pairs and samples: must be >= 0")
        if self.sample_tokens < 1:
            problems.append("sample_tokens: must be >= 1")
        if not 0.0 <= self.val_fraction < 1.0:
            problems.append("val_fraction: must be in [0, 1)")
        if self.sample_temperature < 0:
            problems.append("sample_temperature: must be >= 0 (0 = greedy)")
        return problems


def inputs(cfg) -> list[str]:
    # data/val_stories.json is read when present but not an input of its own: it changes only
    # with data/meta.json, which retrains pretrain/<size>, which is an input.
    return [INSTRUCTIONS, *(src for _, src in sft_checkpoints(cfg))]


def outputs(cfg) -> list[str]:
    return sft_dirs(cfg)


# -- the stage -------------------------------------------------------------------------------------

# Settings that do not change the trained weights: a checkpoint made with other values is resumed.
_NOT_TRAJECTORY = ("sizes", "samples", "sample_tokens", "sample_temperature", "train")


def _weights_sha256(ckpt: Path) -> str:
    import hashlib

    from tinystories.io.rundir import sha256_path

    h = hashlib.sha256()
    for f in sorted([ckpt / "config.json", *ckpt.glob("*.safetensors")]):
        h.update(f.name.encode() + b"\0" + bytes.fromhex(sha256_path(f)))
    return h.hexdigest()


def held_out_ids(pairs: list[dict], rundir, seed: int, val_fraction: float) -> set[str]:
    """The ids of the pairs to hold out: those whose story is a pretraining validation story
    (prepare's data/val_stories.json), or a seeded share of the stories when this run has no
    such split or none of its validation stories has an instruction pair."""
    from tinystories.train.heldout import read_val_stories, story_key

    keys = read_val_stories(rundir.path(VAL_STORIES))
    if keys is not None:
        ids = {str(p["id"]) for p in pairs if story_key(p["story"]) in keys}
        if ids:
            return ids
        log.warning("sft: no instruction pair tells a pretraining validation story (%s); holding out a seeded %.0f%% of the stories instead", VAL_STORIES, 100 * val_fraction)
    else:
        # Info, not a warning: tuning a checkpoint pretrained elsewhere is a normal case.
        log.info("sft: no %s (data not prepared in this run); holding out a seeded %.0f%% of the stories", rundir.path(VAL_STORIES), 100 * val_fraction)
    return val_story_ids([p["id"] for p in pairs], seed, val_fraction)


def run(cfg, rundir, force: bool = False) -> dict:
    from tinystories.io.rundir import sha256_path
    from tinystories.pipeline.ids import derive_seed
    from tinystories.train.hardware import process_state

    sc: Config = cfg.sft
    seed = derive_seed(cfg.seed, NAME)
    dataset = rundir.path(INSTRUCTIONS)
    if not dataset.exists():
        raise UserError(f"sft: missing {dataset}; run `tinystories instruct-data --run-dir {rundir.root}` first")
    pairs = read_pairs(dataset, sc.max_pairs)
    if not pairs:
        raise UserError(f"{dataset}: no instruction pairs; rerun `tinystories instruct-data --run-dir {rundir.root} --force`")
    job = {
        "cfg": sc,
        "seed": seed,
        "pairs": pairs,
        "val_ids": held_out_ids(pairs, rundir, seed, sc.val_fraction),
        "data_sha": sha256_path(dataset),
        "state": process_state(),  # rank and world size before training (a torchrun/accelerate launch)
        "encoded": {},  # tokenizer hash -> (examples, counts): sizes sharing a tokenizer encode once
    }
    return {name: tune(name, src, job, rundir, force) for name, src in sft_checkpoints(cfg)}


def tune(name: str, src: str, job: dict, rundir, force: bool) -> dict:
    """Tune one base checkpoint into sft/<name>; its metrics."""
    from tinystories.io.rundir import read_json, sha256_path
    from tinystories.train.bpe import token_byte_lengths
    from tinystories.train.trainer import train

    sc: Config = job["cfg"]
    t, pairs, val_ids, state = sc.train, job["pairs"], job["val_ids"], job["state"]
    ckpt = rundir.path(src)  # an absolute source stays absolute
    if not (ckpt / "config.json").exists():
        if not Path(src).is_absolute():
            raise UserError(f"sft: no pretrained checkpoint {ckpt}; run `tinystories pretrain --run-dir {rundir.root}` (with {name} in pretrain.sizes) first")
        raise UserError(f"sft.sizes: {ckpt} is not a GPT-Neo checkpoint (no config.json); point to a save_pretrained directory")
    tokenizer, tok_dir = _checkpoint_tokenizer(ckpt, rundir, name)
    eos = tokenizer.eos_token_id
    tok_sha = sha256_path(Path(tok_dir) / Path(TOKENIZER_JSON).name)
    if tok_sha not in job["encoded"]:
        job["encoded"][tok_sha] = encode_pairs(tokenizer, pairs, t.context)
    examples, counts = job["encoded"][tok_sha]
    train_ex, val_ex = _split(pairs, examples, val_ids)
    _check_examples(train_ex, val_ex, counts, len(pairs), sc, rundir.path(INSTRUCTIONS), name)
    model = _load_base(ckpt, name, tokenizer, tok_dir, t.context)

    base_sha = _weights_sha256(ckpt)
    world = state.num_processes
    max_steps = t.max_steps or max(1, math.ceil(sc.epochs * len(train_ex) / (t.batch_size * t.grad_accum * world)))
    pad_to = t.context if t.compile else None  # static shapes: no recompilation per batch length
    val = ValPairs(val_ex, t.batch_size, eos, pad_to) if val_ex else None
    args = t.resolved(max_steps, val.n_batches if val else 0)
    trajectory = {**{k: v for k, v in asdict(sc).items() if k not in _NOT_TRAJECTORY}, **args.trajectory(job["seed"])}
    fingerprint = _fingerprint(base_sha, job["data_sha"], tok_sha, trajectory, sorted(val_ids))
    out_dir = rundir.path(f"{SFT_DIR}/{name}")
    if state.is_main_process:
        _start_over_unless_same_run(out_dir, fingerprint, force, name)
    state.wait_for_everyone()

    batches = PairBatches(train_ex, t.batch_size, t.grad_accum, job["seed"], eos, pad_to, t.log_interval, f"sft {name}")
    fractions = batches.fraction_stats(max_steps, world)
    log.info("sft %s: %d train / %d val pairs, %d steps, supervised fraction per batch %s", name, len(train_ex), len(val_ex), max_steps, fractions)
    t0 = time.time()
    result = train(
        model,
        args,
        job["seed"],
        out_dir,
        batches,
        val,
        token_bytes=token_byte_lengths(tokenizer.backend_tokenizer, model.vocab_size),
        tokenizer_dir=tok_dir,
        eos_token_id=eos,
        description=f"sft {name}",
        stage=NAME,
        extra={
            "stage": NAME,
            "base": src,
            "base_weights_sha256": base_sha,
            "fingerprint": fingerprint,
            "prompt_format": instruction_prompt("{instruction}") + "{story}" + EOS,
            "sft": trajectory,
            "data": {"train_pairs": len(train_ex), "val_pairs": len(val_ex)},  # the model card's data line
        },
    )
    if state.is_main_process and sc.samples:
        # Held-out instructions first; training ones only when too few stories were held out.
        pool = [p for p in pairs if str(p["id"]) in val_ids] + [p for p in pairs if str(p["id"]) not in val_ids]
        write_samples(out_dir, tokenizer, pool, sc.samples, sc.sample_tokens, sc.sample_temperature, job["seed"], val_ids)
    state.wait_for_everyone()
    samples = len(read_json(out_dir / "samples.json")) if sc.samples and (out_dir / "samples.json").exists() else 0
    return {
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


def _fingerprint(*parts) -> str:
    """What the tuned weights depend on: base weights, dataset, tokenizer, settings, held-out pairs."""
    from tinystories.pipeline.ids import fingerprint

    return fingerprint({"base": parts[0], "data": parts[1], "tokenizer": parts[2], "sft": parts[3], "val_ids": parts[4]})


def _start_over_unless_same_run(out_dir: Path, fingerprint: str, force: bool, name: str) -> None:
    """Resume only the very same run: another base checkpoint, dataset or setting, a missing
    train state or --force starts over."""
    from tinystories.io.resume import resume_or_reset
    from tinystories.train.checkpoint_files import recover_checkpoint, tmp_dir

    recover_checkpoint(out_dir)  # a kill while a checkpoint moved in: finish the move first
    if not (out_dir / TRAIN_STATE).exists():
        force = True  # samples or metrics without a checkpoint to continue: nothing to keep
    if not resume_or_reset(out_dir / CHECKPOINT_INFO, fingerprint, force, [out_dir, tmp_dir(out_dir)], write_state=False) and out_dir.exists():
        log.info("sft %s: starting over in %s", name, out_dir)


def _check_examples(train_ex: list, val_ex: list, counts: dict, n_pairs: int, sc: Config, dataset: Path, name: str) -> None:
    if not train_ex and not val_ex:
        raise UserError(
            f"sft: no pair in {dataset} has a story token to learn: every prompt fills sft.train.context ({sc.train.context} tokens); "
            "raise sft.train.context or shorten the instructions"
        )
    if counts["skipped_no_supervised_token"]:
        log.warning(
            "sft %s: %d of %d pairs skipped: the prompt fills sft.train.context (%d tokens), leaving no story token to learn",
            name, counts["skipped_no_supervised_token"], n_pairs, sc.train.context,
        )
    if not train_ex:
        raise UserError(f"sft: every usable pair of {dataset} is held out; lower sft.val_fraction ({sc.val_fraction}) or add data")


def _load_base(ckpt: Path, name: str, tokenizer, tok_dir, context: int):
    """The base checkpoint as a FastGPTNeo, checked against the context and the tokenizer."""
    from tinystories.train.model import load_hf

    model = load_hf(ckpt)
    if context > model.shape.max_position:
        raise UserError(f"sft.train.context: {context} is longer than the position table of {name} (max_position {model.shape.max_position}); lower sft.train.context")
    n_vocab = tokenizer.backend_tokenizer.get_vocab_size()
    if n_vocab > model.vocab_size:
        raise UserError(f"sft: the tokenizer in {tok_dir} has {n_vocab} tokens, more than {name}'s vocabulary ({model.vocab_size}); use the tokenizer the checkpoint was trained with")
    return model


def _checkpoint_tokenizer(ckpt: Path, rundir, name: str):
    """(tokenizer, directory holding its tokenizer.json) for a base checkpoint.

    Ours carry tokenizer.json. A checkpoint from elsewhere may carry only GPT-2 style
    vocab.json/merges.txt: transformers converts that to a fast tokenizer, which is saved once
    under sft/ so the tuned checkpoint ships a tokenizer.json like every other. Without any
    tokenizer files, the run's own tokenizer/ is used.
    """
    from tinystories.train.bpe import load_tokenizer

    if (ckpt / "tokenizer.json").exists():
        return load_tokenizer(ckpt), ckpt
    if (ckpt / "vocab.json").exists() or (ckpt / "tokenizer_config.json").exists():
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(ckpt), use_fast=True)
        staged = rundir.path(f"{SFT_DIR}/.{name}.tokenizer")
        tok.save_pretrained(str(staged))
        return load_tokenizer(staged), staged
    return load_tokenizer(rundir), rundir.path(TOKENIZER_DIR)


def _finite(v):
    """NaN (e.g. no validation pairs) as null: the manifest stays strict JSON."""
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _split(pairs, examples, val_ids) -> tuple[list, list]:
    """Train and val examples (pairs without a supervised token left out)."""
    train_ex, val_ex = [], []
    for pair, ex in zip(pairs, examples):
        if ex is not None:
            (val_ex if str(pair["id"]) in val_ids else train_ex).append(ex)
    return train_ex, val_ex


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
