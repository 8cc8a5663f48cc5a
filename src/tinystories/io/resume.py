"""The one staleness rule for partial work that every resumable stage follows.

A stage that can be interrupted keeps a small state file holding the fingerprint of everything
that changes what its partial files contain. On the next run the partial files are continued
only when that fingerprint is unchanged and `--force` was not given; otherwise they are
deleted and the state file rewritten, so stale work is never mixed with new work.
Row-level resume (completions, judgments) uses `keep_rows`, which rewrites a JSONL without
the rows that no longer belong to the current plan.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Callable, Iterable

from tinystories.io.rundir import read_json, read_jsonl, rewrite_jsonl, write_json

log = logging.getLogger("tinystories.resume")


def recorded_fingerprint(state_path: str | os.PathLike) -> str | None:
    """The fingerprint a state file records, or None when there is none."""
    path = Path(state_path)
    if not path.is_file():
        return None
    data = read_json(path)
    return data.get("fingerprint") if isinstance(data, dict) else None


def resume_or_reset(
    state_path: str | os.PathLike,
    fingerprint: str,
    force: bool,
    partial: Iterable[str | os.PathLike],
    why: str = "settings changed",
    write_state: bool = True,
) -> bool:
    """True when the `partial` files may be continued; otherwise they are removed.

    Continued only when `state_path` records `fingerprint` and `force` is false. On a reset the
    state file is rewritten with the new fingerprint (unless `write_state` is false: a caller
    whose state file is written by the work itself, such as a checkpoint's info file).
    """
    previous = recorded_fingerprint(state_path)
    if not force and previous == fingerprint:
        return True
    partial = [Path(p) for p in partial]
    if previous is not None and any(p.exists() for p in partial):
        log.info("starting over (%s): removing %s", "--force" if force else why, ", ".join(p.name for p in partial if p.exists()))
    for p in partial:
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)
    if write_state:
        write_json(state_path, {"fingerprint": fingerprint})
    return False


def keep_rows(path: str | os.PathLike, keep: Callable[[dict], bool]) -> tuple[list[dict], int]:
    """The rows of a JSONL for which `keep` is true; the file is rewritten atomically without
    the others (when there are any). Returns (kept rows, number dropped)."""
    path = Path(path)
    if not path.exists():
        return [], 0
    kept, dropped = [], 0
    for row in read_jsonl(path):
        if keep(row):
            kept.append(row)
        else:
            dropped += 1
    if dropped:
        rewrite_jsonl(path, kept)
    return kept, dropped
