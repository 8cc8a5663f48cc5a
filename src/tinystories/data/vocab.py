"""Choose the story vocabulary: ~1,500 words a 3-4 year old knows (shipped), or your own list.

    tinystories vocab --run-dir runs/quickstart
    tinystories vocab --run-dir runs/mine --set vocab.path=my_words.json --set vocab.max_per_category=300

Writes data/vocabulary.json: {"nouns": [...], "verbs": [...], "adjectives": [...], "meta": {...}},
words lowercase and sorted. The generate stage draws one noun, one verb and one adjective
from it for every story (as the TinyStories paper did) and checks with `text.words.word_forms`
that the story used them; dataset statistics measure how much of the text the list covers.
The shipped list (src/tinystories/resources/vocabulary.json, read by text/vocabulary.py) is made by
scripts/build_vocabulary.py from hand-curated candidates checked against wordfreq and
lemminflect; see that script for how and why. A correct run writes the file and reports
the number of words per category (640 nouns, 480 verbs, 415 adjectives by default).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from tinystories.io.layout import VOCABULARY
from tinystories.io.rundir import RunDir, write_json
from tinystories.text.vocabulary import CATEGORIES, load_vocabulary, shipped_path

NAME = "vocab"
SECTION = "vocab"
USES: tuple[str, ...] = ()

log = logging.getLogger("tinystories.data.vocab")


@dataclass
class Config:
    path: str = ""  # JSON file shaped like the shipped list ({"nouns": [...], "verbs": [...], "adjectives": [...]}), relative to the current directory; empty = the shipped list
    max_per_category: int = 0  # keep only the N most frequent words (wordfreq) of each category; 0 = keep all

    def check(self) -> list[str]:
        problems = []
        if self.max_per_category < 0:
            problems.append(f"max_per_category: {self.max_per_category} is negative; use 0 (all words) or a positive count")
        if self.path and not self.path.strip():
            problems.append("path: is blank; leave it empty for the shipped list or name a JSON file")
        return problems


def source_path(cfg) -> Path:
    path = cfg.vocab.path
    return Path(path).expanduser().resolve() if path else shipped_path()


def inputs(cfg) -> list[str]:
    # The source list lives outside the run directory. Naming it by absolute path (RunDir.path
    # leaves absolute paths alone) puts its sha256 in the manifest, so editing the file reruns
    # the stage instead of silently keeping the old words. A missing file is left out here so
    # that run() reports it with the option to fix, not as a missing stage output.
    src = source_path(cfg)
    return [str(src)] if src.exists() else []


def outputs(cfg) -> list[str]:
    return [VOCABULARY]


# --- the stage -------------------------------------------------------------------------------


def _most_frequent(words: list[str], n: int) -> list[str]:
    from wordfreq import zipf_frequency

    ranked = sorted(words, key=lambda w: (-zipf_frequency(w, "en"), w))
    return ranked[:n]


def run(cfg, rundir: RunDir, force: bool = False) -> dict:
    src = source_path(cfg)
    vocab = load_vocabulary(src)
    cap = cfg.vocab.max_per_category
    out = {}
    for cat in CATEGORIES:
        words = vocab[cat]
        if cap and len(words) > cap:
            words = _most_frequent(words, cap)
        out[cat] = sorted(words)
    members: dict[str, list[str]] = {}
    for cat in CATEGORIES:
        for w in out[cat]:
            members.setdefault(w, []).append(cat)
    counts = {cat: len(out[cat]) for cat in CATEGORIES}
    counts["total"] = sum(counts.values())
    counts["distinct"] = len(members)
    meta = dict(vocab["meta"])
    meta.update(
        source="shipped" if src == shipped_path() else str(src),
        source_sha256=hashlib.sha256(src.read_bytes()).hexdigest(),
        max_per_category=cap,
        counts=counts,
        shared={w: cats for w, cats in sorted(members.items()) if len(cats) > 1},
    )
    write_json(rundir.path(VOCABULARY), {**out, "meta": meta})
    log.info("vocabulary from %s: %s", meta["source"], counts)
    return {**counts, "shared": len(meta["shared"])}
