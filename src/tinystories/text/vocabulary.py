"""The story vocabulary file: its shape, its checks and its loading.

A vocabulary is {"nouns": [...], "verbs": [...], "adjectives": [...], "meta": {...}}, words
lowercase. The vocab stage writes one into the run (data/vocabulary.json); generate draws the
prompt words from it and import measures vocabulary coverage against it. They all read it here,
so no stage imports another to get at the file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from tinystories.errors import UserError

CATEGORIES = ("nouns", "verbs", "adjectives")
SHAPE_HINT = 'a vocabulary file is {"nouns": [...], "verbs": [...], "adjectives": [...]} with optional "meta": {...}'
# One word of lowercase letters, inner hyphens or apostrophes allowed ("jack-o-lantern"); letters
# of any alphabet, so that a vocabulary for another language ("niño", "pâte") loads too.
_WORD = re.compile(r"[^\W\d_]+(?:[-'][^\W\d_]+)*")


def shipped_path() -> Path:
    """The vocabulary shipped as package data (built by scripts/build_vocabulary.py)."""
    return Path(__file__).resolve().parent.parent / "resources" / "vocabulary.json"


def _entry_problem(cat: str, i: int, word) -> str | None:
    where = f"{cat}[{i}]"
    if not isinstance(word, str):
        return f"{where} is {json.dumps(word)}, not a string; write words as \"text\""
    if _WORD.fullmatch(word) and not any(c.isupper() for c in word):
        return None
    if not word.strip():
        return f"{where} is an empty string; remove it"
    if any(c.isspace() for c in word):
        return f"{where} {word!r} has spaces; use single words (e.g. 'teddy', not 'teddy bear')"
    if any(c.isupper() for c in word):
        return f"{where} {word!r} has capitals; words are lowercase ({word.lower()!r}) and proper nouns do not belong"
    if any(c.isdigit() for c in word):
        return f"{where} {word!r} has digits; use words only"
    return f"{where} {word!r} has characters other than letters, inner hyphens or apostrophes"


def _category_problems(cat: str, words) -> list[str]:
    if not isinstance(words, list):
        return [f"{cat!r} is a {type(words).__name__}, not a list of words"]
    if not words:
        return [f"{cat!r} is empty; every category needs at least one word"]
    problems = []
    seen: dict[str, int] = {}
    for i, word in enumerate(words):
        problem = _entry_problem(cat, i, word)
        if problem:
            problems.append(problem)
        elif word in seen:
            problems.append(f"{cat} has {word!r} twice (entries {seen[word]} and {i}); keep one")
        else:
            seen[word] = i
    return problems


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
        else:
            problems += _category_problems(cat, data[cat])
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
