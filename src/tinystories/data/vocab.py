"""Choose the story vocabulary: ~1,500 words a 3-4 year old knows (shipped), or your own list.

    tinystories vocab --run-dir runs/quickstart
    tinystories vocab --run-dir runs/mine --set vocab.path=my_words.json --set vocab.max_per_category=300

Writes data/vocabulary.json: {"nouns": [...], "verbs": [...], "adjectives": [...], "meta": {...}},
words lowercase and sorted. The generate stage draws one noun, one verb and one adjective
from it for every story (as the TinyStories paper did) and checks with `word_forms` that
the story used them; dataset statistics measure how much of the text the list covers.
The shipped list (src/tinystories/data/vocabulary.json) is made by
scripts/build_vocabulary.py from hand-curated candidates checked against wordfreq and
lemminflect; see that script for how and why. A correct run writes the file and reports
the number of words per category (640 nouns, 480 verbs, 415 adjectives by default).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from tinystories.errors import UserError
from tinystories.io.rundir import RunDir, write_json

NAME = "vocab"
SECTION = "vocab"
USES: tuple[str, ...] = ()

OUTPUT = "data/vocabulary.json"
CATEGORIES = ("nouns", "verbs", "adjectives")
SHAPE_HINT = 'a vocabulary file is {"nouns": [...], "verbs": [...], "adjectives": [...]} with optional "meta": {...}'
# One word, lowercase ASCII letters, inner hyphens or apostrophes allowed ("jack-o-lantern").
_WORD = re.compile(r"[a-z]+(?:[-'][a-z]+)*")

_UPOS = {
    "noun": "NOUN", "nouns": "NOUN", "n": "NOUN",
    "verb": "VERB", "verbs": "VERB", "v": "VERB",
    "adjective": "ADJ", "adjectives": "ADJ", "adj": "ADJ", "a": "ADJ",
}  # fmt: skip


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


def shipped_path() -> Path:
    return Path(__file__).resolve().parent.parent / "resources" / "vocabulary.json"


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
    return [OUTPUT]


# --- reading and checking ------------------------------------------------------------------


def _entry_problem(cat: str, i: int, word) -> str | None:
    where = f"{cat}[{i}]"
    if not isinstance(word, str):
        return f"{where} is {json.dumps(word)}, not a string; write words as \"text\""
    if _WORD.fullmatch(word):
        return None
    if not word.strip():
        return f"{where} is an empty string; remove it"
    if any(c.isspace() for c in word):
        return f"{where} {word!r} has spaces; use single words (e.g. 'teddy', not 'teddy bear')"
    if any(c.isupper() for c in word):
        return f"{where} {word!r} has capitals; words are lowercase ({word.lower()!r}) and proper nouns do not belong"
    if any(c.isdigit() for c in word):
        return f"{where} {word!r} has digits; use words only"
    return f"{where} {word!r} has characters other than a-z, inner hyphens or apostrophes"


def validate(data, where: str) -> dict:
    """Check the shape of a vocabulary; raise one UserError listing what is wrong, naming `where`."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a JSON object, got a {type(data).__name__}; {SHAPE_HINT}")
    problems = []
    for key in data:
        if key not in (*CATEGORIES, "meta"):
            problems.append(f"unknown key {key!r} (expected nouns, verbs, adjectives, meta)")
    for cat in CATEGORIES:
        if cat not in data:
            problems.append(f"missing {cat!r}")
            continue
        words = data[cat]
        if not isinstance(words, list):
            problems.append(f"{cat!r} is a {type(words).__name__}, not a list of words")
            continue
        if not words:
            problems.append(f"{cat!r} is empty; every category needs at least one word")
            continue
        seen: dict[str, int] = {}
        for i, word in enumerate(words):
            problem = _entry_problem(cat, i, word)
            if problem:
                problems.append(problem)
            elif word in seen:
                problems.append(f"{cat} has {word!r} twice (entries {seen[word]} and {i}); keep one")
            else:
                seen[word] = i
    if "meta" in data and not isinstance(data["meta"], dict):
        problems.append(f"'meta' is a {type(data['meta']).__name__}, not an object")
    if problems:
        shown = "; ".join(problems[:3])
        more = f"; and {len(problems) - 3} more problem(s)" if len(problems) > 3 else ""
        hint = f" ({SHAPE_HINT})" if any(p.startswith(("missing", "unknown key", "'")) for p in problems[:3]) else ""
        raise UserError(f"{where}: {shown}{more}{hint}")
    return {**{cat: list(data[cat]) for cat in CATEGORIES}, "meta": dict(data.get("meta") or {})}


def load_vocabulary(path: str | Path | None = None) -> dict:
    """Read and check a vocabulary file (default: the shipped list).

    Returns {"nouns": [...], "verbs": [...], "adjectives": [...], "meta": {...}}; bad input
    raises one UserError naming the file and the problem.
    """
    path = Path(path) if path else shipped_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: vocabulary file not found; set vocab.path to an existing JSON file, or to \"\" for the shipped list") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read the vocabulary file ({exc}); {SHAPE_HINT}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg}); {SHAPE_HINT}") from None
    return validate(data, str(path))


# --- word forms ------------------------------------------------------------------------------


def _upos(pos: str) -> str:
    try:
        return _UPOS[pos.lower()]
    except (KeyError, AttributeError):
        raise ValueError(f"pos must be noun, verb or adjective, got {pos!r}") from None


@lru_cache(maxsize=None)
def _forms(word: str, upos: str) -> frozenset[str]:
    from lemminflect import getAllInflections, getAllInflectionsOOV

    table = getAllInflections(word, upos)
    # Words outside lemminflect's tables (a user's "firetruck") still get regular plurals and
    # verb endings from its rules; adjectives do not, since rules would invent "beautifuller".
    if not table and upos in ("NOUN", "VERB"):
        table = getAllInflectionsOOV(word, upos)
    forms = {word}
    for variants in table.values():
        forms.update(v.lower() for v in variants)
    return frozenset(forms)


def word_forms(word: str, pos: str) -> frozenset[str]:
    """The word and its inflections as `pos` (noun, verb or adjective), lowercase.

    jump/verb -> {jump, jumps, jumped, jumping}; mouse/noun -> {mouse, mice};
    happy/adjective -> {happy, happier, happiest}. Cached: callers ask per story.
    """
    return _forms(word.strip().lower(), _upos(pos))


def vocabulary_forms(vocab: dict) -> frozenset[str]:
    """Every inflected form of every word of a vocabulary: what counts as "in the vocabulary"."""
    out: set[str] = set()
    for cat in CATEGORIES:
        for word in vocab.get(cat, ()):
            out |= word_forms(word, cat)
    return frozenset(out)


# --- the stage -------------------------------------------------------------------------------


def _most_frequent(words: list[str], n: int) -> list[str]:
    from wordfreq import zipf_frequency

    ranked = sorted(words, key=lambda w: (-zipf_frequency(w, "en"), w))
    return ranked[:n]


def run(cfg, rundir: RunDir, force: bool = False) -> dict:
    import logging

    log = logging.getLogger("tinystories.data.vocab")
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
    write_json(rundir.path(OUTPUT), {**out, "meta": meta})
    log.info("vocabulary from %s: %s", meta["source"], counts)
    return {**counts, "shared": len(meta["shared"])}
