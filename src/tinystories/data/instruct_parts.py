"""The parts of an instruction and their checks: Words, Features, Sentence and Summary.

As in the TinyStoriesInstruct data of the paper, an instruction set is a random subset of the
kinds, in random order, rendered one part per line (`Words: jump, ball, happy`). A summary
written by the LLM must be one or two short lines without meta-text (`clean_summary`).
"""

from __future__ import annotations

import hashlib
import random
import re
from typing import Any

from tinystories.llm.base import Reject
from tinystories.text.words import words_used

KINDS = ("words", "sentence", "features", "summary")
LABELS = {"words": "Words", "sentence": "Sentence", "features": "Features", "summary": "Summary"}

# -- the summary validator ----------------------------------------------------------------------

_META_START = re.compile(
    r"^(sure|certainly|of course|okay|ok\b|here is|here's|here are|in this|this is a|as an ai|i can\b|i'm sorry|i am sorry|i cannot|i can't)",
    re.IGNORECASE,
)
_META_WORDS = re.compile(r"\b(story|stories|summary|summaries|summari[sz]e[sd]?)\b", re.IGNORECASE)
_LABEL = re.compile(r"^\s*(summary|in short)\s*:\s*", re.IGNORECASE)


def clean_summary(text: str | None, max_words: int, finish_reason: str | None = None, max_sentences: int = 3) -> str:
    """The summary as one line, or `Reject` with the reason (the client retries with a fresh seed)."""
    if finish_reason == "length":
        raise Reject("truncated: hit summary_max_tokens")
    text = _LABEL.sub("", (text or "").strip()).strip().strip('"“”').strip()
    if not text:
        raise Reject("empty summary")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if len(lines) > 2:
        raise Reject(f"too long: {len(lines)} lines (max 2)")
    one_line = " ".join(lines)
    n_words = len(one_line.split())
    if n_words > max_words:
        raise Reject(f"too long: {n_words} words (max {max_words})")
    n_sentences = len([x for x in _SPLIT.split(one_line) if x.strip()])
    if n_sentences > max_sentences:
        raise Reject(f"too long: {n_sentences} sentences (max {max_sentences})")
    m = _META_START.match(one_line)
    if m:
        raise Reject(f"meta-text: starts with {m.group(0)!r}")
    m = _META_WORDS.search(one_line)
    if m:
        raise Reject(f"meta-text: mentions {m.group(0)!r}")
    return one_line


# -- parts of an instruction ----------------------------------------------------------------

# A sentence ends at . ! or ? (optionally followed by a closing quote) when the next one starts
# with a capital or an opening quote; `"Hi!" said Tom.` therefore stays one sentence, and so
# does `Mr. Bob came.`
_SPLIT = re.compile(r"(?:(?<=[.!?][\"”’'])|(?<=[.!?]))(?<!Mr\.)(?<!Mrs\.)(?<!Ms\.)(?<!Dr\.)(?<!St\.)\s+(?=[\"“A-Z])")


def story_sentences(story: str, min_words: int, max_words: int) -> list[str]:
    """The story's sentences that can stand alone as a Sentence part."""
    out = []
    for sent in _SPLIT.split(" ".join(story.split())):
        sent = sent.strip()
        if not sent or not re.match(r"[\"“A-Z]", sent) or not re.search(r"[.!?][\"”’']?$", sent):
            continue
        if sent.count('"') % 2 or sent.count("“") != sent.count("”"):
            continue  # a quotation cut in half reads as a fragment
        if min_words <= len(sent.split()) <= max_words:
            out.append(sent)
    return out


def contained_words(rec: dict) -> tuple[dict | list, list[str]]:
    """(the story's prompt words that it really contains, in any inflection; the words it lacks).

    A Words part must not ask for a word the story lacks: generate keeps stories that miss a
    word, and such a part would teach the model to ignore its instruction. The story's recorded
    `words_used` is trusted when it covers every word; otherwise it is computed here.
    """
    words = rec.get("words")
    if isinstance(words, str):
        words = [w.strip() for w in words.split(",")]
    if isinstance(words, dict):
        words = {k: str(w) for k, w in words.items() if w}
        keys = list(words)
    elif isinstance(words, (list, tuple)):
        words = [str(w) for w in words if w]
        keys = words
    else:
        return [], []
    used = rec.get("words_used")
    if not (isinstance(used, dict) and all(k in used for k in keys)):
        used = words_used(rec.get("story") or "", words) or {}
    if isinstance(words, dict):
        return {k: w for k, w in words.items() if used.get(k)}, [w for k, w in words.items() if not used.get(k)]
    return [w for w in words if used.get(w)], [w for w in words if not used.get(w)]


def words_text(words: Any) -> str:
    """The prompt words as the paper lists them: verb, noun, adjective (any further keys after)."""
    if isinstance(words, dict):
        order = [k for k in ("verb", "noun", "adjective") if words.get(k)] + [k for k in words if k not in ("verb", "noun", "adjective") and words.get(k)]
        return ", ".join(str(words[k]) for k in order)
    if isinstance(words, (list, tuple)):
        return ", ".join(str(w) for w in words if w)
    return str(words or "").strip()


def features_text(features: Any) -> str:
    if isinstance(features, (list, tuple)):
        return ", ".join(str(f) for f in features if f)
    return str(features or "").strip()


def render(parts: list[tuple[str, str]]) -> str:
    """One part a line: `Words: ...`, `Features: ...`, `Sentence: ...`, `Summary: ...`."""
    return "\n".join(f"{LABELS[kind]}: {value}" for kind, value in parts)


def draw_sets(rng: random.Random, available: list[str], ic) -> list[list[str]]:
    """`sets_per_story` random subsets of the available kinds, each in random order."""
    min_parts = min(ic.min_parts, len(available))
    if ic.min_parts > 0 and not available:
        return []
    sets: list[list[str]] = []
    seen: set[tuple[str, ...]] = set()
    for _ in range(ic.sets_per_story):
        chosen: list[str] = []
        for _try in range(20):  # look for a combination this story does not have yet
            chosen = [k for k in available if rng.random() < ic.probabilities.get(k, 0.5)]
            missing = [k for k in available if k not in chosen]
            rng.shuffle(missing)
            chosen += missing[: max(0, min_parts - len(chosen))]
            rng.shuffle(chosen)
            if tuple(sorted(chosen)) not in seen:
                break
        seen.add(tuple(sorted(chosen)))
        sets.append(chosen)
    return sets


def story_seed(seed: int, story_id: Any) -> int:
    """The seed of one story's draws: fixed per (stage seed, story id), so a resumed run draws the
    same parts for a story as an uninterrupted one (and asks the LLM the same cached question)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{story_id}".encode()).digest()[:4], "little") & 0x7FFFFFFF


class Tally:
    def __init__(self) -> None:
        self.sets = 0
        self.stories = 0
        self.combinations: dict[str, int] = {}
        self.kinds: dict[str, int] = {}
        self.parts_per_set: dict[str, int] = {}
        self.summary_words = 0
        self.summaries = 0

    def add(self, rec: dict) -> None:
        self.sets += 1
        parts = rec["parts"]
        combo = "+".join(LABELS[k] for k in sorted(parts)) or "(story only)"
        self.combinations[combo] = self.combinations.get(combo, 0) + 1
        for k in parts:
            self.kinds[k] = self.kinds.get(k, 0) + 1
        n = str(len(parts))
        self.parts_per_set[n] = self.parts_per_set.get(n, 0) + 1
        for line in rec["instruction"].splitlines():
            if line.startswith("Summary: "):
                self.summaries += 1
                self.summary_words += len(line.split()) - 1

    def as_dict(self) -> dict:
        return {
            "sets": self.sets,
            "stories_with_sets": self.stories,
            "combinations": dict(sorted(self.combinations.items(), key=lambda kv: (-kv[1], kv[0]))),
            "kinds": dict(sorted(self.kinds.items())),
            "parts_per_set": dict(sorted(self.parts_per_set.items())),
        }
