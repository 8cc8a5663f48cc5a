"""Derived seeds and fingerprints: the one home for "a number or hash that names this work".

Every stage seed, per-item seed and resume fingerprint comes from here, so the same parts
always give the same value, whichever stage asks.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def derive_seed(*parts: Any, bits: int = 31) -> int:
    """A seed in [0, 2**bits) that is a pure function of `parts` (root seed, stage, item key...)."""
    if not 1 <= bits <= 63:
        raise ValueError(f"derive_seed: bits must be 1..63, got {bits}")
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << bits) - 1)


def fingerprint(*parts: Any, length: int = 64) -> str:
    """sha256 hex of the canonical JSON of `parts` (keys sorted), cut to `length` characters."""
    blob = json.dumps(parts if len(parts) != 1 else parts[0], sort_keys=True, default=str, ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


# SplitMix64 (Steele, Lea & Flood 2014): the one 64-bit integer hash of the toolkit. The data
# filters hash tokens and shingles with its finaliser; the sampler draws its per-row uniforms
# from the full generator step. Both operate on whole uint64 numpy arrays (wrapping mod 2^64).
SPLITMIX64_GAMMA = 0x9E3779B97F4A7C15


def splitmix64_mix(h):
    """The SplitMix64 finaliser on a uint64 array: spreads every input bit over the output."""
    import numpy as np

    with np.errstate(over="ignore"):
        h = h ^ (h >> np.uint64(30))
        h = h * np.uint64(0xBF58476D1CE4E5B9)
        h = h ^ (h >> np.uint64(27))
        h = h * np.uint64(0x94D049BB133111EB)
        return h ^ (h >> np.uint64(31))


def splitmix64(x):
    """One SplitMix64 step on a uint64 array: a counter-based hash, cheap and stateless."""
    import numpy as np

    with np.errstate(over="ignore"):
        return splitmix64_mix(x + np.uint64(SPLITMIX64_GAMMA))
