"""Build the instruction dataset (Words / Sentence / Features / Summary -> story) for instruct tuning.

    tinystories instruct-data --run-dir runs/quickstart [--set instruct_data.sets_per_story=2]

Input: data/stories.jsonl (one story a line: id, story, words {verb, noun, adjective}, features).
For every story the stage collects four kinds of instruction parts, as in the TinyStoriesInstruct
data of the paper: the three prompt words, the story's features, one real sentence drawn from
the story (seeded) and a one-to-two-sentence summary written by the LLM layer (prompt template
data/prompts/summary.txt, versioned). Each story yields `sets_per_story` instruction sets, each a
random subset of the kinds in random order, rendered one part per line:

    Words: jump, ball, happy
    Features: Dialogue, BadEnding
    Sentence: Tom kicked the ball over the fence.
    Summary: Tom loses his ball and his sister helps him find it.

Outputs:
  data/instruction_dataset.jsonl  {"instruction", "story", "id", "set", "parts": [kinds in order]}
  data/instruct_failed.jsonl      stories whose summary the LLM never got right, with the reason
  data/instruct_stats.json        counts of part combinations, kinds, parts per set, LLM usage

Summaries are only requested for stories whose sets contain a Summary part and that carry no
usable summary of their own (imported TinyStories shards have one: it is used when it passes the
same checks, see `instruct_data.story_summaries`). A summary that is empty, truncated, too long
or has meta-text ("Sure", "Here is", "story", "summary") is retried with fresh seeds and then
recorded as failed (the story then yields no sets: never a silent gap).
The stage appends results as they arrive to *.partial files and resumes after a kill: stories
already written are skipped and summaries already answered come from the LLM cache.

Converting the published data instead (the TinyStoriesInstruct reader, `read_tinystories_instruct`):
`--set instruct_data.source_path=TinyStoriesInstruct-train.txt` streams that text file (blocks of
`Features:` / `Words:` / `Summary:` / `Random sentence:` / `Story:` lines separated by
`<|endoftext|>`) into the same JSONL layout; no LLM is called then.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterator

from tinystories.errors import UserError
from tinystories.llm.base import Reject

NAME = "instruct-data"
SECTION = "instruct_data"
USES = ("llm",)

STORIES = "data/stories.jsonl"
DATASET = "data/instruction_dataset.jsonl"
FAILED = "data/instruct_failed.jsonl"
STATS = "data/instruct_stats.json"
PROGRESS = "data/instruct_progress.json"  # fingerprint of the run the *.partial files belong to

KINDS = ("words", "sentence", "features", "summary")
LABELS = {"words": "Words", "sentence": "Sentence", "features": "Features", "summary": "Summary"}
# Header keys of the published TinyStoriesInstruct files -> our kinds.
PUBLISHED_KEYS = {"words": "words", "features": "features", "summary": "summary", "random sentence": "sentence"}
ENDOFTEXT = "<|endoftext|>"

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
    story_summaries: bool = True  # use a story's own "summary" field (e.g. imported TinyStories shards) when it passes the checks, instead of asking the LLM
    llm: dict[str, Any] = field(default_factory=dict)  # overrides of the root llm section for summaries only, e.g. {model: ...}

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
        return problems


def inputs(cfg) -> list[str]:
    if cfg.instruct_data.source_path:
        # An absolute path: RunDir.path() leaves it as is, so the executor hashes the user's file.
        return [str(Path(cfg.instruct_data.source_path).expanduser().resolve())]
    return [STORIES]


def outputs(cfg) -> list[str]:
    return [DATASET, FAILED, STATS]


# -- the summary prompt and its validator ---------------------------------------------------


def load_summary_template() -> tuple[str, str]:
    """(template text, template version). The version is the file's declared version plus a
    hash of its text, so an edit that forgets to bump the version still invalidates the cache."""
    raw = resources.files("tinystories").joinpath("resources/prompts/summary.txt").read_text(encoding="utf-8")
    version = ""
    body: list[str] = []
    for line in raw.splitlines():
        if line.startswith("#") and not body:
            m = re.match(r"#\s*version:\s*(\S+)", line)
            if m:
                version = m.group(1)
            continue
        body.append(line)
    text = "\n".join(body).strip() + "\n"
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return text, f"{version or 'summary'}-{digest}"


_META_START = re.compile(
    r"^(sure|certainly|of course|okay|ok\b|here is|here's|here are|in this|this is a|as an ai|i can\b|i'm sorry|i am sorry|i cannot|i can't)",
    re.IGNORECASE,
)
_META_WORDS = re.compile(r"\b(story|stories|summary|summaries|summari[sz]e[sd]?)\b", re.IGNORECASE)
_LABEL = re.compile(r"^\s*(summary|in short)\s*:\s*", re.IGNORECASE)


def clean_summary(text: str | None, max_words: int, finish_reason: str | None = None, max_sentences: int = 3) -> str:
    """The summary as one line, or `Reject` with the reason (the client retries with a fresh seed)."""
    if finish_reason == "length":
        raise Reject("truncated: hit summary_max_tokens")
    text = _LABEL.sub("", (text or "").strip()).strip().strip('"“”').strip()
    if not text:
        raise Reject("empty summary")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if len(lines) > 2:
        raise Reject(f"too long: {len(lines)} lines (max 2)")
    one_line = " ".join(lines)
    n_words = len(one_line.split())
    if n_words > max_words:
        raise Reject(f"too long: {n_words} words (max {max_words})")
    n_sentences = len([x for x in _SPLIT.split(one_line) if x.strip()])
    if n_sentences > max_sentences:
        raise Reject(f"too long: {n_sentences} sentences (max {max_sentences})")
    m = _META_START.match(one_line)
    if m:
        raise Reject(f"meta-text: starts with {m.group(0)!r}")
    m = _META_WORDS.search(one_line)
    if m:
        raise Reject(f"meta-text: mentions {m.group(0)!r}")
    return one_line


# -- parts of an instruction ----------------------------------------------------------------

# A sentence ends at . ! or ? (optionally followed by a closing quote) when the next one starts
# with a capital or an opening quote; `"Hi!" said Tom.` therefore stays one sentence, and so
# does `Mr. Bob came.`
_SPLIT = re.compile(r"(?:(?<=[.!?][\"”’'])|(?<=[.!?]))(?<!Mr\.)(?<!Mrs\.)(?<!Ms\.)(?<!Dr\.)(?<!St\.)\s+(?=[\"“A-Z])")


def story_sentences(story: str, min_words: int, max_words: int) -> list[str]:
    """The story's sentences that can stand alone as a Sentence part."""
    out = []
    for sent in _SPLIT.split(" ".join(story.split())):
        sent = sent.strip()
        if not sent or not re.match(r"[\"“A-Z]", sent) or not re.search(r"[.!?][\"”’']?$", sent):
            continue
        if sent.count('"') % 2 or sent.count("“") != sent.count("”"):
            continue  # a quotation cut in half reads as a fragment
        if min_words <= len(sent.split()) <= max_words:
            out.append(sent)
    return out


def words_text(words: Any) -> str:
    """The prompt words as the paper lists them: verb, noun, adjective (any further keys after)."""
    if isinstance(words, dict):
        order = [k for k in ("verb", "noun", "adjective") if words.get(k)] + [k for k in words if k not in ("verb", "noun", "adjective") and words.get(k)]
        return ", ".join(str(words[k]) for k in order)
    if isinstance(words, (list, tuple)):
        return ", ".join(str(w) for w in words if w)
    return str(words or "").strip()


def features_text(features: Any) -> str:
    if isinstance(features, (list, tuple)):
        return ", ".join(str(f) for f in features if f)
    return str(features or "").strip()


def render(parts: list[tuple[str, str]]) -> str:
    """One part a line: `Words: ...`, `Features: ...`, `Sentence: ...`, `Summary: ...`."""
    return "\n".join(f"{LABELS[kind]}: {value}" for kind, value in parts)


def draw_sets(rng: random.Random, available: list[str], ic: Config) -> list[list[str]]:
    """`sets_per_story` random subsets of the available kinds, each in random order."""
    min_parts = min(ic.min_parts, len(available))
    if ic.min_parts > 0 and not available:
        return []
    sets: list[list[str]] = []
    seen: set[tuple[str, ...]] = set()
    for _ in range(ic.sets_per_story):
        chosen: list[str] = []
        for _try in range(20):  # look for a combination this story does not have yet
            chosen = [k for k in available if rng.random() < ic.probabilities.get(k, 0.5)]
            missing = [k for k in available if k not in chosen]
            rng.shuffle(missing)
            chosen += missing[: max(0, min_parts - len(chosen))]
            rng.shuffle(chosen)
            if tuple(sorted(chosen)) not in seen:
                break
        seen.add(tuple(sorted(chosen)))
        sets.append(chosen)
    return sets


def story_seed(seed: int, story_id: Any) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{story_id}".encode()).digest()[:4], "little") & 0x7FFFFFFF


# -- reading data/stories.jsonl ---------------------------------------------------------------


def iter_stories(path: Path, limit: int = 0) -> Iterator[dict]:
    """Stories with their line numbers checked; a torn last line (a kill mid-write) is ignored."""
    from tinystories.io.rundir import read_jsonl_numbered

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


# -- statistics -------------------------------------------------------------------------------


class Tally:
    def __init__(self) -> None:
        self.sets = 0
        self.stories = 0
        self.combinations: dict[str, int] = {}
        self.kinds: dict[str, int] = {}
        self.parts_per_set: dict[str, int] = {}
        self.summary_words = 0
        self.summaries = 0

    def add(self, rec: dict) -> None:
        self.sets += 1
        parts = rec["parts"]
        combo = "+".join(LABELS[k] for k in sorted(parts)) or "(story only)"
        self.combinations[combo] = self.combinations.get(combo, 0) + 1
        for k in parts:
            self.kinds[k] = self.kinds.get(k, 0) + 1
        n = str(len(parts))
        self.parts_per_set[n] = self.parts_per_set.get(n, 0) + 1
        for line in rec["instruction"].splitlines():
            if line.startswith("Summary: "):
                self.summaries += 1
                self.summary_words += len(line.split()) - 1

    def as_dict(self) -> dict:
        return {
            "sets": self.sets,
            "stories_with_sets": self.stories,
            "combinations": dict(sorted(self.combinations.items(), key=lambda kv: (-kv[1], kv[0]))),
            "kinds": dict(sorted(self.kinds.items())),
            "parts_per_set": dict(sorted(self.parts_per_set.items())),
        }


# -- the stage --------------------------------------------------------------------------------


def run(cfg, rundir, force: bool = False) -> dict:
    ic: Config = cfg.instruct_data
    if ic.source_path:
        return _convert_published(cfg, rundir)
    return _build_from_stories(cfg, rundir, force)


def _fingerprint(cfg, stories: Path) -> str:
    from tinystories.io.rundir import sha256_path

    payload = {
        "instruct_data": asdict(cfg.instruct_data),
        "llm": asdict(cfg.llm_for(SECTION)),
        "seed": cfg.seed,
        "stories": sha256_path(stories),
        "template": load_summary_template()[1],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


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


def _build_from_stories(cfg, rundir, force: bool) -> dict:
    from tinystories.pipeline.config import derive_seed
    from tinystories.io.rundir import JsonlWriter, read_json, read_jsonl, write_json

    ic: Config = cfg.instruct_data
    seed = derive_seed(cfg.seed, NAME)
    stories_path = rundir.path(STORIES)
    if not stories_path.exists():
        raise UserError(f"instruct-data: missing {stories_path}; run `tinystories generate --run-dir {rundir.root}` first (or set instruct_data.source_path)")
    out_partial = Path(str(rundir.path(DATASET)) + ".partial")
    failed_partial = Path(str(rundir.path(FAILED)) + ".partial")
    progress_path = rundir.path(PROGRESS)

    # Resume only what belongs to this exact config and input; anything else starts over
    # (cheaply: answered summaries still come from the LLM cache).
    fingerprint = _fingerprint(cfg, stories_path)
    resumable = not force and progress_path.exists() and read_json(progress_path).get("fingerprint") == fingerprint
    if not resumable:
        out_partial.unlink(missing_ok=True)
        failed_partial.unlink(missing_ok=True)
        write_json(progress_path, {"fingerprint": fingerprint})

    tally = Tally()
    done: set[str] = set()
    n_failed = 0
    if failed_partial.exists():
        JsonlWriter(failed_partial).close()  # cut a torn tail before reading
        for rec in read_jsonl(failed_partial):
            done.add(str(rec["id"]))
            n_failed += 1
    if out_partial.exists():
        done |= _load_partial(out_partial, tally, ic.sets_per_story)
    resumed = len(done)
    if resumed:
        log.info("resuming: %d stories already written", resumed)

    template, template_version = load_summary_template()
    llm_cfg = cfg.llm_for(SECTION)
    available_kinds = [k for k in KINDS if k in ic.kinds]
    counters = {"stories": 0, "no_parts": 0, "no_sentence": 0, "summaries_requested": 0, "story_summaries": 0}

    def plan(rec: dict) -> dict:
        """Everything about one story except its summary, decided by its own seeded RNG."""
        rng = random.Random(story_seed(seed, rec["id"]))
        values: dict[str, str] = {}
        if "words" in available_kinds and words_text(rec.get("words")):
            values["words"] = words_text(rec.get("words"))
        if "features" in available_kinds and features_text(rec.get("features")):
            values["features"] = features_text(rec.get("features"))
        if "sentence" in available_kinds:
            sentences = story_sentences(rec["story"], ic.sentence_min_words, ic.sentence_max_words)
            if sentences:
                values["sentence"] = rng.choice(sentences)
        if "summary" in available_kinds and ic.story_summaries and isinstance(rec.get("summary"), str):
            try:
                values["summary"] = clean_summary(rec["summary"], ic.summary_max_words, None, ic.summary_max_sentences)
            except Reject:
                pass  # the LLM writes one instead
        kinds = [k for k in KINDS if k in values or (k == "summary" and "summary" in available_kinds)]
        sets = draw_sets(rng, kinds, ic)
        wants_summary = any("summary" in s for s in sets)
        return {
            "rec": rec,
            "values": values,
            "sets": sets,
            "needs_summary": wants_summary and "summary" not in values,
            "own_summary": wants_summary and "summary" in values,
            "ready": False,
            "error": None,
        }

    out = JsonlWriter(out_partial)
    failed = JsonlWriter(failed_partial)
    # Results are written in story order whatever order the LLM answers in, so the output does
    # not depend on concurrency; answered-but-unwritten summaries survive a kill in the cache.
    pending: dict[str, dict] = {}

    def flush() -> None:
        nonlocal n_failed
        while pending:
            key, entry = next(iter(pending.items()))
            if not entry["ready"]:
                return
            del pending[key]
            rec = entry["rec"]
            if entry["error"] is not None:
                failed.write({"id": rec["id"], "reason": entry["error"], "attempts": entry.get("attempts", 0), "last_reply": (entry.get("text") or "")[:500]})
                n_failed += 1
                continue
            if not entry["sets"]:
                counters["no_parts"] += 1
                continue
            tally.stories += 1
            for i, kinds in enumerate(entry["sets"]):
                parts = [(k, entry["values"][k]) for k in kinds]
                row = {"instruction": render(parts), "story": rec["story"].strip(), "id": rec["id"], "set": i, "parts": kinds}
                out.write(row)
                tally.add(row)

    def requests() -> Iterator:
        from tinystories.llm import Request

        for rec in iter_stories(stories_path, ic.max_stories):
            counters["stories"] += 1
            key = str(rec["id"])
            if key in done:
                continue
            entry = plan(rec)
            if "sentence" in available_kinds and "sentence" not in entry["values"]:
                counters["no_sentence"] += 1
            counters["story_summaries"] += entry["own_summary"]
            pending[key] = entry
            if not entry["needs_summary"]:
                entry["ready"] = True
                flush()
                continue
            prompt = template.replace("{story}", rec["story"].strip())
            counters["summaries_requested"] += 1
            common = dict(key=key, max_tokens=ic.summary_max_tokens, temperature=ic.summary_temperature, seed=story_seed(seed + 1, rec["id"]), template_version=template_version)
            if llm_cfg.mode == "chat":
                yield Request(messages=({"role": "user", "content": prompt},), **common)
            else:
                yield Request(prompt=prompt, stop=("\n\n",), **common)

    def validate(response) -> str:
        return clean_summary(response.text, ic.summary_max_words, response.finish_reason, ic.summary_max_sentences)

    def on_result(response) -> None:
        entry = pending[response.key]
        entry["ready"] = True
        entry["attempts"] = response.attempts
        if response.ok:
            entry["values"]["summary"] = response.value
        else:
            entry["error"] = response.error
            entry["text"] = response.text
        flush()

    # A planning pass first: plans are seeded per story, so counting them gives the progress
    # bar its total (and its ETA), and a run that needs no summary never loads an LLM.
    to_summarise = 0
    if "summary" in available_kinds:
        to_summarise = sum(1 for rec in iter_stories(stories_path, ic.max_stories) if str(rec["id"]) not in done and plan(rec)["needs_summary"])
    llm_stats: dict = {}
    model = None
    try:
        if to_summarise:
            from tinystories.llm import make_client

            client = make_client(llm_cfg, rundir.path("cache/llm"))
            try:
                client.complete(requests(), validate=validate, on_result=on_result, total=to_summarise, description="summaries", collect=False)
                llm_stats = client.stats.as_dict()
                model = client.describe()
            finally:
                client.close()
        else:
            for _ in requests():
                raise RuntimeError("instruct-data: the planning pass and the writing pass disagree about summaries")
        flush()
        if pending:
            raise RuntimeError(f"instruct-data: {len(pending)} stories got no answer from the LLM client")
    finally:
        out.close()
        failed.close()

    if counters["stories"] == 0:
        raise UserError(f"instruct-data: {stories_path} holds no stories; run `tinystories generate --run-dir {rundir.root}` (or import) first")
    if tally.sets == 0:
        raise UserError(
            f"instruct-data: no instruction set was written from {stories_path} "
            f"({counters['stories']} stories, {n_failed} failed summaries, {counters['no_parts']} without usable parts); "
            f"see {rundir.path(FAILED)}.partial and the llm settings"
        )
    stats = {
        "source": "stories",
        "stories_read": counters["stories"],
        "resumed_stories": resumed,
        "failed_summaries": n_failed,
        "stories_without_parts": counters["no_parts"],
        "stories_without_sentence": counters["no_sentence"],
        "summaries_requested": counters["summaries_requested"],
        "summaries_from_stories": counters["story_summaries"],
        "summary_words_mean": round(tally.summary_words / tally.summaries, 2) if tally.summaries else None,
        "template_version": template_version,
        "llm": {"model": model, **llm_stats},
        **tally.as_dict(),
    }
    # Finish: stats first, then rename the partials into place, then drop the resume marker.
    write_json(rundir.path(STATS), stats)
    os.replace(failed_partial, rundir.path(FAILED))
    os.replace(out_partial, rundir.path(DATASET))
    progress_path.unlink(missing_ok=True)
    return _metrics(stats)


def _metrics(stats: dict) -> dict:
    keys = ("source", "stories_read", "stories_with_sets", "sets", "failed_summaries", "resumed_stories", "summaries_requested", "blocks", "skipped_blocks")
    out = {k: stats[k] for k in keys if k in stats}
    llm = stats.get("llm") or {}
    for k in ("backend_calls", "cache_hits", "rejected_attempts"):
        if k in llm:
            out[f"llm_{k}"] = llm[k]
    return out


# -- the published TinyStoriesInstruct layout -----------------------------------------------------


def read_tinystories_instruct(path: str | os.PathLike, limit: int = 0) -> Iterator[dict]:
    """Stream the published TinyStoriesInstruct text file as instruction records.

    Layout: blocks separated by `<|endoftext|>`; each block has header lines `Features: ...`,
    `Words: ...`, `Summary: ...`, `Random sentence: ...` (any subset, any order) and then
    `Story:` followed by the story (the rest of that line and all lines up to the delimiter).
    Yields {"instruction", "story", "id" (block index), "set": 0, "parts"}; blank blocks are
    skipped; a block without a story, or a header we do not know, is a UserError naming the line.
    """
    path = Path(path)
    block_index = 0
    header: list[tuple[str, str]] = []
    story_lines: list[str] | None = None
    start_line = 1
    emitted = 0

    def finish(lineno: int) -> dict | None:
        nonlocal header, story_lines, block_index, start_line
        rec = None
        if story_lines is None:
            if header:
                raise UserError(f"{path}:{start_line}: block has {LABELS[header[0][0]]}: but no 'Story:' line before {ENDOFTEXT} (line {lineno})")
        else:
            story = "\n".join(story_lines).strip()
            if not story:
                raise UserError(f"{path}:{start_line}: block has an empty 'Story:'; remove the block or add its text")
            rec = {"instruction": render(header), "story": story, "id": block_index, "set": 0, "parts": [k for k, _ in header]}
            block_index += 1
        header, story_lines, start_line = [], None, lineno + 1
        return rec

    try:
        with open(path, "r", encoding="utf-8") as fh:
            lineno = 0
            for lineno, line in enumerate(fh, 1):
                line = line.rstrip("\n").rstrip("\r")
                pieces = line.split(ENDOFTEXT)
                for i, piece in enumerate(pieces):
                    if i > 0:  # a delimiter ended the block
                        rec = finish(lineno)
                        if rec is not None:
                            yield rec
                            emitted += 1
                            if limit and emitted >= limit:
                                return
                    if story_lines is not None:
                        story_lines.append(piece)
                        continue
                    text = piece.strip()
                    if not text:
                        if not header:
                            start_line = lineno + 1
                        continue
                    key, sep, value = text.partition(":")
                    key_l = key.strip().lower()
                    if sep and key_l == "story":
                        story_lines = [value]
                    elif sep and key_l in PUBLISHED_KEYS:
                        kind = PUBLISHED_KEYS[key_l]
                        if any(k == kind for k, _ in header):
                            raise UserError(f"{path}:{lineno}: second {key.strip()}: line in one block; separate stories with {ENDOFTEXT}")
                        header.append((kind, " ".join(value.split())))
                    else:
                        raise UserError(
                            f"{path}:{lineno}: expected 'Features:', 'Words:', 'Summary:', 'Random sentence:' or 'Story:', got {text[:60]!r}; "
                            "is this a TinyStoriesInstruct file?"
                        )
            rec = finish(lineno)  # the last block may lack a trailing delimiter
            if rec is not None:
                yield rec
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); convert the file to UTF-8") from None


def _convert_published(cfg, rundir) -> dict:
    from tinystories.progress import progress_bar
    from tinystories.io.rundir import atomic_path, write_json, write_text

    ic: Config = cfg.instruct_data
    source = Path(ic.source_path).expanduser()
    if not source.is_file():
        raise UserError(f"instruct_data.source_path: {source} is not a file; point it at a TinyStoriesInstruct .txt or leave it empty")
    tally = Tally()
    with atomic_path(rundir.path(DATASET)) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        with progress_bar("convert", total=ic.max_stories or None, unit="story") as bar:
            for rec in read_tinystories_instruct(source, ic.max_stories):
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
                tally.add(rec)
                tally.stories += 1
                bar.advance(1)
    if tally.sets == 0:
        rundir.path(DATASET).unlink(missing_ok=True)
        raise UserError(f"instruct_data.source_path: {source} holds no story blocks; expected blocks ending in {ENDOFTEXT}")
    write_text(rundir.path(FAILED), "")
    stats = {"source": "tinystories_instruct", "source_path": str(source.resolve()), "blocks": tally.sets, **tally.as_dict()}
    write_json(rundir.path(STATS), stats)
    return _metrics(stats)
