"""Text known to be good, for the judge's discrimination check: held-out stories of the run's dataset.

The judge is trusted only as far as it grades a good story above the same story damaged
(eval/damage.py). A small model's completions are word salad already, so no judge could tell
them from their damaged versions; the originals are therefore the run's own held-out stories,
each cut at a sentence boundary into a beginning and its true continuation, and graded with
the same prompt as a model's completion of that beginning.

Where they come from (`judge.originals`):
- heldout: the validation stories prepare chose (data/val_stories.json), never trained on;
- sample: a seeded sample of data/stories.jsonl (a run dir without prepare, e.g. imported data);
- auto: heldout when data/val_stories.json exists, else sample, else none (no stories at all).
The source used is recorded in eval/scores.json.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Callable, Iterable

from tinystories.errors import UserError
from tinystories.eval.damage import cut_at_sentence
from tinystories.io.layout import STORIES, VAL_STORIES
from tinystories.io.rundir import RunDir, read_jsonl
from tinystories.train.heldout import read_val_stories, story_key

ORIGIN_MODEL = "heldout"  # the `model` (and `kind`) of a held-out original in judgments.jsonl
SOURCES = ("auto", "heldout", "sample")


def story_text(rec: dict) -> str:
    """A story record's text: `story` in data/stories.jsonl, `text` in older or hand-made files."""
    return rec.get("story") or rec.get("text") or ""


def reservoir(items: Iterable[dict], keep: Callable[[dict], bool], k: int, rng: random.Random) -> list[dict]:
    """A uniform sample of `k` of the items `keep` accepts, in one pass (the story file can be GBs)."""
    out: list[dict] = []
    seen = 0
    for item in items:
        if not keep(item):
            continue
        seen += 1
        if len(out) < k:
            out.append(item)
        else:
            j = rng.randrange(seen)
            if j < k:
                out[j] = item
    return out


def as_original(story: str) -> dict | None:
    """A held-out story as a completion record: its first half is the prompt, its true
    continuation the text; None for a story that cannot be cut (one sentence)."""
    cut = cut_at_sentence(story)
    if cut is None:
        return None
    beginning, continuation = cut
    key = story_key(story)
    return {"model": ORIGIN_MODEL, "kind": ORIGIN_MODEL, "task": "continue", "prompt_id": key, "sample_id": 0, "prompt": beginning, "text": continuation}


def choose_source(rundir: RunDir, wanted: str) -> str:
    """heldout | sample | none: what `judge.originals` means in this run dir."""
    if wanted != "auto":
        return wanted
    if rundir.path(VAL_STORIES).exists():
        return "heldout"
    return "sample" if rundir.path(STORIES).exists() else "none"


def heldout_originals(rundir: RunDir, wanted: str, n: int, seed: int) -> tuple[list[dict], dict]:
    """Up to `n` held-out originals (ordered by key) and what they were drawn from."""
    source = choose_source(rundir, wanted)
    info = {"source": source, "stories": 0, "file": None}
    if source == "none" or n == 0:
        return [], info
    keys = read_val_stories(rundir.path(VAL_STORIES)) if source == "heldout" else None
    if source == "heldout" and keys is None:
        raise UserError(f"judge.originals: heldout needs {rundir.path(VAL_STORIES)}; run `tinystories prepare --run-dir {rundir.root}`, or set judge.originals: sample")
    path: Path = rundir.path(STORIES)
    if not path.exists():
        raise UserError(f"judge.originals: {source} needs {path}; generate or import the stories, or set judge.originals: auto")
    taken: set[str] = set()

    def keep(rec: dict) -> bool:
        text = story_text(rec)
        key = story_key(text)
        if key in taken or (keys is not None and key not in keys) or cut_at_sentence(text) is None:
            return False
        taken.add(key)  # a story written twice is one original
        return True

    chosen = reservoir(read_jsonl(path), keep, n, random.Random(f"{seed}|originals"))
    originals = sorted((as_original(story_text(rec)) for rec in chosen), key=lambda r: r["prompt_id"])
    info.update(stories=len(originals), file=VAL_STORIES if source == "heldout" else STORIES)
    return originals, info
