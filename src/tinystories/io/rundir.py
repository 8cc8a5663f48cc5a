"""The run directory: the only channel between stages, and its manifest.

Every output goes through `atomic_path` (write to a temp name, fsync, rename) so a crash
never leaves a half-written file under its final name. Append-only logs of results
(stories, completions, judgments) use `JsonlWriter`, which repairs a torn last line left by
a kill, so an interrupted stage resumes from what was fully written.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from tinystories.errors import UserError

from tinystories.io.layout import CONFIG, LOCK, MANIFEST  # noqa: F401  (re-exported for callers of rundir)


def _umask() -> int:
    # os.umask can only be read by setting it; set it straight back.
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it is fsynced and renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            if tmp_path.is_file():
                # mkstemp creates 0600; a written file gets the mode the umask gives a new file,
                # so a teammate can read the weights and reports of a shared run.
                os.chmod(tmp_path, 0o666 & ~_umask())
                with open(tmp_path, "rb") as fh:
                    os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg}); fix or delete the file") from None


def rewrite_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    """Replace a JSONL file atomically with `rows` (the resume routines drop stale rows this way)."""
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    """Yield the complete records of a JSONL file; a torn last line (a kill mid-write) is ignored."""
    for _, record in read_jsonl_numbered(path):
        yield record


def read_jsonl_numbered(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """`read_jsonl` with each record's line number, for errors that name the line to fix."""
    path = Path(path)
    with open(path, "r", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.endswith("\n"):
                return  # torn tail from an interrupted append: JsonlWriter drops it on reopen
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}:{lineno}: not valid JSON ({exc.msg}); fix or delete the line") from None
            yield lineno, record


def schema_row(values: dict, fields: tuple[str, ...], name: str) -> dict:
    """`values` as a JSONL row with exactly `fields`, in that order (a missing one None), so
    every row of a file has the same keys and `datasets` reads it as columns. A key outside
    `fields` is a programming error: declare it in `name` (the tuple's name)."""
    unknown = [k for k in values if k not in fields]
    if unknown:
        raise ValueError(f"{', '.join(unknown)}: not in {name}; add to {name} so that every row of the file has the key")
    return {k: values.get(k) for k in fields}


class JsonlWriter:
    """Append-only JSONL with whole-line durability.

    Each record is one write of one line followed by flush (and fsync every `sync_every`
    records), and on open a trailing partial line is cut off, so readers only ever see whole
    records and a resumed stage can trust every line it finds.
    """

    def __init__(self, path: str | os.PathLike, sync_every: int = 1):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._repair_tail()
        self._fh = open(self.path, "a", encoding="utf-8")
        self._sync_every = max(1, sync_every)
        self._since_sync = 0

    def _repair_tail(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, "rb+") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            if size == 0:
                return
            fh.seek(size - 1)
            if fh.read(1) == b"\n":
                return
            # Walk back to the last newline and cut the torn record.
            pos = size - 1
            chunk = 1 << 16
            while pos > 0:
                start = max(0, pos - chunk)
                fh.seek(start)
                buf = fh.read(pos - start)
                idx = buf.rfind(b"\n")
                if idx >= 0:
                    fh.truncate(start + idx + 1)
                    return
                pos = start
            fh.truncate(0)

    def write(self, record: dict) -> None:
        self._fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._fh.flush()
        self._since_sync += 1
        if self._since_sync >= self._sync_every:
            os.fsync(self._fh.fileno())
            self._since_sync = 0

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()

    def __enter__(self) -> "JsonlWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def sha256_path(path: str | os.PathLike) -> str:
    """sha256 of a file, or of a directory's files (relative names and contents, sorted)."""
    path = Path(path)
    h = hashlib.sha256()
    if path.is_dir():
        for sub in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
            h.update(str(sub.relative_to(path)).encode() + b"\0")
            h.update(bytes.fromhex(sha256_path(sub)))
        return h.hexdigest()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class RunDir:
    """A run directory `runs/NAME/` and its manifest (see DESIGN.md for the layout)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def path(self, rel: str) -> Path:
        return self.root / rel

    @contextlib.contextmanager
    def writer_lock(self, command: str) -> Iterator[None]:
        """Hold the run dir's one-writer lock for the duration of a command.

        An flock on `.lock`: the kernel drops it when the process exits or is killed, so a
        stale lock file from a dead process never blocks; the file records who holds it, so
        the second writer is told which process to wait for. A clean exit removes the file."""
        import fcntl

        self.check_usable()
        self.root.mkdir(parents=True, exist_ok=True)
        lock_path = self.root / LOCK
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "another process"
                raise UserError(f"--run-dir {self.root}: in use by {holder}; wait for it to finish or use another --run-dir") from None
            # The holder we waited on may have removed the file between our open and our flock:
            # then we locked an orphan inode, and a third process could lock a new file.
            if not lock_path.exists() or os.stat(lock_path).st_ino != os.fstat(fd).st_ino:
                raise UserError(f"--run-dir {self.root}: another process took the run dir just now; rerun the command")
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"process {os.getpid()} ({command}, since {now_iso()})\n".encode(), 0)
            try:
                yield
            finally:
                lock_path.unlink(missing_ok=True)  # still holding the flock: nobody can be mid-take
        finally:
            os.close(fd)  # closing the descriptor releases the flock

    def writer_active(self) -> bool:
        """True while some process holds the writer lock (a `running` record is then real)."""
        import fcntl

        lock_path = self.root / LOCK
        if not lock_path.exists():
            return False
        fd = os.open(lock_path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    def check_usable(self) -> None:
        """One line instead of a traceback when --run-dir cannot be a run directory."""
        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"--run-dir {self.root}: is a file, not a directory; name a directory (it is created if missing)")
        config = self.root / CONFIG
        if config.exists() and not config.is_file():
            raise UserError(f"{config}: is not a file; remove it (the run dir's config is rewritten on the next command)")
        probe = self.root if self.root.exists() else next((p for p in self.root.parents if p.exists()), Path("."))
        if not os.access(probe, os.W_OK | os.X_OK):
            raise UserError(f"--run-dir {self.root}: {probe} is not writable; fix its permissions or use another --run-dir")

    def ensure(self) -> None:
        for sub in ("logs", "cache/llm", "data"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    def manifest(self) -> dict:
        if not self.manifest_path.exists():
            return {"stages": {}}
        data = read_json(self.manifest_path)
        data.setdefault("stages", {})
        return data

    def stage_record(self, name: str) -> dict | None:
        return self.manifest()["stages"].get(name)

    def update_stage(self, name: str, record: dict) -> None:
        # The manifest is rewritten whole and atomically; stages run one at a time per run dir.
        data = self.manifest()
        data["stages"][name] = record
        write_json(self.manifest_path, data)
