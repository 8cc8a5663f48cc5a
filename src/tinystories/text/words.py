"""Words as the data filters, the statistics and the judge see them: tokens, inflected forms,
and whether a story uses the words it was asked for.

A token is a lowercase run of letters, apostrophes kept only inside a word ("don't" is one
token), without punctuation. A required word counts as used in any of its inflections
("jumped" uses "jump", "mice" uses "mouse"), so the generate filter, data/stats.json and the
judge's word compliance all mean the same thing by "used".
"""

from __future__ import annotations

import re
from functools import lru_cache

from tinystories.text.vocabulary import CATEGORIES

POS = ("noun", "verb", "adjective")
_UPOS = {
    "noun": "NOUN", "nouns": "NOUN", "n": "NOUN",
    "verb": "VERB", "verbs": "VERB", "v": "VERB",
    "adjective": "ADJ", "adjectives": "ADJ", "adj": "ADJ", "a": "ADJ",
}  # fmt: skip

# Everything but letters and the apostrophe becomes a space; curly apostrophes become straight.
# str.translate + split is ~3x faster than a regex findall, and tokenizing is the filters' main cost.
TOKEN_TABLE = str.maketrans(
    {**{chr(i): " " for i in range(128) if not (chr(i).isalpha() or chr(i) == "'")}, "\u2019": "'", "\u2018": " ",
     "\u201c": " ", "\u201d": " ", "\u2014": " ", "\u2013": " ", "\u2026": " ", "\u00a0": " "}
)  # fmt: skip
_QUOTE = re.compile(r"(?<![a-z])'+|'+(?![a-z])")  # a quote mark, not an apostrophe inside a word


def normalize(text: str) -> str:
    """Lowercase text with every non-word character a space (apostrophes kept)."""
    return text.lower().translate(TOKEN_TABLE)


def tokenize(text: str) -> list[str]:
    """Lowercase word tokens without punctuation ("don't" stays one token): the unit of every
    check, duplicate key and statistic of the story data."""
    s = normalize(text)
    if "'" in s:
        s = _QUOTE.sub(" ", s)
    return s.split()


@lru_cache(maxsize=4)
def english_words(n: int = 50000) -> frozenset[str]:
    """wordfreq's n most common English words."""
    from wordfreq import top_n_list

    return frozenset(top_n_list("en", n))


# --- inflected forms ---------------------------------------------------------------------------


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


@lru_cache(maxsize=200_000)
def inflections(word: str, pos: str) -> frozenset[str]:
    """The word and its inflections, lowercase. `pos` is noun, verb or adjective, or "any"."""
    word = word.lower().strip()
    poses = POS if pos not in POS else (pos,)
    forms = {word}
    for p in poses:
        forms |= {f.lower() for f in word_forms(word, p)}
    return frozenset(forms)


@lru_cache(maxsize=200_000)
def _required_forms(word: str, pos: str) -> tuple[tuple[str, ...], ...]:
    """Per word of the entry: its forms as " form " (apostrophes as spaces), for substring tests."""
    # the word itself first: it is the likeliest form, and any() stops at the first hit
    return tuple(
        tuple(" " + f.replace("'", " ") + " " for f in sorted(inflections(part, pos), key=lambda f: (f != part, f))) for part in tokenize(word)
    )


def words_used(text: str, words: dict | list | None, normalized: str | None = None) -> dict | None:
    """{"noun": True, ...} per required word (a list of words of unknown part of speech is
    keyed by the word); inflected forms count, and a multi-word entry needs all its words.
    `normalized` is `normalize(text)` when the caller has it already."""
    if not words:
        return None
    if isinstance(words, dict):
        items = [(pos, pos, str(w)) for pos, w in words.items() if w]
    else:
        items = [(str(w), "any", str(w)) for w in words if w]
    # A handful of substring searches over the normalised text beat building a token set.
    if normalized is None:
        normalized = normalize(text)
    padded = " " + normalized.replace("'", " ") + " "
    out = {}
    for key, pos, word in items:
        parts = _required_forms(word, pos)
        out[key] = bool(parts) and all(any(form in padded for form in forms) for forms in parts)
    return out
