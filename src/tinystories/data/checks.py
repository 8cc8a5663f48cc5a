"""The checks a story must pass before dedup, shared by `generate` and `import`.

A story passes, in order: not empty; not cut off by the length limit; no chat preamble,
meta-text or markdown (a safely delimited leading title line is stripped); English; within
the word-count bounds; and, with `require_words`, uses every required word (inflections count:
"jumped" uses "jump"). Without it a story missing a word is kept: `words_used` records which of
its words it contains, so nothing the LLM wrote is thrown away for a missing word.
Every rejection carries its reason (the `reason` field of data/rejected.jsonl) and a detail.
The chat-reply format checks (`format_problem`) also run on their own as the generate stage's
answer validator, so a reply that fails them is retried before it is recorded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from tinystories.data.dedup import TokenBatch, word_hash_values
from tinystories.text.words import english_words, tokenize, words_used

# Reasons a story is rejected (the `reason` field of data/rejected.jsonl).
EMPTY, TRUNCATED, PREAMBLE, META, MARKDOWN, TITLE = "empty", "truncated", "preamble", "meta_text", "markdown", "title"
NOT_ENGLISH, TOO_SHORT, TOO_LONG, MISSING_WORDS = "not_english", "too_short", "too_long", "missing_words"


@dataclass
class FilterOptions:
    """Filter and dedup options; the `generate` and `import_` sections inherit these fields."""

    min_words: int = 50  # reject stories with fewer words than this
    max_words: int = 1000  # reject stories with more words than this
    min_english: float = 0.8  # reject when fewer than this share of words are in wordfreq's 50,000 most common English words
    require_words: bool = False  # reject stories missing a required word (inflections count); false keeps them, words_used says which they contain
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


@lru_cache(maxsize=4)
def _english_table(n: int = 50000) -> np.ndarray:
    """Membership of wordfreq's n most common English words as a 2^24-entry table indexed by the
    top bits of a token hash: one gather per token; false positives ~0.3%, harmless for a share."""
    table = np.zeros(1 << 24, dtype=bool)
    table[word_hash_values(sorted(english_words(n))) >> np.uint64(40)] = True
    return table


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

    def check(self, text: str | None, finish_reason: str | None = None, words: dict | list | None = None, format_checks: bool = True) -> Verdict:
        """One story; see check_batch."""
        return self.check_batch([{"text": text, "finish_reason": finish_reason, "words": words}], format_checks)[0][0]

    def check_batch(self, cands: list[dict], format_checks: bool = True) -> tuple[list[Verdict], TokenBatch, list[int]]:
        """Verdicts for candidates {"text", "finish_reason"?, "words"?}, the TokenBatch of their
        (cleaned) texts, and the indices of those that passed."""
        verdicts = [self._reply_verdict(cand, format_checks) for cand in cands]
        # Rejected texts are tokenized as "" so the batch keeps one row per candidate.
        tb = TokenBatch([v.text if v.reason is None else "" for v in verdicts])
        english = np.bincount(tb.owner, weights=self._english[tb.hashes >> np.uint64(40)], minlength=len(cands)).tolist()
        counts = tb.counts.tolist()
        passed: list[int] = []
        for i, (cand, v) in enumerate(zip(cands, verdicts)):
            if v.reason:
                continue
            v.n_words = counts[i]
            self._content_checks(v, cand.get("words"), english[i], tb.normalized[i])
            if v.reason is None:
                passed.append(i)
        return verdicts, tb, passed

    def _reply_verdict(self, cand: dict, format_checks: bool) -> Verdict:
        """The checks on the reply as a whole: empty, cut off, and (optionally) its chat format."""
        text = cand.get("text") or ""
        if not text.strip():
            return Verdict("", 0, EMPTY, "no text")
        if cand.get("finish_reason") == "length":
            return Verdict(text, 0, TRUNCATED, "cut off at max_tokens")
        if format_checks:
            text, reason, detail = format_problem(text, self.opts)
            return Verdict(text, 0, reason, detail)
        return Verdict(text.strip(), 0)

    def _content_checks(self, v: Verdict, words: dict | list | None, english_tokens: float, normalized: str) -> None:
        """Language, length and required words of a story that passed the reply checks (sets
        v.reason and v.detail on a rejection, v.words_used when it has required words)."""
        o, n = self.opts, v.n_words
        share = english_tokens / n if n else 0.0
        if share < o.min_english or _other_script(v.text):
            v.reason, v.detail = NOT_ENGLISH, f"{share:.2f} of words are common English words"
        elif n < o.min_words:
            v.reason, v.detail = TOO_SHORT, f"{n} words < {o.min_words}"
        elif n > o.max_words:
            v.reason, v.detail = TOO_LONG, f"{n} words > {o.max_words}"
        else:
            v.words_used = used = words_used(v.text, words, normalized)
            if used is not None and o.require_words and not all(used.values()):
                missing = [str(words[k]) if isinstance(words, dict) else k for k, ok in used.items() if not ok]
                v.reason, v.detail = MISSING_WORDS, "missing " + ", ".join(missing)
