"""Build the instruction dataset (Words / Sentence / Features / Summary -> story) for instruct tuning.

    tinystories instruct-data --run-dir runs/quickstart [--set instruct_data.sets_per_story=2]

Input: data/stories.jsonl (one story a line: id, story, words {verb, noun, adjective}, features).
For every story the stage collects four kinds of instruction parts, as in the TinyStoriesInstruct
data of the paper: the prompt words the story really contains (its `words_used`; a story with
none of them gets no Words part), the story's features, one real sentence drawn from
the story (seeded) and a one-to-two-sentence summary written by the LLM layer (prompt template
resources/prompts/summary.txt, versioned, rendered by text/prompts.py; your own file with
`instruct_data.summary_prompt_path`). Each story yields `sets_per_story` instruction sets, each a
random subset of the kinds in random order, rendered one part per line:

    Words: jump, ball, happy
    Features: Dialogue, BadEnding
    Sentence: Tom kicked the ball over the fence.
    Summary: Tom loses his ball and his sister helps him find it.

Outputs:
  data/instruction_dataset.jsonl  {"instruction", "story", "id", "set", "parts": [kinds in order]}
  data/instruct_failed.jsonl      stories whose summary the LLM never got right, with the reason
                                  (written only when there is one, so not a declared output)
  data/instruct_stats.json        counts of part combinations, kinds, parts per set, LLM usage

Summaries are only requested for stories whose sets contain a Summary part and that carry no
usable summary of their own (imported TinyStories shards have one: it is used when it passes the
same checks, see `instruct_data.story_summaries`). A summary that is empty, truncated, too long
or has meta-text ("Sure", "Here is", "story", "summary") is retried with fresh seeds and then
recorded as failed (the story then yields no sets: never a silent gap).
The stage appends results as they arrive to *.partial files and resumes after a kill: stories
already written are skipped and summaries already answered come from the LLM cache.

Converting the published data instead (data/instruct_published.py):
`--set instruct_data.source_path=TinyStoriesInstruct-train.txt` streams that text file (blocks of
`Features:` / `Words:` / `Summary:` / `Random sentence:` / `Story:` lines separated by
`<|endoftext|>`) into the same JSONL layout; no LLM is called then.
"""

from __future__ import annotations

import json
import logging
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from tinystories.data.instruct_parts import KINDS, Tally, clean_summary, contained_words, draw_sets, features_text, render, story_seed, story_sentences, words_text
from tinystories.data.instruct_published import convert_published
from tinystories.errors import UserError
from tinystories.io.layout import INSTRUCT_FAILED, INSTRUCT_PROGRESS, INSTRUCT_STATS, INSTRUCTIONS, LLM_CACHE_DIR, STORIES
from tinystories.io.resume import resume_or_reset
from tinystories.io.rundir import JsonlWriter, read_jsonl, read_jsonl_numbered, sha256_path, write_json
from tinystories.llm.base import Reject
from tinystories.llm.config import SPEND_CAPS
from tinystories.pipeline.ids import derive_seed, fingerprint
from tinystories.text.prompts import absolute_prompt_path, prompt_file_inputs, summary_prompt, summary_template

NAME = "instruct-data"
SECTION = "instruct_data"
USES = ("llm",)

log = logging.getLogger("tinystories.data.instruct_data")


@dataclass
class Config:
    source_path: str = ""  # a published TinyStoriesInstruct .txt to convert instead of summarising data/stories.jsonl; empty = build from our stories
    kinds: list[str] = field(default_factory=lambda: list(KINDS))  # instruction kinds to draw from: words, sentence, features, summary
    probabilities: dict[str, float] = field(default_factory=lambda: {k: 0.5 for k in KINDS})  # chance that each kind enters a set, drawn independently (a kind left out here: 0.5)
    min_parts: int = 1  # fewest parts in a set; a draw with fewer is topped up with random available kinds (0 allows story-only sets)
    sets_per_story: int = 1  # instruction sets drawn per story (distinct combinations where possible)
    max_stories: int = 0  # use only the first N stories (or published blocks); 0 = all
    sentence_min_words: int = 5  # shortest sentence the Sentence part may quote
    sentence_max_words: int = 30  # longest sentence the Sentence part may quote
    summary_max_words: int = 60  # a longer summary is rejected and retried
    summary_max_sentences: int = 3  # so is one with more sentences (the paper's summaries have one or two)
    summary_max_tokens: int = 120  # generation budget for one summary
    summary_temperature: float = 0.7  # sampling temperature for summaries
    summary_prompt_path: str = ""  # your summary prompt, a text file with {story} where the story goes (format of resources/prompts/summary.txt), relative to the current directory; empty = the shipped prompt
    story_summaries: bool = True  # use a story's own "summary" field (e.g. imported TinyStories shards) when it passes the checks, instead of asking the LLM
    llm: dict[str, Any] = field(default_factory=dict)  # overrides of the root llm section for summaries only, e.g. {model: ...}

    def __post_init__(self) -> None:
        self.summary_prompt_path = absolute_prompt_path(self.summary_prompt_path)

    def check(self) -> list[str]:
        problems = []
        unknown = [k for k in self.kinds if k not in KINDS]
        if unknown:
            problems.append(f"kinds: unknown kind(s) {', '.join(unknown)}; use some of {', '.join(KINDS)}")
        if not self.kinds:
            problems.append(f"kinds: name at least one of {', '.join(KINDS)}")
        for k, p in self.probabilities.items():
            if k not in KINDS:
                problems.append(f"probabilities.{k}: unknown kind; use some of {', '.join(KINDS)}")
            elif not 0.0 <= p <= 1.0:
                problems.append(f"probabilities.{k}: {p} is not between 0 and 1")
        if not 0 <= self.min_parts <= len(KINDS):
            problems.append(f"min_parts: must be between 0 and {len(KINDS)}")
        if self.sets_per_story < 1:
            problems.append("sets_per_story: must be at least 1")
        if self.max_stories < 0:
            problems.append("max_stories: must be 0 (all) or more")
        if not 1 <= self.sentence_min_words <= self.sentence_max_words:
            problems.append("sentence_min_words/sentence_max_words: need 1 <= min <= max")
        if min(self.summary_max_words, self.summary_max_sentences, self.summary_max_tokens) < 1:
            problems.append("summary_max_words, summary_max_sentences and summary_max_tokens: must be at least 1")
        try:
            summary_template(self.summary_prompt_path)
        except UserError as exc:
            problems.append(f"summary_prompt_path: {exc}")
        return problems


def inputs(cfg) -> list[str]:
    if cfg.instruct_data.source_path:
        # An absolute path: RunDir.path() leaves it as is, so the executor hashes the user's file.
        return [str(Path(cfg.instruct_data.source_path).expanduser().resolve())]
    return [STORIES, *prompt_file_inputs(cfg.instruct_data.summary_prompt_path)]


def outputs(cfg) -> list[str]:
    # INSTRUCT_FAILED is no output: it is written only when a summary failed (never empty),
    # and instruct_stats.json counts the failures either way.
    return [INSTRUCTIONS, INSTRUCT_STATS]


# -- reading data/stories.jsonl ---------------------------------------------------------------


def iter_stories(path: Path, limit: int = 0) -> Iterator[dict]:
    """Stories with their line numbers checked; a torn last line (a kill mid-write) is ignored."""
    seen: set[str] = set()
    n = 0
    for lineno, rec in read_jsonl_numbered(path):
        if not isinstance(rec, dict) or not isinstance(rec.get("story"), str) or not rec["story"].strip():
            raise UserError(f"{path}:{lineno}: no 'story' text; every line needs {{\"id\": ..., \"story\": \"...\"}}")
        sid = rec.get("id", lineno)
        key = str(sid)
        if key in seen:
            raise UserError(f"{path}:{lineno}: duplicate story id {sid!r}; story ids must be unique")
        seen.add(key)
        rec["id"] = sid
        yield rec
        n += 1
        if limit and n >= limit:
            return


# -- the stage --------------------------------------------------------------------------------


def run(cfg, rundir, force: bool = False) -> dict:
    if cfg.instruct_data.source_path:
        return _metrics(convert_published(cfg, rundir))
    return _build_from_stories(cfg, rundir, force)


def _fingerprint(cfg, stories: Path) -> str:
    """Everything that changes what the partial files hold: a change means they are stale."""
    # where the prompt file lies does not matter, its text does (in the template version)
    return fingerprint({
        "instruct_data": {k: v for k, v in asdict(cfg.instruct_data).items() if k != "summary_prompt_path"},
        "llm": {k: v for k, v in asdict(cfg.llm_for(SECTION)).items() if k not in SPEND_CAPS},
        "seed": cfg.seed,
        "stories": sha256_path(stories),
        "template": summary_template(cfg.instruct_data.summary_prompt_path)[1],
    })


class _Partials:
    """The *.partial files the stage appends to, and what a resumed run finds in them."""

    def __init__(self, rundir):
        self.out = Path(str(rundir.path(INSTRUCTIONS)) + ".partial")
        self.failed = Path(str(rundir.path(INSTRUCT_FAILED)) + ".partial")
        self.progress = rundir.path(INSTRUCT_PROGRESS)
        self.tally = Tally()
        self.done: set[str] = set()
        self.n_failed = 0

    def resume(self, fingerprint: str, force: bool, sets_per_story: int) -> int:
        """Continue what belongs to this exact config and input, else start over (cheaply:
        answered summaries still come from the LLM cache). Returns the stories already done."""
        resume_or_reset(self.progress, fingerprint, force, [self.out, self.failed])
        if self.failed.exists():
            JsonlWriter(self.failed).close()  # cut a torn tail before reading
            for rec in read_jsonl(self.failed):
                self.done.add(str(rec["id"]))
                self.n_failed += 1
        if self.out.exists():
            self.done |= _load_partial(self.out, self.tally, sets_per_story)
        return len(self.done)

    def publish(self, rundir, stats: dict) -> None:
        """Stats first, then rename the partials into place, then drop the resume marker. A
        run without failures leaves no failed list (an older one would describe another run)."""
        write_json(rundir.path(INSTRUCT_STATS), stats)
        if self.n_failed:
            os.replace(self.failed, rundir.path(INSTRUCT_FAILED))
        else:
            self.failed.unlink(missing_ok=True)
            rundir.path(INSTRUCT_FAILED).unlink(missing_ok=True)
        os.replace(self.out, rundir.path(INSTRUCTIONS))
        self.progress.unlink(missing_ok=True)


def _load_partial(path: Path, tally: Tally, sets_per_story: int) -> set[str]:
    """Ids of the stories fully written to a partial dataset, counted into `tally`.

    A story's sets are written as consecutive lines, so only the last story can be cut short
    by a kill; if it has fewer than `sets_per_story` lines it is truncated away and redone
    (its summary comes back from the cache)."""
    done: set[str] = set()
    group: list[dict] = []
    group_start = 0
    offset = 0
    with open(path, "rb") as fh:
        for raw in fh:
            if not raw.endswith(b"\n"):
                break  # torn tail
            rec = json.loads(raw)
            if group and str(rec["id"]) != str(group[0]["id"]):
                for r in group:
                    tally.add(r)
                tally.stories += 1
                done.add(str(group[0]["id"]))
                group, group_start = [], offset
            group.append(rec)
            offset += len(raw)
    if group and len(group) == sets_per_story:
        for r in group:
            tally.add(r)
        tally.stories += 1
        done.add(str(group[0]["id"]))
        group_start = offset
    with open(path, "rb+") as fh:
        fh.truncate(group_start)
    return done


def plan_story(rec: dict, ic: Config, seed: int) -> dict:
    """Everything about one story except its summary, decided by its own seeded RNG."""
    available = [k for k in KINDS if k in ic.kinds]
    rng = random.Random(story_seed(seed, rec["id"]))
    values: dict[str, str] = {}
    contained, missing = contained_words(rec)
    if "words" in available and words_text(contained):
        values["words"] = words_text(contained)
    if "features" in available and features_text(rec.get("features")):
        values["features"] = features_text(rec.get("features"))
    if "sentence" in available:
        sentences = story_sentences(rec["story"], ic.sentence_min_words, ic.sentence_max_words)
        if sentences:
            values["sentence"] = rng.choice(sentences)
    if "summary" in available and ic.story_summaries and isinstance(rec.get("summary"), str):
        try:
            values["summary"] = clean_summary(rec["summary"], ic.summary_max_words, None, ic.summary_max_sentences)
        except Reject:
            pass  # the LLM writes one instead
    kinds = [k for k in KINDS if k in values or (k == "summary" and "summary" in available)]
    sets = draw_sets(rng, kinds, ic)
    wants_summary = any("summary" in s for s in sets)
    return {
        "rec": rec,
        "values": values,
        "sets": sets,
        "words_missing": missing,
        "needs_summary": wants_summary and "summary" not in values,
        "own_summary": wants_summary and "summary" in values,
        "ready": False,
        "error": None,
    }


class _InOrderWriter:
    """Plans the stories, asks for the summaries they need and writes the sets in story order.

    Results are written in story order whatever order the LLM answers in, so the output does
    not depend on concurrency; answered-but-unwritten summaries survive a kill in the cache.
    """

    def __init__(self, ic: Config, seed: int, mode: str, stories: Path, partials: _Partials, template: tuple[str, str]):
        self.ic, self.seed, self.mode, self.stories, self.partials = ic, seed, mode, stories, partials
        self.template = template  # (text, version), read once so that every summary uses the same prompt
        self.pending: dict[str, dict] = {}
        self.counters = {"stories": 0, "no_parts": 0, "no_sentence": 0, "words_left_out": 0, "summaries_requested": 0, "story_summaries": 0}
        self.out = JsonlWriter(partials.out)
        self.failed: JsonlWriter | None = None  # opened with the first failure: no empty file

    def close(self) -> None:
        self.out.close()
        if self.failed is not None:
            self.failed.close()

    def count_summaries_needed(self) -> int:
        """A planning pass: plans are seeded per story, so counting them gives the progress bar
        its total (and its ETA), and a run that needs no summary never loads an LLM."""
        if "summary" not in self.ic.kinds:
            return 0
        done = self.partials.done
        return sum(1 for rec in iter_stories(self.stories, self.ic.max_stories) if str(rec["id"]) not in done and plan_story(rec, self.ic, self.seed)["needs_summary"])

    def requests(self) -> Iterator:
        """Plan every story not yet done; write those that need no summary, yield the requests
        for the others."""
        from tinystories.llm import Request

        ic = self.ic
        template_text, template_version = self.template
        for rec in iter_stories(self.stories, ic.max_stories):
            self.counters["stories"] += 1
            key = str(rec["id"])
            if key in self.partials.done:
                continue
            entry = plan_story(rec, ic, self.seed)
            if "sentence" in ic.kinds and "sentence" not in entry["values"]:
                self.counters["no_sentence"] += 1
            if "words" in ic.kinds and entry["words_missing"]:
                self.counters["words_left_out"] += 1
            self.counters["story_summaries"] += entry["own_summary"]
            self.pending[key] = entry
            if not entry["needs_summary"]:
                entry["ready"] = True
                self.flush()
                continue
            prompt = summary_prompt(rec["story"], template_text)
            self.counters["summaries_requested"] += 1
            common = dict(key=key, max_tokens=ic.summary_max_tokens, temperature=ic.summary_temperature, seed=story_seed(self.seed + 1, rec["id"]), template_version=template_version)
            if self.mode == "chat":
                yield Request(messages=({"role": "user", "content": prompt},), **common)
            else:
                yield Request(prompt=prompt, stop=("\n\n",), **common)

    def validate(self, response) -> str:
        return clean_summary(response.text, self.ic.summary_max_words, response.finish_reason, self.ic.summary_max_sentences)

    def on_result(self, response) -> None:
        entry = self.pending[response.key]
        entry["ready"] = True
        entry["attempts"] = response.attempts
        if response.ok:
            entry["values"]["summary"] = response.value
        else:
            entry["error"] = response.error
            entry["text"] = response.text
        self.flush()

    def flush(self) -> None:
        """Write the stories at the head of the queue whose summaries are settled."""
        tally = self.partials.tally
        while self.pending:
            key, entry = next(iter(self.pending.items()))
            if not entry["ready"]:
                return
            del self.pending[key]
            rec = entry["rec"]
            if entry["error"] is not None:
                if self.failed is None:
                    self.failed = JsonlWriter(self.partials.failed)
                self.failed.write({"id": rec["id"], "reason": entry["error"], "attempts": entry.get("attempts", 0), "last_reply": (entry.get("text") or "")[:500]})
                self.partials.n_failed += 1
                continue
            if not entry["sets"]:
                self.counters["no_parts"] += 1
                continue
            tally.stories += 1
            for i, kinds in enumerate(entry["sets"]):
                parts = [(k, entry["values"][k]) for k in kinds]
                row = {"instruction": render(parts), "story": rec["story"].strip(), "id": rec["id"], "set": i, "parts": kinds}
                self.out.write(row)
                tally.add(row)

    def write_all(self, llm_cfg, cache_dir) -> dict:
        """Write every story's sets, asking the LLM for the summaries; returns the LLM's usage."""
        to_summarise = self.count_summaries_needed()
        usage: dict = {"model": None}
        if to_summarise:
            from tinystories.llm import make_client

            client = make_client(llm_cfg, cache_dir)
            try:
                client.complete(self.requests(), validate=self.validate, on_result=self.on_result, total=to_summarise, description="summaries", collect=False)
                usage = {"model": client.describe(), **client.stats.as_dict()}
            finally:
                client.close()
        else:
            for _ in self.requests():
                raise RuntimeError("instruct-data: the planning pass and the writing pass disagree about summaries")
        self.flush()
        if self.pending:
            raise RuntimeError(f"instruct-data: {len(self.pending)} stories got no answer from the LLM client")
        return usage


def _check_written(writer: _InOrderWriter, rundir, stories: Path) -> None:
    counters, partials = writer.counters, writer.partials
    if counters["stories"] == 0:
        raise UserError(f"instruct-data: {stories} holds no stories; run `tinystories generate --run-dir {rundir.root}` (or import) first")
    if partials.tally.sets == 0:
        raise UserError(
            f"instruct-data: no instruction set was written from {stories} "
            f"({counters['stories']} stories, {partials.n_failed} failed summaries, {counters['no_parts']} without usable parts); "
            f"see {partials.failed} and the llm settings"
        )


def _build_stats(writer: _InOrderWriter, resumed: int, usage: dict) -> dict:
    counters, tally = writer.counters, writer.partials.tally
    return {
        "source": "stories",
        "stories_read": counters["stories"],
        "resumed_stories": resumed,
        "failed_summaries": writer.partials.n_failed,
        "stories_without_parts": counters["no_parts"],
        "stories_without_sentence": counters["no_sentence"],
        "stories_words_left_out": counters["words_left_out"],  # stories lacking some prompt words: their Words part lists only the others (none: no Words part)
        "summaries_requested": counters["summaries_requested"],
        "summaries_from_stories": counters["story_summaries"],
        "summary_words_mean": round(tally.summary_words / tally.summaries, 2) if tally.summaries else None,
        "template_version": writer.template[1],
        "llm": usage,
        **tally.as_dict(),
    }


def _build_from_stories(cfg, rundir, force: bool) -> dict:
    ic: Config = cfg.instruct_data
    stories = rundir.path(STORIES)
    if not stories.exists():
        raise UserError(f"instruct-data: missing {stories}; run `tinystories generate --run-dir {rundir.root}` first (or set instruct_data.source_path)")
    template = summary_template(ic.summary_prompt_path)
    partials = _Partials(rundir)
    resumed = partials.resume(_fingerprint(cfg, stories), force, ic.sets_per_story)
    if resumed:
        log.info("resuming: %d stories already written", resumed)
    llm_cfg = cfg.llm_for(SECTION)
    writer = _InOrderWriter(ic, derive_seed(cfg.seed, NAME), llm_cfg.mode, stories, partials, template)
    try:
        usage = writer.write_all(llm_cfg, rundir.path(LLM_CACHE_DIR))
    finally:
        writer.close()
    _check_written(writer, rundir, stories)
    stats = _build_stats(writer, resumed, usage)
    partials.publish(rundir, stats)
    return _metrics(stats)


def _metrics(stats: dict) -> dict:
    keys = ("source", "stories_read", "stories_with_sets", "sets", "failed_summaries", "resumed_stories", "summaries_requested", "blocks", "skipped_blocks")
    out = {k: stats[k] for k in keys if k in stats}
    llm = stats.get("llm") or {}
    for k in ("backend_calls", "cache_hits", "rejected_attempts"):
        if k in llm:
            out[f"llm_{k}"] = llm[k]
    return out
