"""The published TinyStoriesInstruct text layout, converted into our instruction dataset.

`--set instruct_data.source_path=TinyStoriesInstruct-train.txt` streams that file (blocks of
`Features:` / `Words:` / `Summary:` / `Random sentence:` / `Story:` lines separated by
`<|endoftext|>`) into the layout of data/instruction_dataset.jsonl; no LLM is called.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

from tinystories.data.instruct_parts import LABELS, Tally, render
from tinystories.errors import UserError
from tinystories.io.layout import EOS, INSTRUCT_FAILED, INSTRUCT_STATS, INSTRUCTIONS
from tinystories.io.rundir import atomic_path, write_json
from tinystories.progress import progress_bar

# Header keys of the published TinyStoriesInstruct files -> our kinds.
PUBLISHED_KEYS = {"words": "words", "features": "features", "summary": "summary", "random sentence": "sentence"}


def read_tinystories_instruct(path: str | os.PathLike, limit: int = 0) -> Iterator[dict]:
    """Stream the published TinyStoriesInstruct text file as instruction records.

    Layout: blocks separated by `<|endoftext|>`; each block has header lines `Features: ...`,
    `Words: ...`, `Summary: ...`, `Random sentence: ...` (any subset, any order) and then
    `Story:` followed by the story (the rest of that line and all lines up to the delimiter).
    Yields {"instruction", "story", "id" (block index), "set": 0, "parts"}; blank blocks are
    skipped; a block without a story, or a header we do not know, is a UserError naming the line.
    """
    parser = _BlockParser(Path(path))
    emitted = 0
    try:
        with open(parser.path, "r", encoding="utf-8") as fh:
            lineno = 0
            for lineno, line in enumerate(fh, 1):
                for rec in parser.line(lineno, line.rstrip("\n").rstrip("\r")):
                    yield rec
                    emitted += 1
                    if limit and emitted >= limit:
                        return
            rec = parser.end_block(lineno)  # the last block may lack a trailing delimiter
            if rec is not None:
                yield rec
    except UnicodeDecodeError as exc:
        raise UserError(f"{parser.path}: not UTF-8 text ({exc.reason} at byte {exc.start}); convert the file to UTF-8") from None


class _BlockParser:
    """The state of one block being read: its header parts so far, then its story lines."""

    def __init__(self, path: Path):
        self.path = path
        self.block_index = 0
        self.header: list[tuple[str, str]] = []
        self.story_lines: list[str] | None = None
        self.start_line = 1

    def line(self, lineno: int, line: str) -> Iterator[dict]:
        """The records of the blocks this line ends (a delimiter may sit anywhere in a line)."""
        for i, piece in enumerate(line.split(EOS)):
            if i > 0:  # a delimiter ended the block
                rec = self.end_block(lineno)
                if rec is not None:
                    yield rec
            self._piece(lineno, piece)

    def end_block(self, lineno: int) -> dict | None:
        rec = None
        if self.story_lines is None:
            if self.header:
                raise UserError(f"{self.path}:{self.start_line}: block has {LABELS[self.header[0][0]]}: but no 'Story:' line before {EOS} (line {lineno})")
        else:
            story = "\n".join(self.story_lines).strip()
            if not story:
                raise UserError(f"{self.path}:{self.start_line}: block has an empty 'Story:'; remove the block or add its text")
            rec = {"instruction": render(self.header), "story": story, "id": self.block_index, "set": 0, "parts": [k for k, _ in self.header]}
            self.block_index += 1
        self.header, self.story_lines, self.start_line = [], None, lineno + 1
        return rec

    def _piece(self, lineno: int, piece: str) -> None:
        if self.story_lines is not None:
            self.story_lines.append(piece)
            return
        text = piece.strip()
        if not text:
            if not self.header:
                self.start_line = lineno + 1
            return
        key, sep, value = text.partition(":")
        key_l = key.strip().lower()
        if sep and key_l == "story":
            self.story_lines = [value]
        elif sep and key_l in PUBLISHED_KEYS:
            kind = PUBLISHED_KEYS[key_l]
            if any(k == kind for k, _ in self.header):
                raise UserError(f"{self.path}:{lineno}: second {key.strip()}: line in one block; separate stories with {EOS}")
            self.header.append((kind, " ".join(value.split())))
        else:
            raise UserError(
                f"{self.path}:{lineno}: expected 'Features:', 'Words:', 'Summary:', 'Random sentence:' or 'Story:', got {text[:60]!r}; "
                "is this a TinyStoriesInstruct file?"
            )


def convert_published(cfg, rundir) -> dict:
    """Convert `instruct_data.source_path` into the stage's outputs; returns the stats."""
    ic = cfg.instruct_data
    source = Path(ic.source_path).expanduser()
    if not source.is_file():
        raise UserError(f"instruct_data.source_path: {source} is not a file; point it at a TinyStoriesInstruct .txt or leave it empty")
    tally = Tally()
    with atomic_path(rundir.path(INSTRUCTIONS)) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        with progress_bar("convert", total=ic.max_stories or None, unit="story") as bar:
            for rec in read_tinystories_instruct(source, ic.max_stories):
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
                tally.add(rec)
                tally.stories += 1
                bar.advance(1)
    if tally.sets == 0:
        rundir.path(INSTRUCTIONS).unlink(missing_ok=True)
        raise UserError(f"instruct_data.source_path: {source} holds no story blocks; expected blocks ending in {EOS}")
    rundir.path(INSTRUCT_FAILED).unlink(missing_ok=True)  # a conversion has no failed summaries; an older list is stale
    stats = {"source": "tinystories_instruct", "source_path": str(source.resolve()), "blocks": tally.sets, **tally.as_dict()}
    write_json(rundir.path(INSTRUCT_STATS), stats)
    return stats
