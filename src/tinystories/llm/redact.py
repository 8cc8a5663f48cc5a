"""Keep API keys out of every message that can carry a server's text.

A server can quote the request back: a 401 naming the key it refused, a proxy's 200 that echoes
the request headers as text/plain. Such text ends up in exception messages, log lines, the
manifest and the failure records, so every piece of server text in llm/ goes through `one_line`
(or `redact`) on its way into a message. The keys themselves are registered here by whoever reads
them from the environment (openai_backend.api_key), and never written anywhere else.
"""

from __future__ import annotations

import re

KEY_STANDIN = "<the key>"
# Shorter strings are not treated as secrets: blanking "ab" out of every message would garble them,
# and no real API key is that short.
MIN_SECRET_LENGTH = 6
# An Authorization header quoted back carries a key even when it is not one we know of.
# Not the stand-in itself: redacting twice (the backend, then the client) must change nothing more.
_BEARER = re.compile(r"(?i)\b(bearer)\s+(?!" + re.escape(KEY_STANDIN) + r")[^\s\"',;]+")
_HTML = re.compile(r"(?is)^\s*(<!doctype html|<html|<head|<body)")
_TITLE = re.compile(r"(?is)<title[^>]*>(.*?)</title>")

_secrets: set[str] = set()


def remember_secret(value: str) -> None:
    """Blank `value` out of every message from now on (process-wide: messages outlive the backend)."""
    value = (value or "").strip()
    if len(value) >= MIN_SECRET_LENGTH:
        _secrets.add(value)


def redact_secrets(text: str) -> str:
    """`text` with every remembered secret replaced by a stand-in; nothing else changes (for answers)."""
    # Longest first: one key may contain another (a key and its prefix registered by two configs).
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, KEY_STANDIN)
    return text


def redact(text: object) -> str:
    """`text` (for a message) with every remembered secret and every bearer token replaced by a stand-in."""
    return _BEARER.sub(lambda m: f"{m.group(1)} {KEY_STANDIN}", redact_secrets(str(text)))


def one_line(text: object, limit: int = 300) -> str:
    """Server text fit for a message: redacted (before cutting, so no part of a key survives the cut),
    an HTML page named by its title instead of quoted, on one line, at most `limit` characters."""
    out = redact(text)
    if _HTML.match(out):
        title = _TITLE.search(out)
        out = f"an HTML page ({title.group(1).strip()})" if title and title.group(1).strip() else "an HTML page"
    out = " ".join(out.split())
    return out if len(out) <= limit else out[: limit - 1] + "…"
