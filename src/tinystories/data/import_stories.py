"""Import stories you already have (e.g. the published TinyStories) as the story dataset.

    tinystories import --run-dir runs/ts --set generate.num_stories=0 --set import_.path=TinyStoriesV2-GPT4-train.txt

Three layouts are read, as a stream (a 2 GB file never sits in memory):
  txt     stories separated by `<|endoftext|>` (TinyStories-train.txt, TinyStoriesV2-GPT4-*.txt)
  jsonl   one JSON object a line with the story in a text field (`text_field`)
  shards  a directory of TinyStories data*.json shards (JSON lists of {"story", "instruction":
          {"prompt:", "words", "features"}, "summary", "source"}), loaded one shard at a time;
          words, features, summary, source and prompt are kept as provenance.
The stories go through the same filters (the chat-reply ones are off by default), exact and
near-duplicate removal and statistics as generated ones, and land in the same files:
data/stories.jsonl, data/rejected.jsonl, data/tinystories_dataset.txt, data/stats.json. Story
ids are `i` + the story's position in the input, so an interrupted import resumes where it
stopped. With `import_.path` empty the stage does nothing (generation makes the dataset).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from tinystories.data.checks import FilterOptions
from tinystories.data.dataset_writer import DATASET_FILES, DatasetBuilder, batched, resume_dataset
from tinystories.data.stats import stats_table
from tinystories.errors import UserError
from tinystories.io.layout import EOS, IMPORT_STATE, VOCABULARY
from tinystories.io.rundir import RunDir
from tinystories.pipeline.ids import derive_seed, fingerprint
from tinystories.progress import progress_bar
from tinystories.text.vocabulary import load_vocabulary

NAME = "import"
SECTION = "import_"
USES: tuple[str, ...] = ("vocab",)

ID_PREFIX = "i"
FORMATS = ("auto", "txt", "jsonl", "shards")
CHUNK_CHARS = 1 << 20

log = logging.getLogger("tinystories.import")


@dataclass
class Config(FilterOptions):
    path: str = ""  # file or directory to import; empty = this stage does nothing
    format: str = "auto"  # auto | txt | jsonl | shards (auto: a directory or .json = shards, .jsonl = jsonl, else txt)
    text_field: str = ""  # jsonl/shards: the field holding the story; empty = "story", else "text"
    delimiter: str = EOS  # txt: the separator between stories
    limit: int = 0  # import at most the first N stories of the input (0 = all)
    use_vocabulary: bool = True  # measure vocabulary simplicity against data/vocabulary.json (needs the vocab stage)
    # Defaults that differ from generation: published data is not a raw chat reply.
    min_words: int = 20  # reject stories with fewer words than this
    reject_preamble: bool = False  # reject chat preambles, meta-text and markdown (LLM-reply checks)

    def check(self) -> list[str]:
        problems = self.filter_problems()
        if self.format not in FORMATS:
            problems.append(f"format: {self.format!r} is not one of {', '.join(FORMATS)}")
        if self.limit < 0:
            problems.append("limit: must be 0 (all) or more")
        if not self.delimiter:
            problems.append("delimiter: must not be empty")
        return problems


# --- readers: each yields (text, provenance) in input order -------------------------------------


def read_txt(path: Path, delimiter: str = EOS, chunk_chars: int = CHUNK_CHARS) -> Iterator[tuple[str, dict]]:
    """Stories between delimiters, read in chunks; a delimiter split across two chunks is found
    because the unfinished tail of one chunk is kept and searched again with the next."""
    buf = ""
    n = 0
    try:
        with open(path, "r", encoding="utf-8") as fh:
            while True:
                chunk = fh.read(chunk_chars)
                if not chunk:
                    break
                buf += chunk
                parts = buf.split(delimiter)
                buf = parts.pop()
                for part in parts:
                    if part.strip():
                        yield part.strip(), {"source_file": path.name, "source_index": n}
                        n += 1
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte {exc.start} of a read block); convert the file to UTF-8") from None
    if buf.strip():
        yield buf.strip(), {"source_file": path.name, "source_index": n}


def _field(rec: dict, text_field: str, where: str) -> str:
    if text_field:
        value = rec.get(text_field)
        if not isinstance(value, str):
            raise UserError(f"{where}: no text field {text_field!r}; set --set import_.text_field=NAME to the field that holds the story")
        return value
    for name in ("story", "text"):
        if isinstance(rec.get(name), str):
            return rec[name]
    raise UserError(f"{where}: no \"story\" or \"text\" field; set --set import_.text_field=NAME to the field that holds the story")


_PROMPT_WORDS = re.compile(r'the verb "([^"]+)", the noun "([^"]+)" and the adjective "([^"]+)"', re.IGNORECASE)


def provenance(rec: dict) -> dict:
    """Words, features, summary, source and prompt of a TinyStories record, where present."""
    out: dict = {}
    instruction = rec.get("instruction") if isinstance(rec.get("instruction"), dict) else {}
    prompt = instruction.get("prompt:") or instruction.get("prompt") or rec.get("prompt")
    words = instruction.get("words", rec.get("words"))
    m = _PROMPT_WORDS.search(prompt) if isinstance(prompt, str) else None
    if m:
        out["words"] = {"verb": m.group(1), "noun": m.group(2), "adjective": m.group(3)}
    elif isinstance(words, dict):
        out["words"] = {k: v for k, v in words.items() if k in ("noun", "verb", "adjective") and isinstance(v, str)}
    elif isinstance(words, list) and words:
        out["words"] = [str(w) for w in words]
    features = instruction.get("features", rec.get("features"))
    if isinstance(features, list):
        out["features"] = [str(f) for f in features]
    for key in ("summary", "source"):
        if rec.get(key) is not None:
            out[key] = rec[key]
    if isinstance(prompt, str):
        out["prompt"] = prompt
    return out


def read_jsonl_stories(path: Path, text_field: str) -> Iterator[tuple[str, dict]]:
    with open(path, "r", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{where}: not valid JSON ({exc.msg}); fix or remove the line") from None
            if not isinstance(rec, dict):
                raise UserError(f"{where}: expected a JSON object with the story in a text field; fix the line")
            yield _field(rec, text_field, where), {"source_file": path.name, "source_line": lineno, **provenance(rec)}


def shard_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(path.glob("data*.json")) or sorted(path.glob("*.json"))
    if not files:
        raise UserError(f"import_.path {path}: no *.json shards in this directory; point it at the TinyStories data*.json folder or a file")
    return files


def read_shards(path: Path, text_field: str) -> Iterator[tuple[str, dict]]:
    for shard in shard_files(path):
        try:
            with open(shard, "r", encoding="utf-8") as fh:
                items = json.load(fh)  # one shard at a time: memory is bounded by the largest shard
        except json.JSONDecodeError as exc:
            raise UserError(f"{shard}:{exc.lineno}: not valid JSON ({exc.msg}); re-download or remove the shard") from None
        if not isinstance(items, list):
            raise UserError(f"{shard}: expected a JSON list of story objects; use format jsonl or txt for other layouts")
        for n, rec in enumerate(items):
            where = f"{shard}: item {n}"
            if not isinstance(rec, dict):
                raise UserError(f"{where}: expected an object with a \"story\" field")
            yield _field(rec, text_field, where), {"source_file": shard.name, "source_index": n, **provenance(rec)}
        del items


def detect_format(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    if path.is_dir() or path.suffix == ".json":
        return "shards"
    if path.suffix == ".jsonl":
        return "jsonl"
    return "txt"


def read_stories(path: Path, icfg: Config) -> Iterator[tuple[str, dict]]:
    fmt = detect_format(path, icfg.format)
    if fmt == "txt":
        return read_txt(path, icfg.delimiter)
    if fmt == "jsonl":
        return read_jsonl_stories(path, icfg.text_field)
    return read_shards(path, icfg.text_field)


# --- the stage ---------------------------------------------------------------------------------


def inputs(cfg) -> list[str]:
    icfg = cfg.import_
    out = [VOCABULARY] if icfg.path and icfg.use_vocabulary else []
    source = Path(icfg.path).expanduser().resolve() if icfg.path else None
    # The source's sha256 goes into the manifest (an absolute path stays absolute under the run
    # dir), so editing the imported file reruns the stage; a missing one is left to run()'s clearer error.
    if source is not None and source.exists():
        out.append(str(source))
    return out


def outputs(cfg) -> list[str]:
    return list(DATASET_FILES) if cfg.import_.path else []


def _source_path(icfg: Config) -> Path:
    path = Path(icfg.path).expanduser()
    if not path.exists():
        raise UserError(f"import_.path {path}: no such file or directory; set --set import_.path=FILE to your stories")
    fmt = detect_format(path, icfg.format)
    if path.is_dir() and fmt != "shards":
        raise UserError(f"import_.path {path} is a directory but import_.format is {fmt}; use format shards or point at a file")
    return path


def _fingerprint(cfg, path: Path) -> str:
    icfg = dataclasses.asdict(cfg.import_)
    for k in ("limit", "stats_sample", "use_vocabulary"):
        icfg.pop(k)
    files = shard_files(path) if path.is_dir() else [path]
    payload = {
        "import": icfg,
        "source": [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files],
    }
    return fingerprint(payload)


BATCH = 1024  # stories per pass through the checks and dedup


def _read_batches(path: Path, icfg: Config) -> Iterator[list[tuple[str, str, dict]]]:
    """The input's (id, text, provenance) in batches, the first batch already read: a file of the
    wrong format, without a story or with a bad line among its first stories fails here, before
    the stage has created, changed or removed anything in the run dir."""
    batches = batched(_numbered(read_stories(path, icfg), icfg.limit), BATCH)
    first = next(batches, None)
    if first is None:
        raise UserError(f"import_.path {path}: no stories found (format {detect_format(path, icfg.format)}); check the file and import_.format")
    return itertools.chain([first], batches)


def _import_all(builder: DatasetBuilder, batches: Iterator[list[tuple[str, str, dict]]], limit: int) -> int:
    """Feed the stories not yet kept or rejected through the builder; returns how many were read."""
    read = 0
    with progress_bar("import", limit or None, unit="story") as bar:
        for batch in batches:
            todo = [
                {"id": sid, "text": text, **prov}
                for sid, text, prov in batch
                if sid not in builder.done  # already kept or rejected before an interruption
            ]
            builder.add(todo, format_checks=True)
            read += len(batch)
            bar.advance(len(batch), kept=builder.kept)
    return read


def run(cfg, rundir: RunDir, force: bool = False) -> dict:
    icfg: Config = cfg.import_
    if not icfg.path:
        log.info("import: import_.path is empty, nothing to import")
        return {"kept": 0, "skipped": "import_.path is empty"}
    path = _source_path(icfg)
    batches = _read_batches(path, icfg)  # a bad input is named first: it is what the user must fix either way
    vocab = load_vocabulary(rundir.path(VOCABULARY)) if icfg.use_vocabulary else None
    resume_dataset(
        rundir, IMPORT_STATE, _fingerprint(cfg, path), force, ID_PREFIX,
        foreign="holds generated stories; import into a fresh --run-dir or delete the data/ files first",
        why="import: the input or the filter options changed",
    )
    # Rare fsyncs: an import is cheap to redo, and fsync per 64 lines would dominate its time.
    builder = DatasetBuilder(rundir, icfg, seed=derive_seed(cfg.seed, NAME), sync_every=8192).open()
    if builder.done:
        log.info("import: resuming after %d stories already on disk", len(builder.done))
    try:
        read = _import_all(builder, batches, icfg.limit)
    finally:
        builder.close()
    stats = builder.finish(vocab, attempted=read)
    print(stats_table(stats))
    return {
        "kept": stats["kept"],
        "rejected": stats["rejected"],
        "read": read,
        "rejected_by_reason": stats["rejected_by_reason"],
        "words_mean": stats["words_per_story"]["mean"],
        "all_words_share": stats["all_requested_words_share"],
        "near_duplicate_rate": stats["near_duplicate_rate"],
        "format": detect_format(path, icfg.format),
    }


def _numbered(stream: Iterator[tuple[str, dict]], limit: int) -> Iterator[tuple[str, str, dict]]:
    for n, (text, prov) in enumerate(stream):
        if limit and n >= limit:
            return
        yield f"{ID_PREFIX}{n:07d}", text, prov
