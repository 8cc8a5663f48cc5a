"""Generate the story dataset with an LLM from the paper's prompt (data/stories.jsonl).

    tinystories generate --run-dir runs/quickstart [--set generate.num_stories=100]

Each story i draws one noun, one verb and one adjective from data/vocabulary.json and a
random subset of narrative features, from a generator seeded with (stage seed, i): the same
seed gives the same prompts in the same order, and story i is the same whether or not the
run was interrupted. The prompt is the paper's (resources/prompts/story.txt, versioned, rendered by text/prompts.py),
or your own file in the same format (`generate.prompt_path`, see README "Custom prompts").

`num_stories` counts KEPT stories: ids 0, 1, 2, ... are requested in order and the stage
keeps requesting the next ids until num_stories stories passed the filters and dedup, or
`max_requests` ids were attempted (then it finishes with fewer and says so in the log and
metrics). A story that misses one of its three words is kept (its `words_used` says which it
contains; data/stats.json the share using all three) unless `require_words` is set: small
models miss one in about half their stories, and rejecting them doubles the LLM time.
Replies that are empty, cut off at max_tokens or wrapped in chat preamble are retried with a
fresh seed (llm.max_attempts) before being recorded as rejected.

A correct run writes data/stories.jsonl (one kept story a line, with its words, features,
prompt, model, seed, token counts and words_used), data/rejected.jsonl (id, reason, text,
and `duplicate_of` for duplicates), data/tinystories_dataset.txt (kept stories, each
followed by a line `<|endoftext|>`) and data/stats.json. Killed and rerun, it sends only the
requests not yet answered (answers also sit in cache/llm) and never writes an id twice.
Memory stays flat apart from the dedup index (about 1 KB per kept story, see data/dedup.py).
Stories are appended in the order answers arrive: with llm.concurrency 1 (the embedded
backend) that is id order; with several requests in flight, which of two duplicates is kept
can depend on timing.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

from tinystories.data.checks import FilterOptions, format_problem
from tinystories.data.dataset_writer import DATASET_FILES, DatasetBuilder, resume_dataset
from tinystories.data.stats import stats_table
from tinystories.errors import UserError
from tinystories.io.layout import GENERATE_BATCH, GENERATE_STATE, LLM_CACHE_DIR, VOCABULARY
from tinystories.io.rundir import RunDir, sha256_path
from tinystories.pipeline.ids import derive_seed, fingerprint
from tinystories.text.prompts import absolute_prompt_path, prompt_file_inputs, story_prompt, story_template
from tinystories.text.vocabulary import CATEGORIES, load_vocabulary

NAME = "generate"
SECTION = "generate"
USES: tuple[str, ...] = ("llm", "vocab")

DEFAULT_FEATURES = ["Dialogue", "Twist", "BadEnding", "MoralValue", "Foreshadowing", "Conflict"]  # names as in the published data
ID_PREFIX = "g"

log = logging.getLogger("tinystories.data.generate")


@dataclass
class Config(FilterOptions):
    num_stories: int = 100  # stories to keep; ids are requested in order until this many pass the filters (or max_requests)
    max_requests: int = 0  # cap on stories attempted (kept + rejected); 0 = 2 x num_stories
    prompt_path: str = ""  # your story prompt, a text file in resources/prompts/story.txt's format (features, features_sentence, template:), relative to the current directory; empty = the paper's prompt
    features: list[str] = field(default_factory=lambda: list(DEFAULT_FEATURES))  # features to draw from (names defined in the story prompt file)
    feature_prob: float = 0.3  # probability that each feature is asked for in a story's prompt
    feature_probs: dict[str, float] = field(default_factory=dict)  # per-feature probability, overriding feature_prob
    max_tokens: int = 600  # completion limit; a story cut off here is rejected as truncated
    temperature: float = 1.0  # sampling temperature
    top_p: float = 1.0  # nucleus sampling
    llm: dict[str, Any] = field(default_factory=dict)  # overrides of the root llm: section for this stage only
    batch_api: bool = False  # openai backend: send first attempts through the OpenAI Batch API (half price, hours), then retries live
    batch_poll_s: float = 60.0  # seconds between Batch API status polls

    def __post_init__(self) -> None:
        self.prompt_path = absolute_prompt_path(self.prompt_path)

    def check(self) -> list[str]:
        problems = self.filter_problems()
        try:
            known = story_template(self.prompt_path)["features"]
        except UserError as exc:
            return [*problems, f"prompt_path: {exc}"]
        for f in self.features:
            if f not in known:
                defined = f"known: {', '.join(known)}" if known else f"{self.prompt_path} defines none: add `feature {f}: ...` lines or set generate.features: []"
                problems.append(f"features: unknown feature {f!r}; {defined}")
        for f, p in self.feature_probs.items():
            if f not in self.features:
                problems.append(f"feature_probs.{f}: not in features")
            if not 0.0 <= p <= 1.0:
                problems.append(f"feature_probs.{f}: {p} must be between 0 and 1")
        if not 0.0 <= self.feature_prob <= 1.0:
            problems.append(f"feature_prob: {self.feature_prob} must be between 0 and 1")
        if self.num_stories < 0:
            problems.append("num_stories: must be 0 or more")
        if self.max_requests and self.max_requests < self.num_stories:
            problems.append(f"max_requests: {self.max_requests} is below num_stories ({self.num_stories}); raise it or set 0 (= 2 x num_stories)")
        if self.max_tokens < 16:
            problems.append("max_tokens: must be at least 16")
        return problems


def story_id(i: int) -> str:
    return f"{ID_PREFIX}{i:07d}"


def story_params(base_seed: int, i: int, vocab: dict, gcfg: Config) -> dict:
    """Story i's words, features and sampling seed: a pure function of (base_seed, i)."""
    import numpy as np

    rng = np.random.default_rng([base_seed, i])
    words = {
        "noun": vocab["nouns"][int(rng.integers(len(vocab["nouns"])))],
        "verb": vocab["verbs"][int(rng.integers(len(vocab["verbs"])))],
        "adjective": vocab["adjectives"][int(rng.integers(len(vocab["adjectives"])))],
    }
    features = [f for f in gcfg.features if rng.random() < gcfg.feature_probs.get(f, gcfg.feature_prob)]
    return {"words": words, "features": features, "seed": int(rng.integers(0, 2**31 - 1))}


def make_request(i: int, params: dict, gcfg: Config, mode: str, template: dict):
    """Story i's LLM request in `template` (a `story_template`) and its prompt text."""
    from tinystories.llm import Request

    prompt = story_prompt(params["words"], params["features"], template)
    common = dict(key=story_id(i), max_tokens=gcfg.max_tokens, temperature=gcfg.temperature, top_p=gcfg.top_p, seed=params["seed"], template_version=template["version"])
    if mode == "chat":
        return Request(messages=({"role": "user", "content": prompt},), **common), prompt
    return Request(prompt=prompt, **common), prompt


def _load_vocab(rundir: RunDir) -> dict:
    vocab = load_vocabulary(rundir.path(VOCABULARY))
    for key in CATEGORIES:
        if not vocab.get(key):
            raise UserError(f"{rundir.path(VOCABULARY)}: no {key}; rerun `tinystories vocab --run-dir {rundir.root}`")
    return vocab


def _fingerprint(cfg, rundir: RunDir, template: dict) -> str:
    """Everything that changes what a story id holds; a change means the files on disk are stale."""
    g = dataclasses.asdict(cfg.generate)
    # How many, and how the first attempts travel (live or Batch API), do not change what a story id holds;
    # nor does where the prompt file lies: its text is in the template version.
    for k in ("num_stories", "max_requests", "stats_sample", "batch_api", "batch_poll_s", "prompt_path"):
        g.pop(k)
    payload = {
        "generate": g,
        # only what changes an answer: concurrency, rate limits or prices do not
        "llm": {k: v for k, v in dataclasses.asdict(cfg.llm_for(SECTION)).items() if k in ("backend", "model", "mode", "max_attempts", "n_ctx", "base_urls")},
        "seed": cfg.seed,
        "template": template["version"],
        "vocabulary": sha256_path(rundir.path(VOCABULARY)),
    }
    return fingerprint(payload)


def inputs(cfg) -> list[str]:
    return [VOCABULARY, *prompt_file_inputs(cfg.generate.prompt_path)] if cfg.generate.num_stories > 0 else []


def outputs(cfg) -> list[str]:
    return list(DATASET_FILES) if cfg.generate.num_stories > 0 else []


def _answer_through_batch(gcfg, llm_cfg, rundir: RunDir, builder, base_seed: int, vocab: dict, cap: int, template: dict) -> None:
    """First attempts of the stories still missing go through the Batch API into the answer cache;
    the live loop below then takes them as cache hits and only retries go live. The batch id is
    kept in a state file, so a killed run resumes the same batch instead of paying twice."""
    from tinystories.llm.batch import run_batch

    need = gcfg.num_stories - builder.kept
    pending = []
    i = 0
    while len(pending) < need and i < cap:
        if story_id(i) not in builder.done:
            pending.append(make_request(i, story_params(base_seed, i, vocab, gcfg), gcfg, llm_cfg.mode, template)[0])
        i += 1
    if pending:
        summary = run_batch(llm_cfg, pending, rundir.path(LLM_CACHE_DIR), rundir.path(GENERATE_BATCH), poll_s=gcfg.batch_poll_s)
        log.info("generate: Batch API %s", {k: v for k, v in summary.items() if k != "failures"})


def _validate(gcfg: Config):
    """The answer validator: a reply that fails a reply check is retried (llm.max_attempts)."""
    from tinystories.llm import Reject

    def validate(response) -> str:
        text = response.text or ""
        if not text.strip():
            raise Reject("empty: no text")
        if response.finish_reason == "length":
            raise Reject(f"truncated: cut off at max_tokens={gcfg.max_tokens}")
        cleaned, reason, detail = format_problem(text, gcfg)
        if reason:
            raise Reject(f"{reason}: {detail}")
        return cleaned

    return validate


class _Requests:
    """The stories still to ask for, and what becomes of each answer.

    Ids are requested smallest first below the cap; an answer is kept or rejected through the
    builder, except a transport failure, which is not recorded so that a rerun asks again.
    """

    def __init__(self, gcfg: Config, mode: str, builder: DatasetBuilder, vocab: dict, base_seed: int, template: dict):
        self.gcfg, self.mode, self.builder, self.vocab, self.base_seed = gcfg, mode, builder, vocab, base_seed
        self.template = template  # read once: an edit to the file mid-run cannot mix two prompts in one dataset
        self.cap = gcfg.max_requests or 2 * gcfg.num_stories
        self.in_flight: dict[str, tuple[dict, str]] = {}  # id -> (params, prompt) of requests not answered yet
        self.transport: list[str] = []
        self.sent = 0

    def todo(self) -> int:
        return min(self.gcfg.num_stories - self.builder.kept, self.cap - len(self.builder.done))

    def requests(self, todo: int):
        """The `todo` smallest ids below the cap not yet kept or rejected, lazily."""
        i = n = 0
        while n < todo and i < self.cap:
            sid = story_id(i)
            if sid not in self.builder.done and sid not in self.in_flight:
                params = story_params(self.base_seed, i, self.vocab, self.gcfg)
                request, prompt = make_request(i, params, self.gcfg, self.mode, self.template)
                self.in_flight[sid] = (params, prompt)
                n += 1
                self.sent += 1
                yield request
            i += 1

    def on_result(self, response) -> None:
        params, prompt = self.in_flight.pop(response.key)
        if not response.ok:
            reason = response.error.split(":")[0]
            if reason == "transport":
                self.transport.append(response.error)  # not recorded: the rerun asks again
                return
            self.builder.reject(response.key, reason, response.text, response.error, words=params["words"], features=params["features"], seed=response.seed)
            return
        candidate = {
            "id": response.key,
            "text": response.value,
            "words": params["words"],
            "features": params["features"],
            "prompt": prompt,
            "model": response.model,
            "backend": response.backend,
            "seed": response.seed,
            "prompt_tokens": response.prompt_tokens,
            "completion_tokens": response.completion_tokens,
            "finish_reason": response.finish_reason,
            "attempts": response.attempts,
        }
        self.builder.add([candidate], format_checks=False)  # the validator already ran them (and stripped a title line)

    def ask_until_done(self, client) -> None:
        """Request rounds until num_stories are kept or every id below the cap is done."""
        validate = _validate(self.gcfg)
        while (todo := self.todo()) > 0:
            before = self.sent
            client.complete(self.requests(todo), validate=validate, on_result=self.on_result, total=todo, description="generate", collect=False)
            if self.sent == before:
                break  # every id below the cap is done (e.g. the cap was lowered)
            if self.transport:
                raise UserError(
                    f"generate: {len(self.transport)} requests failed in transport ({self.transport[-1][:200]}); "
                    "check the llm backend and rerun the same command to resume"
                )


def _open_builder(rundir: RunDir, gcfg: Config, base_seed: int) -> DatasetBuilder:
    builder = DatasetBuilder(rundir, gcfg, seed=base_seed).open()
    rejected = sum(builder.rejected.values())
    if builder.kept or rejected:
        log.info("generate: resuming with %d kept and %d rejected stories on disk", builder.kept, rejected)
    return builder


def _metrics(stats: dict, gcfg: Config, client, template: dict) -> dict:
    s = client.stats
    return {
        "kept": stats["kept"],
        "rejected": stats["rejected"],
        "attempted": stats["attempted"],
        "target": gcfg.num_stories,
        "rejected_by_reason": stats["rejected_by_reason"],
        "words_mean": stats["words_per_story"]["mean"],
        "all_words_share": stats["all_requested_words_share"],
        "near_duplicate_rate": stats["near_duplicate_rate"],
        "backend_calls": s.backend_calls,
        "cache_hits": s.cache_hits,
        "completion_tokens": s.completion_tokens,
        "tokens_per_s": round(s.generated_tokens_live / s.backend_seconds, 2) if s.backend_seconds else None,
        "model": client.model_name,
        "template_version": template["version"],
    }


def run(cfg, rundir: RunDir, force: bool = False) -> dict:
    from tinystories.llm import make_client

    gcfg: Config = cfg.generate
    if gcfg.num_stories == 0:
        log.info("generate: num_stories is 0, nothing to generate")
        return {"kept": 0, "skipped": "num_stories is 0"}
    vocab = _load_vocab(rundir)
    template = story_template(gcfg.prompt_path)
    resume_dataset(
        rundir, GENERATE_STATE, _fingerprint(cfg, rundir, template), force, ID_PREFIX,
        foreign="holds imported stories; generate in a fresh --run-dir or delete the data/ files first",
        why="generate: config, model, template or vocabulary changed",
    )
    base_seed = derive_seed(cfg.seed, NAME)
    llm_cfg = cfg.llm_for(SECTION)
    builder = _open_builder(rundir, gcfg, base_seed)
    pending = _Requests(gcfg, llm_cfg.mode, builder, vocab, base_seed, template)
    if gcfg.batch_api:
        _answer_through_batch(gcfg, llm_cfg, rundir, builder, base_seed, vocab, pending.cap, template)
    client = make_client(llm_cfg, rundir.path(LLM_CACHE_DIR))
    try:
        pending.ask_until_done(client)
    finally:
        builder.close()
        client.close()
    if builder.kept < gcfg.num_stories:
        log.warning("generate: kept %d of %d stories after %d attempts (max_requests)", builder.kept, gcfg.num_stories, len(builder.done))
    stats = builder.finish(vocab, attempted=len(builder.done))
    print(stats_table(stats))
    return _metrics(stats, gcfg, client, template)
