"""Story filters, deduplication and dataset statistics shared by `generate` and `import`.

A story passes, in order: not empty; not cut off by the length limit; no chat preamble,
meta-text or markdown (a safely delimited leading title line is stripped); English; within
the word-count bounds; uses its required words (inflections count: "jumped" uses "jump").
Then it must not duplicate a kept story, exactly (after lowercasing, dropping punctuation
and collapsing whitespace) or nearly (MinHash signatures over word shingles, LSH banding,
estimated Jaccard >= threshold). Every rejection is recorded with its reason.

`DatasetBuilder` ties it together: it appends kept stories to data/stories.jsonl and the
rest to data/rejected.jsonl as they arrive, rebuilds the dedup index from the kept stories on
resume, and at the end writes data/tinystories_dataset.txt and data/stats.json atomically.

Memory: the dedup index is the only structure that grows with the dataset. Per kept story it
holds the signature (4 bytes x num_perm), one dict entry per LSH band (about 70 bytes each),
one exact-hash dict entry (about 100 bytes) and the story id (about 60 bytes): with the
defaults (num_perm 64, 8 bands) about 1 KB per story (0.96 KB measured by
benchmarks/bench_dataset.py), 1 GB at one million stories; the set of ids already done adds
~70 bytes per story. Everything else streams: files are read and written a record at a time.
Statistics are streamed; distinct-n and openings use a seeded reservoir sample of a fixed
size (`stats_sample`), which also makes them comparable between datasets of different sizes.
"""

from __future__ import annotations

import logging
import math
import random
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from tinystories.errors import UserError
from tinystories.io.rundir import JsonlWriter, atomic_path, read_json, read_jsonl, write_json

log = logging.getLogger(__name__)

EOS = "<|endoftext|>"
STORIES = "data/stories.jsonl"
REJECTED = "data/rejected.jsonl"
DATASET = "data/tinystories_dataset.txt"
STATS = "data/stats.json"

# Reasons a story is rejected (the `reason` field of data/rejected.jsonl).
EMPTY, TRUNCATED, PREAMBLE, META, MARKDOWN, TITLE = "empty", "truncated", "preamble", "meta_text", "markdown", "title"
NOT_ENGLISH, TOO_SHORT, TOO_LONG, MISSING_WORDS = "not_english", "too_short", "too_long", "missing_words"
DUPLICATE, NEAR_DUPLICATE = "duplicate", "near_duplicate"

POS = ("noun", "verb", "adjective")
# Everything but letters and the apostrophe becomes a space; curly apostrophes become straight.
# str.translate + split is ~3x faster than a regex findall, and tokenizing is the filters' main cost.
_TOKEN_TABLE = str.maketrans(
    {**{chr(i): " " for i in range(128) if not (chr(i).isalpha() or chr(i) == "'")}, "\u2019": "'", "\u2018": " ",
     "\u201c": " ", "\u201d": " ", "\u2014": " ", "\u2013": " ", "\u2026": " ", "\u00a0": " "}
)  # fmt: skip
_QUOTE = re.compile(r"(?<![a-z])'+|'+(?![a-z])")  # a quote mark, not an apostrophe inside a word


def tokenize(text: str) -> list[str]:
    """Lowercase word tokens without punctuation ("don't" stays one token): the unit of every
    check, duplicate key and statistic here."""
    s = text.lower().translate(_TOKEN_TABLE)
    if "'" in s:
        s = _QUOTE.sub(" ", s)
    return s.split()


_HASH_BASE = 0x100000001B3  # odd, so invertible mod 2^64
_HASH_INV = pow(_HASH_BASE, -1, 1 << 64)
_POW_CACHE: dict[str, np.ndarray] = {"pow": np.ones(1, dtype=np.uint64), "inv": np.ones(1, dtype=np.uint64)}


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """B^j and B^-j mod 2^64 for j < n (grown on demand, by doubling)."""
    pw, inv = _POW_CACHE["pow"], _POW_CACHE["inv"]
    if len(pw) < n:
        m = max(n, 2 * len(pw), 1 << 16)
        pw = np.empty(m, dtype=np.uint64)
        inv = np.empty(m, dtype=np.uint64)
        # repeated doubling: each step multiplies a block by B^len(block), all vectorised
        pw[0], inv[0] = 1, 1
        filled = 1
        while filled < m:
            k = min(filled, m - filled)
            pw[filled : filled + k] = pw[:k] * np.uint64(pow(_HASH_BASE, filled, 1 << 64))
            inv[filled : filled + k] = inv[:k] * np.uint64(pow(_HASH_INV, filled, 1 << 64))
            filled += k
        _POW_CACHE["pow"], _POW_CACHE["inv"] = pw, inv
    return pw, inv


class TokenBatch:
    """The word tokens of a batch of texts as stable 64-bit hashes, found without making a
    Python string per token.

    Why by hand: splitting a 200-word story into Python strings and looking each one up costs
    more than everything else the filters and dedup do together. Here the batch is one byte
    array; token boundaries, a polynomial hash of every token (prefix sums, mod 2^64) and each
    token's story come from a few numpy passes. Tokens are those of `tokenize()`: lowercase runs
    of letters, with apostrophes kept only inside a word.
    """

    def __init__(self, texts: list[str]):
        n = len(texts)
        self.normalized = [t.lower().translate(_TOKEN_TABLE) for t in texts]  # kept for substring tests
        parts = [t.encode("utf-8", "replace") for t in self.normalized]
        lens = np.fromiter(map(len, parts), dtype=np.int64, count=n)
        data = b" ".join(parts)
        b = np.frombuffer(data, dtype=np.uint8)
        story_start = np.concatenate(([0], np.cumsum(lens + 1)[:-1])) if n else np.zeros(0, dtype=np.int64)
        letter = (b != 32) & (b != 39)
        apos = b == 39
        inner = apos.copy()
        inner[1:] &= letter[:-1]
        inner[:-1] &= letter[1:]
        if len(inner):
            inner[0] = inner[-1] = False
        inword = (letter | inner).view(np.int8)
        edges = np.diff(np.concatenate(([0], inword, [0])).astype(np.int8))
        starts = np.flatnonzero(edges == 1)
        ends = np.flatnonzero(edges == -1)
        pw, inv = _powers(len(b) + 1)
        prefix = np.zeros(len(b) + 1, dtype=np.uint64)
        np.cumsum(b.astype(np.uint64) * pw[: len(b)], out=prefix[1:])
        h = (prefix[ends] - prefix[starts]) * inv[starts]
        self.hashes = _mix(h + (ends - starts).astype(np.uint64))
        self.owner = np.searchsorted(story_start, starts, side="right") - 1
        self.counts = np.bincount(self.owner, minlength=n).astype(np.int64)
        self.offsets = np.concatenate(([0], np.cumsum(self.counts)))

    def select(self, rows: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """(concatenated hashes, token counts) of the given stories, in that order."""
        rows_a = np.asarray(rows, dtype=np.int64)
        counts = self.counts[rows_a]
        if len(rows_a) == len(self.counts) and (rows_a == np.arange(len(rows_a))).all():
            return self.hashes, counts
        idx = np.concatenate([np.arange(self.offsets[r], self.offsets[r + 1]) for r in rows]) if rows else np.zeros(0, dtype=np.int64)
        return self.hashes[idx], counts


def word_hash_values(words: list[str]) -> np.ndarray:
    """The TokenBatch hash of each single word."""
    return TokenBatch(list(words)).hashes


@lru_cache(maxsize=4)
def _english_table(n: int = 50000) -> np.ndarray:
    """Membership of wordfreq's n most common English words as a 2^24-entry table indexed by the
    top bits of a token hash: one gather per token; false positives ~0.3%, harmless for a share."""
    table = np.zeros(1 << 24, dtype=bool)
    table[word_hash_values(sorted(english_words(n))) >> np.uint64(40)] = True
    return table


@lru_cache(maxsize=4)
def english_words(n: int = 50000) -> frozenset[str]:
    from wordfreq import top_n_list

    return frozenset(top_n_list("en", n))


@dataclass
class FilterOptions:
    """Filter and dedup options; the `generate` and `import_` sections inherit these fields."""

    min_words: int = 50  # reject stories with fewer words than this
    max_words: int = 1000  # reject stories with more words than this
    min_english: float = 0.8  # reject when fewer than this share of words are in wordfreq's 50,000 most common English words
    require_words: bool = True  # reject stories missing a required word (inflections count); false keeps them and records words_used
    reject_preamble: bool = True  # reject chat preambles ("Sure! Here is..."), meta-text ("I hope you enjoyed") and markdown
    strip_title: bool = True  # strip a leading title line set off by a blank line (else such stories are rejected as "title")
    dedup: str = "near"  # near (exact + MinHash near-duplicates) | exact | off
    dedup_threshold: float = 0.8  # near-duplicate when the estimated Jaccard similarity of word shingles is at least this
    num_perm: int = 64  # MinHash signature length (more = finer Jaccard estimates, more memory and time)
    shingle_size: int = 5  # words per shingle for near-duplicate detection
    stats_sample: int = 20000  # stories (seeded reservoir sample) over which distinct-n and openings are measured

    def filter_problems(self) -> list[str]:
        problems = []
        if self.min_words < 0 or self.max_words < self.min_words:
            problems.append(f"max_words: {self.max_words} must be >= min_words ({self.min_words}) >= 0")
        if not 0.0 <= self.min_english <= 1.0:
            problems.append(f"min_english: {self.min_english} must be between 0 and 1")
        if self.dedup not in ("near", "exact", "off"):
            problems.append(f"dedup: {self.dedup!r} is not near, exact or off")
        if not 0.0 < self.dedup_threshold <= 1.0:
            problems.append(f"dedup_threshold: {self.dedup_threshold} must be in (0, 1]")
        if not 8 <= self.num_perm <= 1024:
            problems.append(f"num_perm: {self.num_perm} must be between 8 and 1024")
        if self.shingle_size < 1:
            problems.append("shingle_size: must be at least 1")
        if self.stats_sample < 1:
            problems.append("stats_sample: must be at least 1")
        return problems


# --- format checks: the replies of chat models ------------------------------------------------

# Openings of a chat reply, not of a story. Kept narrow on purpose: a story may well open with
# "What a sunny day!" or "I can see the moon", so such phrases are not listed.
_PREAMBLE = re.compile(
    r"^\s*(sure|certainly|of course|absolutely|okay|ok|alright|here is|here's|here are|i'd be happy|i would be happy|"
    r"i'm sorry|as an ai|let me (tell|write|share)|below is|this is a (short )?story|title\s*:)\b",
    re.IGNORECASE,
)
_META = re.compile(
    r"\s*[\(\[]?\s*(note:|word count|i hope you|i hope this|let me know|feel free|this story (is|has|uses|was|teaches|contains)|"
    r"in this story|the story above|(the )?features?:|(the )?words? used:|i used the|the (verb|noun|adjective) \")",
    re.IGNORECASE,
)
_MARKDOWN_LINE = re.compile(r"\s*(#{1,6}\s|[-*+]\s|\d+\.\s|---|\*\*\*|===)")
_TITLE_LABEL = re.compile(r"\s*(title\s*:|#{1,6}\s)", re.IGNORECASE)
_TITLE_FORMS = re.compile(r"^\s*(?:title\s*:\s*|#{1,6}\s*)?(?:\*\*|\*|__)?(?P<t>[^*#\n]+?)(?:\*\*|\*|__)?\s*$", re.IGNORECASE)


def strip_title(text: str) -> tuple[str, bool]:
    """Remove a leading title line when it is unambiguous: at most 12 words, no sentence punctuation
    at its end, and a blank line before the story. Returns (text, whether a title line was seen)."""
    stripped = text.strip()
    nl = stripped.find("\n")
    if nl < 0 or nl > 160:  # no short first line: only a labelled title can be there
        return stripped, bool(_TITLE_LABEL.match(stripped))
    first, rest = stripped[:nl], stripped[nl + 1 :]
    labelled = bool(_TITLE_LABEL.match(first) or re.fullmatch(r"\s*(\*\*|__)[^*_]+(\*\*|__)\s*", first))
    m = _TITLE_FORMS.match(first)
    plain_title = (
        m is not None
        and len(first.split()) <= 12
        and not re.search(r"[.!?,;:\"']\s*$", m.group("t"))
        and rest.startswith("\n")  # blank line after it
        and len(tokenize(rest)) > 0
    )
    if plain_title:
        return rest.strip(), True
    if labelled:
        return stripped, True  # a title-like first line we cannot cut safely
    return stripped, False


def format_problem(text: str, options: FilterOptions) -> tuple[str, str | None, str]:
    """(cleaned text, reason or None, detail) for the chat-reply format checks."""
    cleaned, had_title = strip_title(text)
    if had_title and not options.strip_title:
        return text.strip(), TITLE, "starts with a title line (strip_title is false)"
    if had_title and cleaned == text.strip():
        return cleaned, TITLE, "a title line that cannot be cut safely"
    if not options.reject_preamble:
        return cleaned, None, ""
    first_line = cleaned.split("\n", 1)[0]
    if _PREAMBLE.match(first_line) and not first_line.lower().startswith("once upon a time"):
        return cleaned, PREAMBLE, first_line[:60]
    # Line-start patterns are matched per line (a story has a handful) rather than searched
    # over the whole text: same result, several times faster.
    for line in cleaned.split("\n"):
        if _META.match(line):
            return cleaned, META, line.strip()[:60]
        if _MARKDOWN_LINE.match(line):
            return cleaned, MARKDOWN, line.strip()[:40]
    for mark in ("**", "__", "```"):
        at = cleaned.find(mark)
        if at >= 0:
            return cleaned, MARKDOWN, cleaned[at : at + 40].strip()
    return cleaned, None, ""


# --- content checks ---------------------------------------------------------------------------


@dataclass
class Verdict:
    text: str
    n_words: int = 0
    reason: str | None = None
    detail: str = ""
    words_used: dict | None = None


def _other_script(text: str) -> bool:
    """True when under 90% of the letters are ASCII: another script, not English."""
    if text.isascii():
        return False
    letters = re.findall(r"[^\W\d_]", text)
    return bool(letters) and sum(1 for c in letters if c.isascii()) / len(letters) < 0.9


class StoryFilter:
    def __init__(self, options: FilterOptions):
        self.opts = options
        self._english = _english_table()

    def words_used(self, text: str, words: dict | list | None, normalized: str | None = None) -> dict | None:
        """{"noun": True, ...} per required word (a list of words of unknown part of speech is
        keyed by the word); inflected forms count, and a multi-word entry needs all its words."""
        if not words:
            return None
        if isinstance(words, dict):
            items = [(pos, pos, str(w)) for pos, w in words.items() if w]
        else:
            items = [(str(w), "any", str(w)) for w in words if w]
        # A handful of substring searches over the normalised text beat building a token set.
        if normalized is None:
            normalized = text.lower().translate(_TOKEN_TABLE)
        padded = " " + normalized.replace("'", " ") + " "
        out = {}
        for key, pos, word in items:
            parts = _required_forms(word, pos)
            out[key] = bool(parts) and all(any(form in padded for form in forms) for forms in parts)
        return out

    def check(self, text: str | None, finish_reason: str | None = None, words: dict | list | None = None, format_checks: bool = True) -> Verdict:
        """One story; see check_batch."""
        return self.check_batch([{"text": text, "finish_reason": finish_reason, "words": words}], format_checks)[0][0]

    def check_batch(self, cands: list[dict], format_checks: bool = True) -> tuple[list[Verdict], TokenBatch, list[int]]:
        """Verdicts for candidates {"text", "finish_reason"?, "words"?}, the TokenBatch of their
        (cleaned) texts, and the indices of those that passed."""
        verdicts: list[Verdict] = []
        texts: list[str] = []
        for cand in cands:
            text = cand.get("text") or ""
            if not text.strip():
                verdicts.append(Verdict("", 0, EMPTY, "no text"))
            elif cand.get("finish_reason") == "length":
                verdicts.append(Verdict(text, 0, TRUNCATED, "cut off at max_tokens"))
            elif format_checks:
                text, reason, detail = format_problem(text, self.opts)
                verdicts.append(Verdict(text, 0, reason, detail))
            else:
                text = text.strip()
                verdicts.append(Verdict(text, 0))
            texts.append(verdicts[-1].text if verdicts[-1].reason is None else "")
        tb = TokenBatch(texts)
        english = np.bincount(tb.owner, weights=self._english[tb.hashes >> np.uint64(40)], minlength=len(texts))
        counts = tb.counts.tolist()
        english = english.tolist()
        passed: list[int] = []
        o = self.opts
        for i, (cand, v) in enumerate(zip(cands, verdicts)):
            if v.reason:
                continue
            n = v.n_words = counts[i]
            share = english[i] / n if n else 0.0
            if share < o.min_english or _other_script(v.text):
                v.reason, v.detail = NOT_ENGLISH, f"{share:.2f} of words are common English words"
            elif n < o.min_words:
                v.reason, v.detail = TOO_SHORT, f"{n} words < {o.min_words}"
            elif n > o.max_words:
                v.reason, v.detail = TOO_LONG, f"{n} words > {o.max_words}"
            else:
                words = cand.get("words")
                v.words_used = used = self.words_used(v.text, words, tb.normalized[i])
                if used is not None and o.require_words and not all(used.values()):
                    missing = [str(words[k]) if isinstance(words, dict) else k for k, ok in used.items() if not ok]
                    v.reason, v.detail = MISSING_WORDS, "missing " + ", ".join(missing)
                else:
                    passed.append(i)
        return verdicts, tb, passed


@lru_cache(maxsize=200_000)
def _required_forms(word: str, pos: str) -> tuple[tuple[str, ...], ...]:
    """Per word of the entry: its forms as " form " (apostrophes as spaces), for substring tests."""
    # the word itself first: it is the likeliest form, and any() stops at the first hit
    return tuple(
        tuple(" " + f.replace("'", " ") + " " for f in sorted(inflections(part, pos), key=lambda f: (f != part, f))) for part in tokenize(word)
    )


@lru_cache(maxsize=200_000)
def inflections(word: str, pos: str) -> frozenset[str]:
    """The word and its inflections, lowercase. `pos` is noun, verb or adjective, or "any"."""
    from tinystories.data.vocab import word_forms

    word = word.lower().strip()
    poses = POS if pos not in POS else (pos,)
    forms = {word}
    for p in poses:
        forms |= {f.lower() for f in word_forms(word, p)}
    return frozenset(forms)


# --- deduplication ----------------------------------------------------------------------------

_MASK64 = (1 << 64) - 1


def _mix(h: np.ndarray) -> np.ndarray:
    # splitmix64 finaliser: spreads every input bit over the output so bins and values are independent.
    h = h ^ (h >> np.uint64(30))
    h = h * np.uint64(0xBF58476D1CE4E5B9)
    h = h ^ (h >> np.uint64(27))
    h = h * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


class Deduper:
    """Exact and near-duplicate detection over kept stories.

    Signatures are one-permutation MinHash (Li, Owen & Zhang 2012) with rotation densification
    (Shrivastava & Li 2014), computed for a whole batch of stories in a few numpy passes. We do
    this by hand rather than with datasketch's MinHash because that hashes every shingle with
    sha1 in a Python loop and then applies num_perm permutations per shingle: about 30x slower
    (benchmarks/bench_dataset.py measures both in the same run), and the target for filters
    plus dedup is 20,000 stories/s. The LSH band layout (bands x rows) is datasketch's own optimum for the threshold
    and num_perm (weighted towards recall), and candidates are confirmed by the estimated
    Jaccard similarity.
    """

    def __init__(self, mode: str = "near", threshold: float = 0.8, num_perm: int = 64, shingle_size: int = 5):
        from datasketch.lsh import _optimal_param

        self.mode = mode
        self.threshold = threshold
        self.num_perm = num_perm
        self.k = shingle_size
        # Misses weigh 4x false candidates: a false candidate costs one signature comparison
        # (they are verified), a miss keeps a duplicate. At threshold 0.8 and 64 permutations this
        # gives 8 bands of 8 rows: a pair at Jaccard 0.9 becomes a candidate with p = 0.99.
        self.bands, self.rows = _optimal_param(threshold, num_perm, 0.2, 0.8)
        rng = np.random.default_rng(0x7157)
        self._shingle_mult = rng.integers(1, 2**63, size=max(1, shingle_size), dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self._band_mult = rng.integers(1, 2**63, size=self.rows, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self._band_salt = rng.integers(1, 2**63, size=self.bands, dtype=np.uint64)
        self._powers = np.zeros(0, dtype=np.uint64)
        self.ids: list[str] = []
        self._exact: dict[int, int] = {}
        self._tables: list[dict[int, int | list[int]]] = [dict() for _ in range(self.bands)]
        self._sigs = np.zeros((1024, num_perm), dtype=np.uint32)

    def __len__(self) -> int:
        return len(self.ids)

    # -- signatures ------------------------------------------------------------------------
    @staticmethod
    def word_hashes(token_lists: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
        """(hash of every token, concatenated; tokens per story) for ready-made token lists."""
        tb = TokenBatch([" ".join(t) for t in token_lists])
        return tb.hashes, tb.counts

    def exact_keys(self, flat: np.ndarray, lengths: np.ndarray) -> list[int]:
        """64-bit hash per story of its token sequence: equal after lowercasing, dropping
        punctuation and collapsing whitespace <=> equal token sequences."""
        n = len(lengths)
        if n == 0:
            return []
        longest = int(lengths.max()) if n else 0
        if len(self._powers) < longest:
            # powers of an odd constant mod 2^64: a polynomial hash of the sequence
            p = np.empty(max(longest, 2 * len(self._powers), 1024), dtype=np.uint64)
            p[0] = 1
            for i in range(1, len(p)):
                p[i] = int(p[i - 1]) * 0x9E3779B97F4A7C15 & _MASK64
            self._powers = p
        starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        pos = np.arange(len(flat)) - np.repeat(starts, lengths)
        contrib = _mix(flat) * self._powers[pos]
        keys = np.zeros(n, dtype=np.uint64)
        nonempty = lengths > 0
        if nonempty.any():
            keys[nonempty] = np.add.reduceat(contrib, starts[nonempty])
        keys = _mix(keys ^ lengths.astype(np.uint64))
        return keys.tolist()

    def signatures(self, token_lists: list[list[str]]) -> np.ndarray:
        """One-permutation MinHash signatures (n, num_perm) uint32 of word-shingle sets."""
        return self._signatures(*self.word_hashes(token_lists))

    def _signatures(self, flat: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        n, P, k = len(lengths), self.num_perm, self.k
        if n == 0:
            return np.zeros((0, P), dtype=np.uint32)
        total = len(flat)
        # Shingle hash at every position of the concatenation (contiguous slices, no gathers);
        # windows that cross into the next story are dropped below.
        padded = np.concatenate((flat, np.zeros(k, dtype=np.uint64)))
        h_all = padded[:total] * self._shingle_mult[0]
        for j in range(1, k):
            h_all += padded[j : j + total] * self._shingle_mult[j]
        starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        eff = np.maximum(lengths - k + 1, 0)
        owner = np.repeat(np.arange(n), eff)
        pos = np.arange(int(eff.sum())) - np.repeat(np.cumsum(eff) - eff, eff) + np.repeat(starts, eff)
        h = h_all[pos]
        short = np.nonzero((lengths < k) & (lengths > 0))[0]
        if len(short):
            # A story shorter than a shingle contributes one shingle of all its words.
            extra = [sum(int(flat[starts[s] + j]) * int(self._shingle_mult[j]) for j in range(lengths[s])) & _MASK64 for s in short]
            h = np.concatenate((h, np.array(extra, dtype=np.uint64)))
            owner = np.concatenate((owner, short))
        h = _mix(h)
        bins = ((h >> np.uint64(32)) * np.uint64(P)) >> np.uint64(32)
        vals = (h & np.uint64(0xFFFFFFFF)).astype(np.uint32)
        sig = np.full(n * P, 0xFFFFFFFF, dtype=np.uint32)
        np.minimum.at(sig, owner * P + bins.astype(np.int64), vals)
        sig = sig.reshape(n, P)
        empty = sig == 0xFFFFFFFF
        if empty.any():
            # Rotation densification: an empty bin takes the next non-empty bin to its right
            # (circularly), offset by the distance, so equal sets still get equal signatures.
            filled = np.where(~empty, np.arange(P), 2 * P)
            both = np.concatenate((filled, filled + P), axis=1)
            both = np.where(both >= 2 * P, 4 * P, both)
            nxt = np.minimum.accumulate(both[:, ::-1], axis=1)[:, ::-1][:, :P]
            nxt = np.minimum(nxt, 2 * P - 1)
            wide = np.concatenate((sig, sig), axis=1).astype(np.uint64)
            borrowed = np.take_along_axis(wide, nxt, axis=1)
            dist = (nxt - np.arange(P)).astype(np.uint64)
            dense = ((borrowed + dist * np.uint64(0x9E3779B1)) & np.uint64(0xFFFFFFFF)).astype(np.uint32)
            sig = np.where(empty, dense, sig)
        return sig

    def band_keys(self, sigs: np.ndarray) -> np.ndarray:
        r = self.rows
        out = np.empty((len(sigs), self.bands), dtype=np.uint64)
        for b in range(self.bands):
            block = sigs[:, b * r : (b + 1) * r].astype(np.uint64)
            out[:, b] = (block * self._band_mult).sum(axis=1, dtype=np.uint64) ^ self._band_salt[b]
        return out

    @staticmethod
    def estimate(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.count_nonzero(a == b)) / len(a)

    # -- index -----------------------------------------------------------------------------
    def _store(self, story_id: str, key: int, sig: np.ndarray | None, bands: list[int] | None) -> None:
        idx = len(self.ids)
        self.ids.append(story_id)
        self._exact.setdefault(key, idx)
        if self.mode != "near" or sig is None:
            return
        if idx >= len(self._sigs):
            self._sigs = np.concatenate((self._sigs, np.zeros_like(self._sigs)))
        self._sigs[idx] = sig
        for table, bk in zip(self._tables, bands):
            cur = table.get(bk)
            if cur is None:
                table[bk] = idx
            elif isinstance(cur, list):
                cur.append(idx)
            else:
                table[bk] = [cur, idx]

    def process(self, items: list[tuple[str, list[str]]], insert_only: bool = False) -> list[tuple[str, str, float] | None]:
        """Check (id, tokens) in order against the index (and each other); keep the unique ones.

        Returns, per item, None when kept, else (reason, duplicated id, similarity).
        """
        flat, lengths = self.word_hashes([t for _, t in items])
        return self.process_hashes([sid for sid, _ in items], flat, lengths, insert_only)

    def process_hashes(self, ids: list[str], flat: np.ndarray, lengths: np.ndarray, insert_only: bool = False) -> list[tuple[str, str, float] | None]:
        """`process` for stories given as token hashes (TokenBatch.select)."""
        if self.mode == "off":
            return [None] * len(ids)
        near = self.mode == "near"
        keys = self.exact_keys(flat, lengths)
        sigs = self._signatures(flat, lengths) if near else None
        bands = self.band_keys(sigs).tolist() if near else None
        out: list[tuple[str, str, float] | None] = []
        for i, sid in enumerate(ids):
            key = keys[i]
            if not insert_only:
                hit = self._exact.get(key)
                if hit is not None:
                    out.append((DUPLICATE, self.ids[hit], 1.0))
                    continue
                if near:
                    best, best_sim = -1, -1.0
                    seen: set[int] = set()
                    for table, bk in zip(self._tables, bands[i]):
                        cand = table.get(bk)
                        if cand is None:
                            continue
                        for c in cand if isinstance(cand, list) else (cand,):
                            if c in seen:
                                continue
                            seen.add(c)
                            sim = self.estimate(self._sigs[c], sigs[i])
                            if sim > best_sim:
                                best, best_sim = c, sim
                    if best >= 0 and best_sim >= self.threshold:
                        out.append((NEAR_DUPLICATE, self.ids[best], round(best_sim, 4)))
                        continue
            self._store(sid, key, sigs[i] if near else None, bands[i] if near else None)
            out.append(None)
        return out


# --- statistics -------------------------------------------------------------------------------


def _summary(hist: Counter) -> dict:
    """mean / median / p95 from a histogram of integer values (exact, O(distinct values) memory)."""
    total = sum(hist.values())
    if not total:
        return {"mean": 0.0, "median": 0.0, "p95": 0.0, "min": 0, "max": 0}
    mean = sum(v * c for v, c in hist.items()) / total
    out = {"mean": round(mean, 2)}
    for name, q in (("median", 0.5), ("p95", 0.95)):
        # nearest-rank quantile
        rank = max(1, math.ceil(q * total))
        seen = 0
        for v in sorted(hist):
            seen += hist[v]
            if seen >= rank:
                out[name] = v
                break
    out["min"], out["max"] = min(hist), max(hist)
    return out


class StatsAccumulator:
    """Dataset statistics over kept stories, streamed (one pass, bounded memory)."""

    def __init__(self, vocabulary_forms: frozenset[str] | None = None, sample_size: int = 20000, seed: int = 0):
        from wordfreq import top_n_list

        self.top2000 = frozenset(top_n_list("en", 2000))
        self.vocab_forms = vocabulary_forms
        self.kept = 0
        self.words = Counter()
        self.whitespace_tokens = Counter()
        self.chars = Counter()
        self.features = Counter()
        self.requested = 0
        self.used = 0
        self.tokens_total = 0
        self.tokens_top2000 = 0
        self.tokens_vocab = 0
        self.sample_size = sample_size
        self.sample: list[str] = []  # story texts (a text is ~10x smaller than its token list)
        self._rng = random.Random(seed)

    def add(self, record: dict) -> None:
        text = record.get("story", "")
        tokens = tokenize(text)
        self.kept += 1
        self.words[len(tokens)] += 1
        self.whitespace_tokens[len(text.split())] += 1
        self.chars[len(text)] += 1
        for f in record.get("features") or ():
            self.features[f] += 1
        used = record.get("words_used")
        if used:
            self.requested += len(used)
            self.used += sum(1 for v in used.values() if v)
        self.tokens_total += len(tokens)
        self.tokens_top2000 += sum(map(self.top2000.__contains__, tokens))
        if self.vocab_forms is not None:
            self.tokens_vocab += sum(map(self.vocab_forms.__contains__, tokens))
        # reservoir sample (Algorithm R): every story is equally likely to be in it
        if len(self.sample) < self.sample_size:
            self.sample.append(text)
        else:
            j = self._rng.randrange(self.kept)
            if j < self.sample_size:
                self.sample[j] = text

    def distinct(self, n: int) -> float:
        """Distinct n-grams / all n-grams over the sample, counted on 64-bit n-gram hashes (a set
        of tuples of strings would take ~100 bytes per n-gram; these take 8)."""
        chunks = []
        for start in range(0, len(self.sample), 1000):  # bounded temporaries: ~1.5 MB of text at a time
            tb = TokenBatch(self.sample[start : start + 1000])
            h, counts = tb.hashes, tb.counts
            eff = np.maximum(counts - n + 1, 0)
            if not eff.sum():
                continue
            # position of every n-gram that lies inside one story
            pos = np.arange(int(eff.sum())) - np.repeat(np.cumsum(eff) - eff, eff) + np.repeat(tb.offsets[:-1], eff)
            gram = h[pos]
            for j in range(1, n):
                gram = _mix(gram * np.uint64(0x9E3779B97F4A7C15) + h[pos + j])
            chunks.append(gram)
        if not chunks:
            return 0.0
        grams = np.concatenate(chunks)
        return round(len(np.unique(grams)) / len(grams), 4)

    def result(self, rejected: Counter, attempted: int | None = None) -> dict:
        openings = Counter(" ".join(t) for t in (tokenize(text[:200])[:5] for text in self.sample) if len(t) == 5)
        top_open, top_count = openings.most_common(1)[0] if openings else ("", 0)
        n_rej = sum(rejected.values())
        dedup_pool = self.kept + rejected.get(DUPLICATE, 0) + rejected.get(NEAR_DUPLICATE, 0)
        return {
            "kept": self.kept,
            "rejected": n_rej,
            "attempted": attempted if attempted is not None else self.kept + n_rej,
            "rejected_by_reason": dict(sorted(rejected.items())),
            "words_per_story": _summary(self.words),
            "whitespace_tokens_per_story": _summary(self.whitespace_tokens),
            "chars_per_story": _summary(self.chars),
            "total_words": self.tokens_total,
            "requested_words_used": round(self.used / self.requested, 4) if self.requested else None,
            "features": {k: {"count": v, "share": round(v / self.kept, 4)} for k, v in sorted(self.features.items())} if self.kept else {},
            "distinct_1": self.distinct(1),
            "distinct_2": self.distinct(2),
            "distinct_3": self.distinct(3),
            "distinct_sample_stories": len(self.sample),
            "top_opening": top_open,
            "top_opening_share": round(top_count / len(self.sample), 4) if self.sample else 0.0,
            "vocabulary_share": round(self.tokens_vocab / self.tokens_total, 4) if self.vocab_forms is not None and self.tokens_total else None,
            "top2000_share": round(self.tokens_top2000 / self.tokens_total, 4) if self.tokens_total else 0.0,
            "exact_duplicate_rate": round(rejected.get(DUPLICATE, 0) / dedup_pool, 4) if dedup_pool else 0.0,
            "near_duplicate_rate": round(rejected.get(NEAR_DUPLICATE, 0) / dedup_pool, 4) if dedup_pool else 0.0,
        }


def stats_table(stats: dict) -> str:
    w = stats["words_per_story"]
    lines = [
        f"kept {stats['kept']}  rejected {stats['rejected']}  attempted {stats['attempted']}",
        "rejected by reason: " + (", ".join(f"{k} {v}" for k, v in stats["rejected_by_reason"].items()) or "none"),
        f"words/story   mean {w['mean']}  median {w['median']}  p95 {w['p95']}",
        f"distinct-1/2/3 {stats['distinct_1']} / {stats['distinct_2']} / {stats['distinct_3']}",
        f"top opening   {stats['top_opening']!r} ({stats['top_opening_share']:.1%})",
        f"simplicity    in top-2000 English {stats['top2000_share']:.1%}"
        + (f", in vocabulary {stats['vocabulary_share']:.1%}" if stats.get("vocabulary_share") is not None else ""),
        f"duplicates    exact {stats['exact_duplicate_rate']:.1%}  near {stats['near_duplicate_rate']:.1%}",
    ]
    if stats.get("requested_words_used") is not None:
        lines.append(f"required words used {stats['requested_words_used']:.1%}")
    return "\n".join(lines)


# --- the shared writer ------------------------------------------------------------------------


def reset_if_stale(rundir, state_rel: str, fingerprint: str, id_prefix: str, changed: str, foreign: str) -> None:
    """Shared by the two dataset stages (generate, import): files on disk are resumed only when
    they were written under the same fingerprint; otherwise they are deleted (logging `changed`),
    and stories written by the other stage (another id prefix) are never mixed in (`foreign` error)."""
    state_path = rundir.path(state_rel)
    stories = rundir.path(STORIES)
    if state_path.exists() and read_json(state_path).get("fingerprint") != fingerprint:
        log.warning(changed)
        for rel in (STORIES, REJECTED, DATASET, STATS):
            rundir.path(rel).unlink(missing_ok=True)
    elif not state_path.exists() and stories.exists():
        first = next((rec["id"] for rec in read_jsonl(stories)), None)
        if first is not None and not str(first).startswith(id_prefix):
            raise UserError(f"{stories} {foreign}")
    write_json(state_path, {"fingerprint": fingerprint})


class DatasetBuilder:
    """Filter, dedup and append stories; resume from what is on disk; finish with txt + stats."""

    def __init__(self, rundir, options: FilterOptions, seed: int = 0, sync_every: int = 64):
        self.rundir = rundir
        self.sync_every = sync_every  # fsync the appenders every N records (a kill loses nothing flushed; a power cut at most N)
        self.opts = options
        self.seed = seed
        self.filter = StoryFilter(options)
        self.dedup = Deduper(options.dedup, options.dedup_threshold, options.num_perm, options.shingle_size)
        self.done: set[str] = set()
        self.kept = 0
        self.rejected = Counter()
        self._stories: JsonlWriter | None = None
        self._rejects: JsonlWriter | None = None

    @property
    def stories_path(self) -> Path:
        return self.rundir.path(STORIES)

    @property
    def rejected_path(self) -> Path:
        return self.rundir.path(REJECTED)

    def open(self) -> "DatasetBuilder":
        """Open the appenders (repairing a torn last line) and rebuild the state from disk."""
        self._stories = JsonlWriter(self.stories_path, sync_every=self.sync_every)
        self._rejects = JsonlWriter(self.rejected_path, sync_every=self.sync_every)
        for batch in batched(read_jsonl(self.stories_path), 1024):
            ids = [rec["id"] for rec in batch]
            self.done.update(ids)
            self.kept += len(batch)
            tb = TokenBatch([rec["story"] for rec in batch])
            self.dedup.process_hashes(ids, tb.hashes, tb.counts, insert_only=True)
        for rec in read_jsonl(self.rejected_path):
            self.done.add(rec["id"])
            self.rejected[rec["reason"]] += 1
        return self

    def close(self) -> None:
        for w in (self._stories, self._rejects):
            if w is not None:
                w.close()

    def reject(self, story_id: str, reason: str, text: str | None, detail: str = "", **extra) -> None:
        rec = {"id": story_id, "reason": reason, "detail": detail, **extra, "text": text or ""}
        self._rejects.write(rec)
        self.done.add(story_id)
        self.rejected[reason] += 1

    def add(self, candidates: list[dict], format_checks: bool = True) -> None:
        """Each candidate: {"id", "text", "finish_reason"?, "words"?, ...provenance}; appended in order."""
        if not candidates:
            return
        verdicts, tb, ok = self.filter.check_batch(candidates, format_checks=format_checks)
        for cand, v in zip(candidates, verdicts):
            if v.reason:
                self.reject(cand["id"], v.reason, cand["text"], v.detail)
        passed = [(candidates[i], verdicts[i]) for i in ok]
        flat, lengths = tb.select(ok)
        dups = self.dedup.process_hashes([c["id"] for c, _ in passed], flat, lengths)
        for (cand, v), dup in zip(passed, dups):
            if dup is not None:
                reason, of, sim = dup
                self.reject(cand["id"], reason, v.text, f"similarity {sim}", duplicate_of=of)
                continue
            rec = {"id": cand["id"], "story": v.text}
            rec.update({k: val for k, val in cand.items() if k not in ("id", "text")})
            if v.words_used is not None:
                rec["words_used"] = v.words_used
                rec["words_complete"] = all(v.words_used.values())
            self._stories.write(rec)
            self.done.add(cand["id"])
            self.kept += 1

    def finish(self, vocab: dict | None, attempted: int | None = None) -> dict:
        """Write the dataset text and stats from the files on disk (atomic), return the stats."""
        self.close()
        from tinystories.data.vocab import vocabulary_forms

        acc = StatsAccumulator(vocabulary_forms(vocab) if vocab else None, self.opts.stats_sample, self.seed)
        with atomic_path(self.rundir.path(DATASET)) as tmp, open(tmp, "w", encoding="utf-8") as out:
            for rec in read_jsonl(self.stories_path):
                out.write(rec["story"].strip() + "\n" + EOS + "\n")
                acc.add(rec)
        rejected = Counter(rec["reason"] for rec in read_jsonl(self.rejected_path))
        stats = acc.result(rejected, attempted)
        write_json(self.rundir.path(STATS), stats)
        return stats


def batched(items: Iterable, n: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) >= n:
            yield batch
            batch = []
    if batch:
        yield batch
