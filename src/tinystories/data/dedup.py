"""Exact and near-duplicate detection over kept stories, on token hashes.

A story duplicates a kept one exactly when their token sequences are equal (after lowercasing,
dropping punctuation and collapsing whitespace), and nearly when the MinHash signatures of their
word shingles, found through LSH banding, estimate a Jaccard similarity of at least the
threshold. Tokens are hashed in bulk (`TokenBatch`); the statistics reuse those hashes.

Memory: the dedup index is the only structure of the dataset stages that grows with the
dataset. Per kept story it holds the signature (4 bytes x num_perm), one dict entry per LSH band
(about 70 bytes each), one exact-hash dict entry (about 100 bytes) and the story id (about 60
bytes): with the defaults (num_perm 64, 8 bands) about 1 KB per story (0.96 KB measured by
benchmarks/bench_dataset.py), 1 GB at one million stories.
"""

from __future__ import annotations

import numpy as np

from tinystories.pipeline.ids import splitmix64_mix
from tinystories.text.words import normalize

# Reasons a story is rejected by dedup (the `reason` field of data/rejected.jsonl).
DUPLICATE, NEAR_DUPLICATE = "duplicate", "near_duplicate"

_MASK64 = (1 << 64) - 1

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
    token's story come from a few numpy passes. Tokens are those of `text.words.tokenize()`: lowercase runs
    of letters, with apostrophes kept only inside a word.
    """

    def __init__(self, texts: list[str]):
        n = len(texts)
        self.normalized = [normalize(t) for t in texts]  # kept for substring tests
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
        self.hashes = splitmix64_mix(h + (ends - starts).astype(np.uint64))
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
        contrib = splitmix64_mix(flat) * self._powers[pos]
        keys = np.zeros(n, dtype=np.uint64)
        nonempty = lengths > 0
        if nonempty.any():
            keys[nonempty] = np.add.reduceat(contrib, starts[nonempty])
        keys = splitmix64_mix(keys ^ lengths.astype(np.uint64))
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
        h = splitmix64_mix(h)
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
    def _most_similar(self, sig: np.ndarray, bands: list[int]) -> tuple[int, float]:
        """(index, estimated Jaccard) of the most similar kept story sharing an LSH band, or (-1, -1.0)."""
        best, best_sim = -1, -1.0
        seen: set[int] = set()
        for table, bk in zip(self._tables, bands):
            cand = table.get(bk)
            if cand is None:
                continue
            for c in cand if isinstance(cand, list) else (cand,):
                if c in seen:
                    continue
                seen.add(c)
                sim = self.estimate(self._sigs[c], sig)
                if sim > best_sim:
                    best, best_sim = c, sim
        return best, best_sim

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
                    best, best_sim = self._most_similar(sigs[i], bands[i])
                    if best >= 0 and best_sim >= self.threshold:
                        out.append((NEAR_DUPLICATE, self.ids[best], round(best_sim, 4)))
                        continue
            self._store(sid, key, sigs[i] if near else None, bands[i] if near else None)
            out.append(None)
        return out
