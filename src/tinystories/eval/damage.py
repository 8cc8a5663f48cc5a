"""Damaged versions of a completion, for the judge's discrimination check.

A judge worth trusting grades a story above the same story damaged on purpose. Four damages,
each keeping something and breaking something else:
- shuffled_sentences: the same sentences in another order (grammar intact, plot broken);
- word_salad: the same words in random order (the vocabulary intact, grammar broken);
- truncated: only the first few words (nothing wrong, but nothing said);
- swapped: a fluent completion of another prompt (grammar intact, consistency broken).
A damage that cannot apply to a text (one sentence cannot be reordered) gives None.

The originals that get damaged are text known to be good (eval/originals.py): held-out stories
cut by `cut_at_sentence` into a beginning and its true continuation.
"""

from __future__ import annotations

import random
import re

DAMAGES = ("shuffled_sentences", "word_salad", "truncated", "swapped")

_SENT = re.compile(r"[^.!?]+[.!?]+[\"')\]]*|[^.!?]+$")


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENT.findall(text) if s.strip()]


def cut_at_sentence(story: str) -> tuple[str, str] | None:
    """(beginning, true continuation) of a story, cut at the sentence boundary nearest its middle
    (in characters); None for a story of fewer than two sentences. The continuation starts with a
    space, as a model's completion of the beginning does."""
    ends = [m.end() for m in _SENT.finditer(story)]
    bounds = [e for e in ends[:-1] if story[:e].strip() and story[e:].strip()]
    if not bounds:
        return None
    middle = len(story) / 2
    cut = min(bounds, key=lambda e: (abs(e - middle), e))
    return story[:cut].strip(), " " + story[cut:].strip()


def shuffle_sentences(text: str, rng: random.Random) -> str | None:
    """The same sentences in another order; None when there are fewer than two sentences."""
    sents = split_sentences(text)
    if len(sents) < 2:
        return None
    order = list(range(len(sents)))
    for _ in range(10):
        rng.shuffle(order)
        if order != sorted(order):
            break
    return " " + " ".join(sents[i] for i in order)


def word_salad(text: str, rng: random.Random) -> str | None:
    """The same words in random order, punctuation left where the words take it."""
    words = text.split()
    if len(words) < 3:
        return None
    shuffled = words[:]
    for _ in range(10):
        rng.shuffle(shuffled)
        if shuffled != words:
            break
    return " " + " ".join(shuffled)


def truncate(text: str, rng: random.Random, low: int = 2, high: int = 5) -> str | None:
    """Only the first few words: a completion that stops before saying anything."""
    words = text.split()
    n = rng.randint(low, high)
    if len(words) <= n + 2:
        return None
    return " " + " ".join(words[:n])


def damage(kind: str, text: str, rng: random.Random, other: str | None = None) -> str | None:
    """`text` damaged the `kind` way; `other` is the completion a "swapped" damage puts in its place."""
    if kind == "shuffled_sentences":
        return shuffle_sentences(text, rng)
    if kind == "word_salad":
        return word_salad(text, rng)
    if kind == "truncated":
        return truncate(text, rng)
    if kind == "swapped":
        return other if other and other.strip() and other != text else None
    raise ValueError(f"unknown damage {kind}")
