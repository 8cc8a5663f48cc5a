"""The story file data/tinystories_dataset.txt: its one writer and its one reader.

Layout: every kept story, stripped, followed by a line `<|endoftext|>` (io/layout.EOS). The
dataset stages (generate, import) write it from data/stories.jsonl; the tokenizer and prepare
stages stream it in chunks, so a multi-GB file never sits in memory.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable, Iterator

from tinystories.errors import UserError
from tinystories.io.layout import EOS
from tinystories.io.rundir import atomic_path


def write_story_file(path: str | os.PathLike, stories: Iterable[str]) -> int:
    """Write the stories (atomically), each followed by an EOS line; returns how many."""
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as out:
        for story in stories:
            out.write(story.strip() + "\n" + EOS + "\n")
            n += 1
    return n


# --- reading ----------------------------------------------------------------------------------

_DELIM = EOS.encode("ascii")
# Only ASCII whitespace is stripped around a story, so a story is the same text whether the
# file is read as bytes (count_stories) or as str (iter_story_chunks).
_WS = " \t\n\r\x0b\x0c"
_WS_B = _WS.encode("ascii")
_EMPTY_BETWEEN = re.compile(re.escape(_DELIM) + b"[" + re.escape(_WS_B) + b"]*(?=" + re.escape(_DELIM) + b")")


def _iter_bodies(path: Path, chunk_bytes: int, start: int) -> Iterator[tuple[bytes, int, int, bool]]:
    """(body, body_offset, end_offset, eof): the file cut just before a delimiter.

    Every body but the last ends where a delimiter starts; `end_offset` is just past that
    delimiter, a story boundary. The delimiter is ASCII, so it never splits a UTF-8 character.
    """
    offset = start
    carry = b""
    with open(path, "rb") as fh:
        fh.seek(start)
        while True:
            block = fh.read(chunk_bytes)
            eof = not block
            buf = carry + block
            if eof:
                yield buf, offset, offset + len(buf), True
                return
            idx = buf.rfind(_DELIM)
            if idx < 0:
                carry = buf
                continue
            cut = idx + len(_DELIM)
            carry = buf[cut:]
            yield buf[:idx], offset, offset + cut, False
            offset += cut


def _decode(path: Path, body: bytes, body_offset: int) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{path}: byte {body_offset + exc.start} is not valid UTF-8; the dataset must be UTF-8 text (regenerate or re-import it)"
        ) from None


def iter_story_chunks(path: str | os.PathLike, chunk_bytes: int = 8 << 20, start: int = 0) -> Iterator[tuple[list[str], int]]:
    """Yield (stories, end_offset) for consecutive blocks of roughly `chunk_bytes` of the file.

    Stories are the texts between `<|endoftext|>` delimiters with surrounding (ASCII)
    whitespace stripped, since the delimiter usually sits on its own line; empty ones are
    skipped. `end_offset` is the byte offset just past the last story yielded, always at a
    story boundary, so a reader can restart there with `start=end_offset`.
    """
    path = Path(path)
    for body, body_offset, end, eof in _iter_bodies(path, chunk_bytes, start):
        text = _decode(path, body, body_offset)
        stories = [s for s in (part.strip(_WS) for part in text.split(EOS)) if s]
        if stories or eof:
            yield stories, end


def count_stories(path: str | os.PathLike, chunk_bytes: int = 8 << 20) -> int:
    """The number of stories iter_story_chunks yields, without splitting the text in Python.

    Checks that the file is UTF-8 on the way. Counting delimiters runs at memory speed, which
    makes a counting pass before tokenizing almost free even on a multi-GB file.
    """
    path = Path(path)
    n = 0
    for body, body_offset, _, _ in _iter_bodies(path, chunk_bytes, 0):
        _decode(path, body, body_offset)
        if not body.strip(_WS_B):
            continue  # no delimiter and no text: one empty segment
        segments = body.count(_DELIM) + 1
        empty = len(_EMPTY_BETWEEN.findall(body))
        empty += body.lstrip(_WS_B).startswith(_DELIM)  # nothing before the first delimiter
        empty += body.rstrip(_WS_B).endswith(_DELIM)  # nothing after the last one
        n += segments - empty
    return n


def iter_stories(path: str | os.PathLike, limit: int = 0) -> Iterator[str]:
    """Every story of the dataset in file order (the first `limit` if limit > 0)."""
    n = 0
    for stories, _ in iter_story_chunks(path):
        for story in stories:
            yield story
            n += 1
            if limit and n >= limit:
                return


def check_dataset(path: Path) -> None:
    """One-line errors for a missing or empty dataset file."""
    fix = "run `tinystories generate` (or `tinystories import`) to create it"
    if not path.exists():
        raise UserError(f"{path}: dataset file not found; {fix}")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: dataset file is empty; {fix}")
