"""Statistics of a story dataset (data/stats.json) and their one-screen table.

Streamed over the kept stories in one pass with bounded memory: length histograms are exact;
distinct-n and openings use a seeded reservoir sample of a fixed size (`stats_sample`), which
also makes them comparable between datasets of different sizes.
"""

from __future__ import annotations

import math
import random
from collections import Counter

import numpy as np

from tinystories.data.dedup import DUPLICATE, NEAR_DUPLICATE, TokenBatch
from tinystories.pipeline.ids import splitmix64_mix
from tinystories.text.words import english_words, tokenize


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
        self.top2000 = english_words(2000)
        self.vocab_forms = vocabulary_forms
        self.kept = 0
        self.words = Counter()
        self.whitespace_tokens = Counter()
        self.chars = Counter()
        self.features = Counter()
        # Requested words (a story's prompt words, see text/words.words_used), over the kept
        # stories that have any: how many were asked, how many used, and stories using them all.
        self.with_words = 0
        self.all_words = 0
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
            n_used = sum(1 for v in used.values() if v)
            self.with_words += 1
            self.all_words += n_used == len(used)
            self.requested += len(used)
            self.used += n_used
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
                gram = splitmix64_mix(gram * np.uint64(0x9E3779B97F4A7C15) + h[pos + j])
            chunks.append(gram)
        if not chunks:
            return 0.0
        grams = np.concatenate(chunks)
        return round(len(np.unique(grams)) / len(grams), 4)

    def _requested_words(self) -> dict:
        """Word compliance of the kept stories that have requested words (None without any)."""
        n = self.with_words
        return {
            "requested_words_stories": n,  # kept stories that have requested words
            "requested_words_used": round(self.used / self.requested, 4) if n else None,  # share of all requested words their stories use
            "requested_words_used_mean": round(self.used / n, 2) if n else None,  # requested words used per story
            "all_requested_words_share": round(self.all_words / n, 4) if n else None,  # share of those stories using every one of their words
        }

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
            **self._requested_words(),
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
    if stats.get("requested_words_stories"):
        lines.append(
            f"prompt words  all used in {stats['all_requested_words_share']:.1%} of {stats['requested_words_stories']} stories, "
            f"{stats['requested_words_used_mean']} used per story ({stats['requested_words_used']:.1%} of those asked)"
        )
    return "\n".join(lines)
