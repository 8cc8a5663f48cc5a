"""Throughput of the prepare stage against bare `tokenizers` encode_batch on the same text.

    .venv/bin/python benchmarks/bench_prepare.py [--mb 64] [--keep DIR]

Writes ~50 MB of deterministic synthetic simple-English stories joined by `<|endoftext|>`,
trains a 10k byte-level BPE on a sample with the real tokenizer stage, then times
  - prepare: the real stage code path through the CLI executor (read, split, encode,
    train/val split, uint16 bins, meta.json, atomic renames), and
  - tokenizers: `Tokenizer.encode_batch` over the same stories already in memory, in the
    same batches, doing nothing with the result: the ceiling for any encoder in Python.
Each side runs --repeats times, alternating, and its fastest run counts (the machine may be
shared). Figures are MB of story text per second. The last line is one JSON object:
{"prepare_mb_s": ..., "tokenizers_mb_s": ..., "prepare_vs_tokenizers": ...}; target >= 0.8.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TINYSTORIES_NO_PROGRESS", "1")

NAMES = ["Tom", "Lily", "Max", "Mia", "Ben", "Sue", "Tim", "Anna", "Sam", "Lucy", "Jack", "Zoe"]
ANIMALS = ["cat", "dog", "bird", "frog", "bunny", "duck", "bear", "fish", "mouse", "puppy"]
THINGS = ["ball", "kite", "box", "hat", "car", "cake", "book", "toy", "boat", "flower", "rock", "truck"]
ADJS = ["big", "small", "red", "blue", "happy", "sad", "shiny", "soft", "funny", "little", "old", "new"]
PLACES = ["park", "garden", "house", "forest", "beach", "school", "farm", "lake", "shop", "hill"]
VERBS = ["played", "ran", "jumped", "danced", "sang", "laughed", "looked", "walked", "smiled", "waited"]
FEELINGS = ["happy", "sad", "scared", "proud", "excited", "tired", "angry", "surprised"]


def word_lists() -> dict[str, list[str]]:
    """The shipped child vocabulary (~1,500 nouns, verbs, adjectives), so the text has the
    spread of words real stories have; the small lists above if it is not there."""
    path = Path(__file__).resolve().parents[1] / "src" / "tinystories" / "resources" / "vocabulary.json"
    words = {"nouns": THINGS + ANIMALS, "verbs": ["play", "jump", "look", "walk", "smile"], "adjectives": ADJS}
    if path.exists():
        data = json.loads(path.read_text(encoding="utf-8"))
        words.update({k: data[k] for k in words if data.get(k)})
    return words


def story(r: random.Random, w: dict[str, list[str]]) -> str:
    a, b = r.sample(NAMES, 2)
    animal, thing, adj, place = r.choice(ANIMALS), r.choice(w["nouns"]), r.choice(w["adjectives"]), r.choice(PLACES)
    lines = [f"Once upon a time, there was a {r.choice(w['adjectives'])} {animal} named {a}."]
    for _ in range(r.randint(3, 9)):
        noun, verb, adj2 = r.choice(w["nouns"]), r.choice(w["verbs"]), r.choice(w["adjectives"])
        lines.append(
            r.choice(
                [
                    f"{a} {r.choice(VERBS)} in the {place} with {b}.",
                    f'"Look at my {adj} {thing}!" said {a}.',
                    f"{b} felt {r.choice(FEELINGS)} because the {thing} was {adj2}.",
                    f"They wanted to {verb} with the {noun} all day long.",
                    f"One day, {a} found a {adj2} {noun} near the {r.choice(PLACES)}.",
                    f'{b} asked, "Can I {verb} your {thing}, please?"',
                    f"{a} shared the {thing} and they were {r.choice(FEELINGS)} friends.",
                    f"The {adj2} {noun} did not want to {verb}, so {a} helped it.",
                    f'"I can {verb} the {noun}," {b} said with a big smile.',
                ]
            )
        )
    lines.append(f"In the end, {a} and {b} went home and had a {r.choice(w['adjectives'])} dinner.")
    return " ".join(lines)


def write_dataset(path: Path, target_bytes: int, seed: int = 0) -> int:
    r = random.Random(seed)
    words = word_lists()
    written = 0
    n = 0
    with open(path, "w", encoding="utf-8") as fh:
        while written < target_bytes:
            block = "".join(story(r, words) + "\n<|endoftext|>\n" for _ in range(1000))
            fh.write(block)
            written += len(block)
            n += 1000
    return n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=50, help="size of the synthetic dataset in MB")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each side; the fastest counts")
    ap.add_argument("--vocab", type=int, default=10000)
    ap.add_argument("--keep", type=Path, default=None, help="keep the run dir here instead of a temp dir")
    args = ap.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from tinystories.cli import main as cli_main
    from tinystories.train.prepare import read_meta
    from tinystories.train.tokenizer import iter_story_chunks, load_raw_tokenizer

    root = args.keep or Path(tempfile.mkdtemp(prefix="bench_prepare_"))
    try:
        data = root / "data" / "tinystories_dataset.txt"
        data.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        n = write_dataset(data, int(args.mb * 1e6))
        print(f"dataset: {data.stat().st_size / 1e6:.1f} MB, {n} stories, written in {time.monotonic() - t0:.1f}s")

        t0 = time.monotonic()
        rc = cli_main(["tokenizer", "--run-dir", str(root), "--set", f"tokenizer.vocab_size={args.vocab}", "--set", "tokenizer.max_stories=20000"])
        assert rc == 0, rc
        print(f"tokenizer: trained on 20000 stories in {time.monotonic() - t0:.1f}s")

        # The ceiling: the same stories, already split and in memory, through encode_batch.
        tok = load_raw_tokenizer(root)
        chunks = [stories for stories, _ in iter_story_chunks(data)]

        def baseline() -> float:
            t0 = time.monotonic()
            for stories in chunks:
                tok.encode_batch(stories, add_special_tokens=False)
            return time.monotonic() - t0

        def stage() -> float:
            t0 = time.monotonic()
            rc = cli_main(["prepare", "--run-dir", str(root), "--force"])
            assert rc == 0, rc
            return time.monotonic() - t0

        # Alternating, best of `repeats` each: the machine is shared, so the fastest run of
        # each is the least disturbed estimate of what the code can do.
        base_times, prepare_times = [], []
        for _ in range(args.repeats):
            base_times.append(baseline())
            prepare_times.append(stage())
        base_s, prepare_s = min(base_times), min(prepare_times)
        meta = read_meta(root)
        text_mb = (meta["train"]["bytes"] + meta["val"]["bytes"]) / 1e6
        tokens = meta["train"]["tokens"] + meta["val"]["tokens"]
        print(f"runs (s): prepare {[round(t, 2) for t in prepare_times]}  tokenizers {[round(t, 2) for t in base_times]}")

        prepare_mb_s = text_mb / prepare_s
        tokenizers_mb_s = text_mb / base_s
        print(f"prepare:    {prepare_s:.2f}s  {prepare_mb_s:.2f} MB/s  ({tokens} tokens incl. eos, {tokens / prepare_s / 1e6:.2f} Mtok/s)")
        print(f"tokenizers: {base_s:.2f}s  {tokenizers_mb_s:.2f} MB/s  (encode_batch only, {sum(map(len, chunks))} stories)")
        print(
            json.dumps(
                {
                    "prepare_mb_s": round(prepare_mb_s, 3),
                    "tokenizers_mb_s": round(tokenizers_mb_s, 3),
                    "prepare_vs_tokenizers": round(prepare_mb_s / tokenizers_mb_s, 3),
                }
            )
        )
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
