"""Train the byte-level BPE tokenizer on the story dataset (tokenizer/tokenizer.json).

    tinystories tokenizer --run-dir runs/quickstart [--set tokenizer.vocab_size=10000]

Reads data/tinystories_dataset.txt (stories separated by `<|endoftext|>`) as a stream, so a
multi-GB file never sits in memory, and trains a GPT-2 style byte-level BPE with Hugging Face
`tokenizers` (the paper uses a 10k vocabulary). Byte level with no prefix space and a
ByteLevel decoder means every string round-trips exactly: decode(encode(t)) == t.

A correct run writes the directory tokenizer/ with tokenizer.json, tokenizer_config.json and
special_tokens_map.json, loadable with `PreTrainedTokenizerFast.from_pretrained("tokenizer")`
(or `tinystories.train.bpe.load_tokenizer(rundir)`); `<|endoftext|>` is eos, bos, unk and pad. The pretrain
stage copies these files into every checkpoint so `AutoTokenizer` works on each checkpoint.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Iterator

from tinystories.errors import UserError
from tinystories.io.layout import EOS, STORY_FILE, TOKENIZER_DIR, UINT16_VOCAB
from tinystories.io.rundir import RunDir

# Re-exported: the tokenizer's file helpers live in bpe.py (prepare and sft load through it).
from tinystories.train.bpe import SPECIAL_TOKENS, TOKENIZER_FILES, bytes_per_token, load_raw_tokenizer, load_tokenizer, new_tokenizer, save_tokenizer, wrap_fast  # noqa: F401
from tinystories.text.storyfile import check_dataset, iter_stories, iter_story_chunks

NAME = "tokenizer"
SECTION = "tokenizer"
USES: tuple[str, ...] = ()

# uint16 token files (data/*.bin) hold ids 0..65535, i.e. at most 65536 distinct tokens.
MAX_VOCAB = UINT16_VOCAB
# 256 byte symbols, the special tokens, and at least one merge, or BPE has nothing to learn.
MIN_VOCAB = 256 + len(SPECIAL_TOKENS) + 1


@dataclass
class Config:
    vocab_size: int = 10000  # BPE vocabulary size including <|endoftext|> (the paper uses 10k; at most 65536 for uint16 bins)
    min_frequency: int = 2  # a pair must occur at least this often to be merged
    max_stories: int = 0  # train on the first N stories only (0 = all); the prepare stage still encodes every story
    compression_sample: int = 2000  # stories (the first N) on which bytes-per-token is measured for the metrics

    def check(self) -> list[str]:
        problems = []
        if self.vocab_size > MAX_VOCAB:
            problems.append(
                f"tokenizer.vocab_size: {self.vocab_size} does not fit the uint16 token files (ids up to 65535); "
                f"set --set tokenizer.vocab_size={MAX_VOCAB} or less"
            )
        if self.vocab_size < MIN_VOCAB:
            problems.append(
                f"tokenizer.vocab_size: {self.vocab_size} is too small for the 256-byte alphabet plus {EOS}; "
                f"set --set tokenizer.vocab_size={MIN_VOCAB} or more (the paper uses 10000)"
            )
        if self.min_frequency < 0:
            problems.append("tokenizer.min_frequency: must be >= 0")
        if self.max_stories < 0:
            problems.append("tokenizer.max_stories: must be >= 0 (0 = all stories)")
        if self.compression_sample < 1:
            problems.append("tokenizer.compression_sample: must be >= 1")
        return problems


def inputs(cfg) -> list[str]:
    return [STORY_FILE]


def outputs(cfg) -> list[str]:
    # The files, not the directory, so a stage missing tokenizer/tokenizer.json is told to run this one.
    return [f"{TOKENIZER_DIR}/{name}" for name in TOKENIZER_FILES]


# --- training ------------------------------------------------------------------------------


def train_tokenizer(story_iter, vocab_size: int, min_frequency: int = 2, show_progress: bool = False):
    """Train a byte-level BPE on an iterator of story strings; returns a `tokenizers.Tokenizer`."""
    from tokenizers import pre_tokenizers, trainers

    tok = new_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        # All 256 byte symbols up front: every byte string stays encodable whatever the sample held.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    tok.train_from_iterator(story_iter, trainer=trainer)
    return tok


# --- the stage -----------------------------------------------------------------------------


def run(cfg, rundir: RunDir, force: bool = False) -> dict:
    from tinystories.progress import progress_bar

    c: Config = cfg.tokenizer
    path = rundir.path(STORY_FILE)
    check_dataset(path)
    size = path.stat().st_size
    counts = {"stories": 0, "chars": 0}
    done_reading = False

    def stories_for_training() -> Iterator[str]:
        # Counted as they stream past, so the metrics say exactly what the BPE saw.
        nonlocal done_reading
        with progress_bar("tokenizer: reading stories", total=max(1, math.ceil(size / 1e6)), unit="MB") as bar:
            for stories, end in iter_story_chunks(path):
                if c.max_stories:
                    stories = stories[: c.max_stories - counts["stories"]]
                counts["stories"] += len(stories)
                counts["chars"] += sum(len(s) for s in stories)
                bar.set(end / 1e6, stories=counts["stories"])
                yield from stories
                if c.max_stories and counts["stories"] >= c.max_stories:
                    break
        done_reading = True

    t0 = time.monotonic()
    tok = train_tokenizer(stories_for_training(), c.vocab_size, c.min_frequency)
    train_s = time.monotonic() - t0
    if counts["stories"] == 0:
        raise UserError(f"{path}: no stories found (expected texts separated by {EOS}); regenerate or re-import the dataset")
    if not done_reading:  # train_from_iterator stopped early: never save a tokenizer of part of the data silently
        raise RuntimeError("tokenizers stopped consuming the story iterator before the end")

    sample = list(iter_stories(path, limit=c.compression_sample))
    bpt = bytes_per_token(tok, sample)
    save_tokenizer(tok, rundir.path(TOKENIZER_DIR))
    logging.getLogger("tinystories.train.tokenizer").info(
        "trained on %d stories in %.1fs: vocab %d, %.2f bytes/token", counts["stories"], train_s, tok.get_vocab_size(), bpt
    )
    return {
        # Fewer than requested when the data runs out of pairs seen min_frequency times.
        "vocab_size": tok.get_vocab_size(),
        "vocab_size_requested": c.vocab_size,
        "eos_id": tok.token_to_id(EOS),
        "train_s": round(train_s, 3),
        "stories_used": counts["stories"],
        "chars_used": counts["chars"],
        "bytes_per_token": round(bpt, 4),
        "compression_sample_stories": len(sample),
    }
