"""On-disk cache of LLM answers, one record per request.

SQLite (stdlib) rather than one file per request: a million stories would be a million
small files, and SQLite gives atomic commits, so a kill never leaves a torn record.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import asdict
from pathlib import Path

from tinystories.llm.base import RawResult, Request

CACHE_FORMAT = 1


def cache_key(identity: dict, mode: str, request: Request) -> str:
    payload = {
        "format": CACHE_FORMAT,
        "backend": identity,
        "mode": mode,
        "messages": list(request.messages) if request.messages is not None else None,
        "prompt": request.prompt,
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "seed": request.seed,
        "stop": list(request.stop),
        "template_version": request.template_version,
    }
    if request.top_logprobs:
        # Only when asked: a key without the field stays the key every earlier cache used.
        payload["top_logprobs"] = request.top_logprobs
    if request.continuations:
        payload["continuations"] = list(request.continuations)
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class ResponseCache:
    def __init__(self, directory: str | Path | None):
        self._db = None
        if directory is None:
            return
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path / "responses.sqlite", timeout=60, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, value TEXT NOT NULL)")

    def get(self, key: str) -> RawResult | None:
        if self._db is None:
            return None
        row = self._db.execute("SELECT value FROM responses WHERE key = ?", (key,)).fetchone()
        return RawResult(**json.loads(row[0])) if row else None

    def put(self, key: str, result: RawResult) -> None:
        if self._db is None:
            return
        self._db.execute("INSERT OR REPLACE INTO responses (key, value) VALUES (?, ?)", (key, json.dumps(asdict(result))))

    def __len__(self) -> int:
        if self._db is None:
            return 0
        return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
