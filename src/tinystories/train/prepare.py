"""Tokenize every story into uint16 train/val token files (data/train.bin, data/val.bin).

    tinystories prepare --run-dir runs/quickstart [--set prepare.val_fraction=0.05]

Streams data/tinystories_dataset.txt in chunks (memory stays flat on a multi-GB file),
encodes the stories with the trained tokenizer (tokenizers' Rust encoder on all cores),
appends the `<|endoftext|>` id after every story, and splits train/validation by story:
exactly round(val_fraction * stories) stories, at least one, chosen with the stage's seed.

A correct run writes
  data/train.bin, data/val.bin  uint16 token ids, np.memmap-readable, every story of the
                                dataset exactly once across the two, each followed by eos;
  data/meta.json                vocab_size, eos_id, dtype and per split: tokens, stories and
                                UTF-8 bytes of story text (eos and delimiters not counted),
                                so bits/byte = nats/token * tokens / bytes / ln 2.
  data/val_stories.json         the keys of the validation stories (tinystories.train.heldout),
                                so sft holds out the very same stories.
meta.json is written last. A killed run keeps its partial files under hidden names and
resumes at the last finished chunk when rerun with the same tokenizer, dataset and config.
The pretrain stage reads the bins as np.memmap and cuts its sequences at load time.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from tinystories.errors import UserError
from tinystories.io.layout import EOS, META, STORY_FILE, TOKENIZER_JSON, TRAIN_BIN, UINT16_VOCAB, VAL_BIN, VAL_STORIES
from tinystories.io.rundir import RunDir, read_json, sha256_path, write_json
from tinystories.train.heldout import story_key, write_val_stories

NAME = "prepare"
SECTION = "prepare"
USES: tuple[str, ...] = ("tokenizer",)

SPLITS = ("train", "val")
DTYPE = "uint16"
# Stories are encoded in groups joined by <|endoftext|>: the special token splits the text
# before pre-tokenization, so a group encodes to exactly the stories' ids with eos between
# them, while Python touches one id list per group instead of one per story (that per-story
# overhead cost more than the encoding itself). Groups of a split never mix with the other.
# 8 measured cheapest in CPU: 2 keeps most per-item cost, 32-128 cost more inside the encoder.
GROUP_STORIES = 8
# A line of the partial validation-keys file: a story_key (16 hex digits) and a newline. Fixed
# width, so a resumed run truncates it back to the stories its state vouches for, like the bins.
KEY_LINE = 17


@dataclass
class Config:
    val_fraction: float = 0.05  # share of stories held out for validation (split by story, seeded)
    chunk_mb: float = 4.0  # MB of text read and encoded per step; peak memory is ~30x this (tokenizers' Encoding objects)

    def check(self) -> list[str]:
        problems = []
        if not 0.0 < self.val_fraction < 1.0:
            problems.append(f"prepare.val_fraction: {self.val_fraction} must be between 0 and 1 (e.g. 0.05)")
        if self.chunk_mb < 0.001:
            problems.append(f"prepare.chunk_mb: {self.chunk_mb} must be at least 0.001 (4 is a good size)")
        return problems


def inputs(cfg) -> list[str]:
    return [STORY_FILE, TOKENIZER_JSON]


def outputs(cfg) -> list[str]:
    return [TRAIN_BIN, VAL_BIN, VAL_STORIES, META]


def _ensure_parallel_tokenizers() -> None:
    # tokenizers encodes a batch on one core when TOKENIZERS_PARALLELISM is false (some
    # environments set it to silence fork warnings); this stage wants every core.
    if os.environ.get("TOKENIZERS_PARALLELISM", "").lower() not in ("", "1", "true", "yes", "on"):
        os.environ["TOKENIZERS_PARALLELISM"] = "true"


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def run(cfg, rundir: RunDir, force: bool = False) -> dict:
    import numpy as np

    from tinystories.pipeline.ids import derive_seed
    from tinystories.progress import progress_bar
    from tinystories.text.storyfile import check_dataset, count_stories, iter_story_chunks
    from tinystories.train.bpe import load_raw_tokenizer

    c: Config = cfg.prepare
    seed = derive_seed(cfg.seed, NAME)
    dataset = rundir.path(STORY_FILE)
    check_dataset(dataset)
    tok = load_raw_tokenizer(rundir)
    eos_id = tok.token_to_id(EOS)
    vocab_size = tok.get_vocab_size()
    if eos_id is None:
        raise UserError(f"{rundir.path(TOKENIZER_JSON)}: has no {EOS} token; rerun `tinystories tokenizer --run-dir {rundir.root} --force`")
    if vocab_size > UINT16_VOCAB:
        raise UserError(f"{rundir.path(TOKENIZER_JSON)}: vocabulary of {vocab_size} does not fit uint16; retrain with --set tokenizer.vocab_size={UINT16_VOCAB} or less")
    _ensure_parallel_tokenizers()
    chunk_bytes = max(1024, int(c.chunk_mb * (1 << 20)))

    # Pass 1 (counting delimiters, ~1 s/GB): the story count, so the split holds an exact
    # number of validation stories however the file is chunked; it also checks the UTF-8.
    n_stories = count_stories(dataset, chunk_bytes)
    if n_stories == 0:
        raise UserError(f"{dataset}: no stories found (expected texts separated by {EOS}); regenerate or re-import the dataset")
    n_val = max(1, round(n_stories * c.val_fraction))
    if n_val >= n_stories:
        raise UserError(
            f"{dataset}: {n_stories} stories cannot be split into train and validation with prepare.val_fraction={c.val_fraction}; "
            "add stories or lower prepare.val_fraction"
        )
    is_val = np.zeros(n_stories, dtype=bool)
    is_val[np.random.default_rng(seed).choice(n_stories, size=n_val, replace=False)] = True

    stat = dataset.stat()
    identity = {
        "dataset_size": stat.st_size,
        "dataset_mtime_ns": stat.st_mtime_ns,
        "tokenizer_sha256": sha256_path(rundir.path(TOKENIZER_JSON)),
        "seed": seed,
        "val_fraction": c.val_fraction,
        "stories": n_stories,
        "group": GROUP_STORIES,
    }
    final = {"train": rundir.path(TRAIN_BIN), "val": rundir.path(VAL_BIN)}
    partial = {s: p.with_name(f".{p.name}.partial") for s, p in final.items()}
    keys_partial = rundir.path(VAL_STORIES).with_name(f".{Path(VAL_STORIES).stem}.partial")
    state_path = rundir.path("data/.prepare.state.json")
    state = _resume_state(state_path, identity, partial, keys_partial)
    if state is None:
        state = {"identity": identity, "offset": 0, "story_index": 0}
        for s in SPLITS:
            state[s] = {"tokens": 0, "stories": 0, "bytes": 0}
        for p in [*partial.values(), keys_partial]:
            p.unlink(missing_ok=True)
            p.touch()
    resumed_from = state["offset"]
    log = logging.getLogger("tinystories.train.prepare")
    log.info("%d stories, %d for validation (seed %d); %s", n_stories, n_val, seed, f"resuming at byte {resumed_from}" if resumed_from else "starting")

    def chunks() -> Iterator[tuple[dict, int, int]]:
        # Reading, splitting and grouping run in a helper thread (see _prefetch) while the
        # main thread waits in the encoder, which releases the GIL.
        i = state["story_index"]
        for stories, end in iter_story_chunks(dataset, chunk_bytes, start=state["offset"]):
            mask = is_val[i : i + len(stories)]
            work = {}
            for s, want in (("train", False), ("val", True)):
                chosen = [story for story, v in zip(stories, mask) if v == want]
                groups = [EOS.join(chosen[k : k + GROUP_STORIES]) + EOS for k in range(0, len(chosen), GROUP_STORIES)]
                keys = [story_key(story) for story in chosen] if want else []
                work[s] = (groups, len(chosen), sum(len(story.encode("utf-8")) for story in chosen), keys)
            i += len(stories)
            yield work, i, end

    t0 = time.monotonic()
    encoded_bytes = 0
    files = {s: open(partial[s], "r+b") for s in SPLITS}
    files["keys"] = open(keys_partial, "r+b")
    try:
        for s in SPLITS:
            files[s].truncate(state[s]["tokens"] * 2)
            files[s].seek(state[s]["tokens"] * 2)
        files["keys"].truncate(state["val"]["stories"] * KEY_LINE)
        files["keys"].seek(state["val"]["stories"] * KEY_LINE)
        with progress_bar("prepare: tokenizing", total=max(1, math.ceil(stat.st_size / 1e6)), unit="MB") as bar, contextlib.closing(
            _prefetch(chunks())
        ) as work_items:
            bar.set(state["offset"] / 1e6)
            for work, story_index, end in work_items:
                for s, (groups, n_chosen, n_bytes, keys) in work.items():
                    if not groups:
                        continue
                    files["keys"].write("".join(f"{k}\n" for k in keys).encode("ascii"))
                    encs = tok.encode_batch_fast(groups, add_special_tokens=False)
                    ids = np.concatenate([np.array(e.ids, dtype=np.uint16) for e in encs])
                    files[s].write(ids.tobytes())
                    st = state[s]
                    st["tokens"] += int(ids.size)
                    st["stories"] += n_chosen
                    st["bytes"] += n_bytes
                    encoded_bytes += n_bytes
                state["story_index"] = story_index
                state["offset"] = end
                # Data first, then the state that vouches for it: a kill between the two only
                # means a chunk is encoded again (the files are truncated back on resume).
                for f in files.values():
                    f.flush()
                    os.fsync(f.fileno())
                write_json(state_path, state)
                bar.set(end / 1e6, stories=story_index)
    finally:
        for f in files.values():
            f.close()
    wall = time.monotonic() - t0

    def discard() -> None:
        for p in [*partial.values(), keys_partial]:
            p.unlink(missing_ok=True)
        state_path.unlink(missing_ok=True)

    if state["story_index"] != n_stories:  # the file changed while we read it
        discard()
        raise UserError(f"{dataset}: changed while it was being tokenized; rerun `tinystories prepare` when nothing writes to it")
    # Whether a split is long enough for the model's context is pretrain's check (its load_data):
    # the context is a pretrain setting, and the bins do not depend on it.

    # meta.json goes last and an old one goes first, so a meta.json never describes other bins.
    rundir.path(META).unlink(missing_ok=True)
    for s in SPLITS:
        _fsync(partial[s])
        os.replace(partial[s], final[s])
    write_val_stories(rundir.path(VAL_STORIES), keys_partial.read_text(encoding="ascii").split())
    keys_partial.unlink()
    meta = {
        "vocab_size": vocab_size,
        "eos_id": eos_id,
        "dtype": DTYPE,
        "seed": seed,
        "val_fraction": c.val_fraction,
        "tokenizer_sha256": identity["tokenizer_sha256"],
        "bytes_note": "bytes = UTF-8 bytes of the story texts, eos not counted; bits/byte = nats/token * tokens / bytes / ln 2",
    }
    for s in SPLITS:
        st = state[s]
        meta[s] = {**st, "tokens_per_byte": round(st["tokens"] / max(1, st["bytes"]), 6)}
    write_json(rundir.path(META), meta)
    state_path.unlink(missing_ok=True)
    log.info("train %s, val %s", meta["train"], meta["val"])

    total_tokens = state["train"]["tokens"] + state["val"]["tokens"]
    return {
        "stories": n_stories,
        "train_stories": state["train"]["stories"],
        "val_stories": state["val"]["stories"],
        "train_tokens": state["train"]["tokens"],
        "val_tokens": state["val"]["tokens"],
        "tokens_per_story": round(total_tokens / n_stories, 2),
        "bytes_per_token": round((state["train"]["bytes"] + state["val"]["bytes"]) / max(1, total_tokens), 4),
        "resumed_from_byte": resumed_from,
        "wall_s": round(wall, 3),
        "mb_s": round(encoded_bytes / 1e6 / wall, 3) if wall > 0 else None,
    }


class _Failed:
    def __init__(self, exc: BaseException):
        self.exc = exc


def _prefetch(items: Iterator, depth: int = 1) -> Iterator:
    """Yield from `items`, which a background thread runs up to `depth` items ahead.

    Why a thread: the Python part of preparing a chunk (split, group, count bytes) would
    otherwise leave a core idle while the Rust encoder waits for it; overlapped, both cores
    stay busy. Errors in the thread are raised here; closing the generator stops the thread.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def worker() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(done)
        except BaseException as exc:  # handed to the consumer, which raises it
            put(_Failed(exc))

    thread = threading.Thread(target=worker, name="prepare-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, _Failed):
                raise item.exc
            yield item
    finally:
        stop.set()
        thread.join(timeout=10)


def _resume_state(state_path: Path, identity: dict, partial: dict, keys_partial: Path) -> dict | None:
    """The saved progress of an interrupted run on the same inputs, or None to start over."""
    if not state_path.exists():
        return None
    try:
        state = read_json(state_path)
    except UserError:
        return None
    if state.get("identity") != identity:
        return None
    for s in SPLITS:
        p = partial[s]
        if not p.exists() or p.stat().st_size < state[s]["tokens"] * 2:
            return None
    if not keys_partial.exists() or keys_partial.stat().st_size < state["val"]["stories"] * KEY_LINE:
        return None
    return state


# --- reading what prepare wrote --------------------------------------------------------------


def read_meta(rundir_or_path) -> dict:
    """data/meta.json of a run (a RunDir, a run directory or the path of meta.json)."""
    p = Path(rundir_or_path.root if isinstance(rundir_or_path, RunDir) else rundir_or_path)
    path = p if p.suffix == ".json" else p / META
    if not path.exists():
        raise UserError(f"{path}: not found; run `tinystories prepare --run-dir {p}` first")
    return read_json(path)
