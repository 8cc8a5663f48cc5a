"""One progress bar style for every long stage: done/total, rate, ETA and live counters."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class Bar:
    """Advance with counters shown beside the bar, e.g. `bar.advance(1, failed=2, tok_s=11.3)`.
    `fields` holds the counters of the last update, with bars on or off (tests read it)."""

    def __init__(self, progress: Progress | None = None, task_id=None, unit: str = "it"):
        self._progress = progress
        self._task = task_id
        self._unit = unit
        self.fields: dict[str, object] = {}

    def _fields(self, fields: dict) -> dict:
        self.fields = dict(fields)
        info = "  ".join(f"{k} {v}" for k, v in fields.items())
        speed = self._progress.tasks[0].speed if self._progress and self._progress.tasks else None
        return {"info": info, "rate": f"{speed:.1f} {self._unit}/s" if speed else ""}

    def advance(self, n: float = 1, **fields: object) -> None:
        shown = self._fields(fields)
        if self._progress is not None:
            self._progress.update(self._task, advance=n, **shown)

    def set(self, completed: float, **fields: object) -> None:
        shown = self._fields(fields)
        if self._progress is not None:
            self._progress.update(self._task, completed=completed, **shown)


def bars_enabled() -> bool:
    return os.environ.get("TINYSTORIES_NO_PROGRESS", "") == ""


@contextlib.contextmanager
def progress_bar(description: str, total: int | None, unit: str = "it") -> Iterator[Bar]:
    """A rich bar on stderr; TINYSTORIES_NO_PROGRESS=1 turns bars off (the tests set it)."""
    if not bars_enabled():
        yield Bar()
        return
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    ]
    with Progress(*columns, console=Console(file=sys.stderr), refresh_per_second=4) as prog:
        task = prog.add_task(description, total=total, info="", rate="")
        yield Bar(prog, task, unit)
