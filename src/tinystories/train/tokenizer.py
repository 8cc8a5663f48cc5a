"""Train the byte-level BPE tokenizer on the story dataset (tokenizer/tokenizer.json).

    tinystories tokenizer --run-dir runs/quickstart [--set tokenizer.vocab_size=10000]

Reads data/tinystories_dataset.txt (stories separated by `<|endoftext|>`) as a stream, so a
multi-GB file never sits in memory, and trains a GPT-2 style byte-level BPE with Hugging Face
`tokenizers` (the paper uses a 10k vocabulary). Byte level with no prefix space and a
ByteLevel decoder means every string round-trips exactly: decode(encode(t)) == t.

A correct run writes the directory tokenizer/ with tokenizer.json, tokenizer_config.json and
special_tokens_map.json, loadable with `PreTrainedTokenizerFast.from_pretrained("tokenizer")`
(or `load_tokenizer(rundir)` below); `<|endoftext|>` is eos, bos, unk and pad. The pretrain
stage copies these files into every checkpoint so `AutoTokenizer` works on each checkpoint.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from tinystories.errors import UserError
from tinystories.io.rundir import RunDir

NAME = "tokenizer"
SECTION = "tokenizer"
USES: tuple[str, ...] = ()

DATASET = "data/tinystories_dataset.txt"
TOKENIZER_DIR = "tokenizer"
EOS = "<|endoftext|>"
SPECIAL_TOKENS = [EOS]
# uint16 token files (data/*.bin) hold ids 0..65535, i.e. at most 65536 distinct tokens.
MAX_VOCAB = 1 << 16
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
    return [DATASET]


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def outputs(cfg) -> list[str]:
    # The files, not the directory, so a stage missing tokenizer/tokenizer.json is told to run this one.
    return [f"{TOKENIZER_DIR}/{name}" for name in TOKENIZER_FILES]


# --- reading the dataset -------------------------------------------------------------------

_DELIM = EOS.encode("ascii")
# Only ASCII whitespace is stripped around a story, so a story is the same text whether the
# file is read as bytes (count_stories) or as str (iter_story_chunks).
_WS = " \t\n\r\x0b\x0c"
_WS_B = _WS.encode("ascii")
_EMPTY_BETWEEN = re.compile(re.escape(_DELIM) + b"[" + re.escape(_WS_B) + b"]*(?=" + re.escape(_DELIM) + b")")


def _iter_bodies(path: Path, chunk_bytes: int, start: int) -> Iterator[tuple[bytes, int, int, bool]]:
    """(body, body_offset, end_offset, eof): the file cut just before a delimiter.

    Every body but the last ends where a delimiter starts; `end_offset` is just past that
    delimiter, a story boundary. The delimiter is ASCII, so it never splits a UTF-8 character.
    """
    offset = start
    carry = b""
    with open(path, "rb") as fh:
        fh.seek(start)
        while True:
            block = fh.read(chunk_bytes)
            eof = not block
            buf = carry + block
            if eof:
                yield buf, offset, offset + len(buf), True
                return
            idx = buf.rfind(_DELIM)
            if idx < 0:
                carry = buf
                continue
            cut = idx + len(_DELIM)
            carry = buf[cut:]
            yield buf[:idx], offset, offset + cut, False
            offset += cut


def _decode(path: Path, body: bytes, body_offset: int) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{path}: byte {body_offset + exc.start} is not valid UTF-8; the dataset must be UTF-8 text (regenerate or re-import it)"
        ) from None


def iter_story_chunks(path: str | os.PathLike, chunk_bytes: int = 8 << 20, start: int = 0) -> Iterator[tuple[list[str], int]]:
    """Yield (stories, end_offset) for consecutive blocks of roughly `chunk_bytes` of the file.

    Stories are the texts between `<|endoftext|>` delimiters with surrounding (ASCII)
    whitespace stripped, since the delimiter usually sits on its own line; empty ones are
    skipped. `end_offset` is the byte offset just past the last story yielded, always at a
    story boundary, so a reader can restart there with `start=end_offset`.
    """
    path = Path(path)
    for body, body_offset, end, eof in _iter_bodies(path, chunk_bytes, start):
        text = _decode(path, body, body_offset)
        stories = [s for s in (part.strip(_WS) for part in text.split(EOS)) if s]
        if stories or eof:
            yield stories, end


def count_stories(path: str | os.PathLike, chunk_bytes: int = 8 << 20) -> int:
    """The number of stories iter_story_chunks yields, without splitting the text in Python.

    Checks that the file is UTF-8 on the way. Counting delimiters runs at memory speed, which
    makes a counting pass before tokenizing almost free even on a multi-GB file.
    """
    path = Path(path)
    n = 0
    for body, body_offset, _, _ in _iter_bodies(path, chunk_bytes, 0):
        _decode(path, body, body_offset)
        if not body.strip(_WS_B):
            continue  # no delimiter and no text: one empty segment
        segments = body.count(_DELIM) + 1
        empty = len(_EMPTY_BETWEEN.findall(body))
        empty += body.lstrip(_WS_B).startswith(_DELIM)  # nothing before the first delimiter
        empty += body.rstrip(_WS_B).endswith(_DELIM)  # nothing after the last one
        n += segments - empty
    return n


def iter_stories(path: str | os.PathLike, limit: int = 0) -> Iterator[str]:
    """Every story of the dataset in file order (the first `limit` if limit > 0)."""
    n = 0
    for stories, _ in iter_story_chunks(path):
        for story in stories:
            yield story
            n += 1
            if limit and n >= limit:
                return


def check_dataset(path: Path) -> None:
    """One-line errors for a missing or empty dataset file."""
    fix = "run `tinystories generate` (or `tinystories import`) to create it"
    if not path.exists():
        raise UserError(f"{path}: dataset file not found; {fix}")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: dataset file is empty; {fix}")


# --- building, saving and loading ----------------------------------------------------------


def new_tokenizer():
    """An untrained GPT-2 style byte-level BPE: no prefix space, so decode(encode(t)) == t."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # Offsets only; it adds no tokens (eos is appended by the prepare stage, not on every encode,
    # so prompts given to the model at generation time are not terminated by accident).
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


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


def wrap_fast(tok):
    """A transformers `PreTrainedTokenizerFast` around a `tokenizers.Tokenizer`."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS,
        bos_token=EOS,
        unk_token=EOS,
        pad_token=EOS,
        add_prefix_space=False,
        clean_up_tokenization_spaces=False,
        model_max_length=1 << 30,
    )


def save_tokenizer(tok, directory: str | os.PathLike) -> None:
    """Write the HF tokenizer files into `directory`, replacing it as a whole.

    The files are written to a fresh sibling directory which is then swapped in, so readers
    never see a mix of an old tokenizer.json and a new tokenizer_config.json.
    """
    import json

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent))
    old = None
    try:
        fast = wrap_fast(tok)
        fast.save_pretrained(str(tmp))
        # transformers 5 writes its internal class name; the public alias loads in 4.x and 5.x alike.
        config_path = tmp / "tokenizer_config.json"
        tok_config = json.loads(config_path.read_text(encoding="utf-8"))
        tok_config["tokenizer_class"] = "PreTrainedTokenizerFast"
        config_path.write_text(json.dumps(tok_config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        # transformers 5 no longer writes special_tokens_map.json; older loaders and tools read it.
        specials = {"bos_token": EOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
        (tmp / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n", encoding="utf-8")
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old.{os.getpid()}")
            os.replace(directory, old)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not directory.exists():
            os.replace(old, directory)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _tokenizer_dir(rundir_or_path) -> Path:
    p = Path(rundir_or_path.root if isinstance(rundir_or_path, RunDir) else rundir_or_path)
    if p.is_file():
        return p.parent
    if (p / "tokenizer.json").exists():
        return p
    return p / TOKENIZER_DIR


def load_tokenizer(rundir_or_path):
    """The trained tokenizer as a `PreTrainedTokenizerFast`.

    Accepts a RunDir, a run directory, a tokenizer directory (or a checkpoint directory
    holding the copied tokenizer files) or the path of tokenizer.json itself.
    """
    from transformers import PreTrainedTokenizerFast

    d = _tokenizer_dir(rundir_or_path)
    if not (d / "tokenizer.json").exists():
        raise UserError(f"{d / 'tokenizer.json'}: tokenizer not found; run `tinystories tokenizer --run-dir RUN` first")
    if (d / "tokenizer_config.json").exists():
        return PreTrainedTokenizerFast.from_pretrained(str(d))
    return wrap_fast(load_raw_tokenizer(d))


def load_raw_tokenizer(rundir_or_path):
    """The bare `tokenizers.Tokenizer` (fast batch encoding without the transformers layer)."""
    from tokenizers import Tokenizer

    d = _tokenizer_dir(rundir_or_path)
    path = d / "tokenizer.json"
    if not path.exists():
        raise UserError(f"{path}: tokenizer not found; run `tinystories tokenizer --run-dir RUN` first")
    return Tokenizer.from_file(str(path))


def tokenizer_files(rundir_or_path) -> list[Path]:
    """The files a checkpoint directory needs so `AutoTokenizer.from_pretrained` can load it."""
    d = _tokenizer_dir(rundir_or_path)
    return sorted(p for p in d.iterdir() if p.is_file() and not p.name.startswith("."))


def bytes_per_token(tok, stories: list[str]) -> float:
    if not stories:
        return 0.0
    encs = tok.encode_batch_fast(stories, add_special_tokens=False)
    n_tokens = sum(len(e.ids) for e in encs)
    n_bytes = sum(len(s.encode("utf-8")) for s in stories)
    return n_bytes / max(1, n_tokens)


# --- the stage -----------------------------------------------------------------------------


def run(cfg, rundir: RunDir, force: bool = False) -> dict:
    from tinystories.progress import progress_bar

    c: Config = cfg.tokenizer
    path = rundir.path(DATASET)
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
