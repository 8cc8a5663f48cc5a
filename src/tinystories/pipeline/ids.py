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
