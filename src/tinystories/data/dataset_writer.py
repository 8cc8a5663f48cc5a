"""The story dataset on disk, shared by the two dataset stages (`generate` and `import`).

`DatasetBuilder` checks, dedups and appends stories as they arrive: kept ones to
data/stories.jsonl, the rest with their reason to data/rejected.jsonl. On resume it rebuilds
the dedup index from the kept stories; at the end it writes the story file
(data/tinystories_dataset.txt, text/storyfile.py), data/stats.json and the dataset card
data/README.md (publish/dataset_card.py) atomically.
Files are created on the first record written to them (stories.jsonl, a declared output, at
the end too), so a run that fails before its first story leaves no empty files behind, and
rejected.jsonl exists only when a story was rejected (it is therefore not a declared output).
Each file has one schema, every row the same keys (STORY_FIELDS, REJECTED_FIELDS; a value a
story lacks is null), so `datasets` and pandas read them as plain columns.

`resume_dataset` is the staleness rule of the two stages: the files on disk are continued only
when they were written under the same fingerprint (io/resume.resume_or_reset), and stories of
the other stage (another id prefix) are never mixed in.

Memory: the dedup index (data/dedup.py, about 1 KB per kept story) plus the set of ids already
done (~70 bytes per story); everything else streams a record at a time.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator

from tinystories.data.checks import FilterOptions, StoryFilter, Verdict
from tinystories.data.dedup import Deduper, TokenBatch
from tinystories.data.stats import StatsAccumulator
from tinystories.errors import UserError
from tinystories.io.layout import DATASET_CARD, REJECTED, STORIES, STORY_FILE, STORY_STATS
from tinystories.io.resume import resume_or_reset
from tinystories.io.rundir import JsonlWriter, read_jsonl, schema_row, write_json
from tinystories.publish.dataset_card import IMPORTED, write_dataset_card
from tinystories.text.storyfile import write_story_file
from tinystories.text.words import vocabulary_forms

# The dataset stages' declared outputs; rejected.jsonl is written only when there is a rejection.
DATASET_FILES = (STORIES, STORY_FILE, STORY_STATS)
# The keys of every data/stories.jsonl row: id and story, then the provenance a stage knows
# (generate: the request and the reply's counts; import: where in the source the story was),
# then whether the story uses its prompt words.
PROVENANCE_FIELDS = (
    "words", "features", "prompt", "model", "backend", "seed", "prompt_tokens", "completion_tokens", "finish_reason", "attempts",
    "summary", "source", "source_file", "source_line", "source_index",
)  # fmt: skip
STORY_FIELDS = ("id", "story", *PROVENANCE_FIELDS, "words_used", "words_complete")
# The keys of every data/rejected.jsonl row (duplicate_of: the kept story a near duplicate repeats).
REJECTED_FIELDS = ("id", "reason", "detail", "duplicate_of", "words", "features", "seed", "text")


def resume_dataset(rundir, state_rel: str, fingerprint: str, force: bool, id_prefix: str, foreign: str, why: str) -> bool:
    """True when the dataset files on disk may be continued; otherwise they are removed.

    Stories whose ids lack `id_prefix` were written by the other dataset stage: that is a
    UserError (`foreign` says what to do), checked before anything is removed.
    """
    stories = rundir.path(STORIES)
    if stories.exists():
        first = next((rec["id"] for rec in read_jsonl(stories)), None)
        if first is not None and not str(first).startswith(id_prefix):
            raise UserError(f"{stories} {foreign}")
    return resume_or_reset(rundir.path(state_rel), fingerprint, force, [rundir.path(rel) for rel in (*DATASET_FILES, REJECTED)], why=why)


class DatasetBuilder:
    """Filter, dedup and append stories; resume from what is on disk; finish with txt + stats."""

    def __init__(self, rundir, options: FilterOptions, seed: int = 0, sync_every: int = 64):
        self.rundir = rundir
        self.sync_every = sync_every  # fsync the appenders every N records (a kill loses nothing flushed; a power cut at most N)
        self.opts = options
        self.seed = seed
        self.filter = StoryFilter(options)
        self.dedup = Deduper(options.dedup, options.dedup_threshold, options.num_perm, options.shingle_size)
        self.done: set[str] = set()
        self.kept = 0
        self.rejected = Counter()
        self._writers: dict[str, JsonlWriter] = {}

    @property
    def stories_path(self) -> Path:
        return self.rundir.path(STORIES)

    @property
    def rejected_path(self) -> Path:
        return self.rundir.path(REJECTED)

    def _writer(self, rel: str) -> JsonlWriter:
        """The appender of a run-dir JSONL, opened (and its torn last line cut) on first use."""
        if rel not in self._writers:
            self._writers[rel] = JsonlWriter(self.rundir.path(rel), sync_every=self.sync_every)
        return self._writers[rel]

    def open(self) -> "DatasetBuilder":
        """Rebuild the state (ids done, counts, dedup index) from the files on disk."""
        if self.stories_path.exists():
            self._writer(STORIES)
            for batch in batched(read_jsonl(self.stories_path), 1024):
                ids = [rec["id"] for rec in batch]
                self.done.update(ids)
                self.kept += len(batch)
                tb = TokenBatch([rec["story"] for rec in batch])
                self.dedup.process_hashes(ids, tb.hashes, tb.counts, insert_only=True)
        if self.rejected_path.exists():
            self._writer(REJECTED)
            for rec in read_jsonl(self.rejected_path):
                self.done.add(rec["id"])
                self.rejected[rec["reason"]] += 1
        return self

    def close(self) -> None:
        for w in self._writers.values():
            w.close()

    def reject(self, story_id: str, reason: str, text: str | None, detail: str = "", **extra) -> None:
        """A data/rejected.jsonl row; `extra` holds other REJECTED_FIELDS (words, seed, ...)."""
        values = {"id": story_id, "reason": reason, "detail": detail, **extra, "text": text or ""}
        self._writer(REJECTED).write(schema_row(values, REJECTED_FIELDS, "REJECTED_FIELDS"))
        self.done.add(story_id)
        self.rejected[reason] += 1

    def add(self, candidates: list[dict], format_checks: bool = True) -> None:
        """Each candidate: {"id", "text", "finish_reason"?, "words"?, ...provenance}; appended in order."""
        if not candidates:
            return
        verdicts, tb, ok = self.filter.check_batch(candidates, format_checks=format_checks)
        for cand, v in zip(candidates, verdicts):
            if v.reason:
                self.reject(cand["id"], v.reason, cand["text"], v.detail, **_request_fields(cand))
        passed = [(candidates[i], verdicts[i]) for i in ok]
        flat, lengths = tb.select(ok)
        dups = self.dedup.process_hashes([c["id"] for c, _ in passed], flat, lengths)
        for (cand, v), dup in zip(passed, dups):
            if dup is not None:
                reason, of, sim = dup
                self.reject(cand["id"], reason, v.text, f"similarity {sim}", duplicate_of=of, **_request_fields(cand))
                continue
            self._keep(cand, v)

    def _keep(self, cand: dict, verdict: Verdict) -> None:
        values = {k: val for k, val in cand.items() if k != "text"}
        values["story"] = verdict.text
        if verdict.words_used is not None:
            values["words_used"] = verdict.words_used
            values["words_complete"] = all(verdict.words_used.values())
        self._writer(STORIES).write(schema_row(values, STORY_FIELDS, "STORY_FIELDS"))
        self.done.add(cand["id"])
        self.kept += 1

    def finish(self, vocab: dict | None, attempted: int | None = None) -> dict:
        """Write the story file and stats from the files on disk (atomic), return the stats."""
        self._writer(STORIES)  # an output even when no story was kept
        self.close()
        acc = StatsAccumulator(vocabulary_forms(vocab) if vocab else None, self.opts.stats_sample, self.seed)
        origins: Counter = Counter()  # the model that wrote each kept story, for the dataset card

        def kept_stories() -> Iterator[str]:
            for rec in read_jsonl(self.stories_path):
                acc.add(rec)
                origins[rec.get("model") or IMPORTED] += 1
                yield rec["story"]

        write_story_file(self.rundir.path(STORY_FILE), kept_stories())
        rejected = Counter(rec["reason"] for rec in read_jsonl(self.rejected_path)) if self.rejected_path.exists() else Counter()
        stats = acc.result(rejected, attempted)
        write_json(self.rundir.path(STORY_STATS), stats)
        write_dataset_card(self.rundir.path(DATASET_CARD), stats, origins)
        return stats


def _request_fields(cand: dict) -> dict:
    """What a rejected row keeps of a candidate's request: its prompt words, features and seed."""
    return {k: cand.get(k) for k in ("words", "features", "seed")}


def batched(items: Iterable, n: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) >= n:
            yield batch
            batch = []
    if batch:
        yield batch
