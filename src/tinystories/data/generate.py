"""Generate the story dataset with an LLM from the paper's prompt (data/stories.jsonl).

    tinystories generate --run-dir runs/quickstart [--set generate.num_stories=100]

Each story i draws one noun, one verb and one adjective from data/vocabulary.json and a
random subset of narrative features, from a generator seeded with (stage seed, i): the same
seed gives the same prompts in the same order, and story i is the same whether or not the
run was interrupted. The prompt is the paper's (data/prompts/story.txt, versioned).

`num_stories` counts KEPT stories: ids 0, 1, 2, ... are requested in order and the stage
keeps requesting the next ids until num_stories stories passed the filters and dedup, or
`max_requests` ids were attempted (then it finishes with fewer and says so in the log and
metrics). Replies that are empty, cut off at max_tokens or wrapped in chat preamble are
retried with a fresh seed (llm.max_attempts) before being recorded as rejected.

A correct run writes data/stories.jsonl (one kept story a line, with its words, features,
prompt, model, seed, token counts and words_used), data/rejected.jsonl (id, reason, text,
and `duplicate_of` for duplicates), data/tinystories_dataset.txt (kept stories, each
followed by a line `<|endoftext|>`) and data/stats.json. Killed and rerun, it sends only the
requests not yet answered (answers also sit in cache/llm) and never writes an id twice.
Memory stays flat apart from the dedup index (about 1 KB per kept story, see filters.py).
Stories are appended in the order answers arrive: with llm.concurrency 1 (the embedded
backend) that is id order; with several requests in flight, which of two duplicates is kept
can depend on timing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

from tinystories.errors import UserError
from tinystories.data.filters import DATASET, REJECTED, STATS, STORIES, DatasetBuilder, FilterOptions, format_problem, reset_if_stale, stats_table
from tinystories.io.rundir import RunDir, sha256_path

NAME = "generate"
SECTION = "generate"
USES: tuple[str, ...] = ("llm", "vocab")

VOCABULARY = "data/vocabulary.json"
STATE = "data/.generate_state.json"
DEFAULT_FEATURES = ["Dialogue", "Twist", "BadEnding", "MoralValue", "Foreshadowing", "Conflict"]  # names as in the published data
ID_PREFIX = "g"

log = logging.getLogger("tinystories.data.generate")


@dataclass
class Config(FilterOptions):
    num_stories: int = 100  # stories to keep; ids are requested in order until this many pass the filters (or max_requests)
    max_requests: int = 0  # cap on stories attempted (kept + rejected); 0 = 2 x num_stories
    features: list[str] = field(default_factory=lambda: list(DEFAULT_FEATURES))  # features to draw from (names in data/prompts/story.txt)
    feature_prob: float = 0.3  # probability that each feature is asked for in a story's prompt
    feature_probs: dict[str, float] = field(default_factory=dict)  # per-feature probability, overriding feature_prob
    max_tokens: int = 600  # completion limit; a story cut off here is rejected as truncated
    temperature: float = 1.0  # sampling temperature
    top_p: float = 1.0  # nucleus sampling
    llm: dict[str, Any] = field(default_factory=dict)  # overrides of the root llm: section for this stage only
    batch_api: bool = False  # openai backend: send first attempts through the OpenAI Batch API (half price, hours), then retries live
    batch_poll_s: float = 60.0  # seconds between Batch API status polls

    def check(self) -> list[str]:
        problems = self.filter_problems()
        known = template()["features"]
        for f in self.features:
            if f not in known:
                problems.append(f"features: unknown feature {f!r}; known: {', '.join(known)}")
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


@lru_cache(maxsize=1)
def template() -> dict:
    """The versioned prompt template from package data: {version, features, features_sentence, text}."""
    raw = resources.files("tinystories").joinpath("resources/prompts/story.txt").read_text(encoding="utf-8")
    out: dict = {"features": {}}
    lines = raw.splitlines()
    for n, line in enumerate(lines):
        if line.startswith("#") or not line.strip():
            continue
        if line.strip() == "template:":
            out["text"] = "\n".join(lines[n + 1 :]).strip()
            break
        key, _, value = line.partition(":")
        if key.startswith("feature "):
            out["features"][key.split(None, 1)[1].strip()] = value.strip()
        else:
            out[key.strip()] = value.strip()
    # An edit without a version bump must still invalidate the cache.
    out["version"] = f"{out['version']}+{hashlib.sha256(raw.encode()).hexdigest()[:8]}"
    return out


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


def render_prompt(words: dict, features: list[str]) -> str:
    t = template()
    sentence = t["features_sentence"].format(features=", ".join(t["features"][f] for f in features)) if features else ""
    text = t["text"].format(noun=words["noun"], verb=words["verb"], adjective=words["adjective"], features_sentence=sentence)
    return re.sub(r" {2,}", " ", text)  # no features: the sentence and its space vanish


def make_request(i: int, params: dict, gcfg: Config, mode: str):
    from tinystories.llm import Request

    prompt = render_prompt(params["words"], params["features"])
    common = dict(key=story_id(i), max_tokens=gcfg.max_tokens, temperature=gcfg.temperature, top_p=gcfg.top_p, seed=params["seed"], template_version=template()["version"])
    if mode == "chat":
        return Request(messages=({"role": "user", "content": prompt},), **common), prompt
    return Request(prompt=prompt, **common), prompt


def _load_vocab(rundir: RunDir) -> dict:
    from tinystories.data.vocab import load_vocabulary

    vocab = load_vocabulary(rundir.path(VOCABULARY))
    for key in ("nouns", "verbs", "adjectives"):
        if not vocab.get(key):
            raise UserError(f"{rundir.path(VOCABULARY)}: no {key}; rerun `tinystories vocab --run-dir {rundir.root}`")
    return vocab


def _fingerprint(cfg, rundir: RunDir) -> str:
    """Everything that changes what a story id holds; a change means the files on disk are stale."""
    g = dataclasses.asdict(cfg.generate)
    # How many, and how the first attempts travel (live or Batch API), do not change what a story id holds.
    for k in ("num_stories", "max_requests", "stats_sample", "batch_api", "batch_poll_s"):
        g.pop(k)
    payload = {
        "generate": g,
        # only what changes an answer: concurrency, rate limits or prices do not
        "llm": {k: v for k, v in dataclasses.asdict(cfg.llm_for(SECTION)).items() if k in ("backend", "model", "mode", "max_attempts", "n_ctx", "base_urls")},
        "seed": cfg.seed,
        "template": template()["version"],
        "vocabulary": sha256_path(rundir.path(VOCABULARY)),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def inputs(cfg) -> list[str]:
    return [VOCABULARY] if cfg.generate.num_stories > 0 else []


def outputs(cfg) -> list[str]:
    return [STORIES, REJECTED, DATASET, STATS] if cfg.generate.num_stories > 0 else []


def _answer_through_batch(gcfg, llm_cfg, rundir: RunDir, builder, base_seed: int, vocab: dict, cap: int) -> None:
    """First attempts of the stories still missing go through the Batch API into the answer cache;
    the live loop below then takes them as cache hits and only retries go live. The batch id is
    kept in a state file, so a killed run resumes the same batch instead of paying twice."""
    from tinystories.llm.batch import run_batch

    need = gcfg.num_stories - builder.kept
    pending = []
    i = 0
    while len(pending) < need and i < cap:
        if story_id(i) not in builder.done:
            pending.append(make_request(i, story_params(base_seed, i, vocab, gcfg), gcfg, llm_cfg.mode)[0])
        i += 1
    if pending:
        summary = run_batch(llm_cfg, pending, rundir.path("cache/llm"), rundir.path("data/.generate_batch.json"), poll_s=gcfg.batch_poll_s)
        log.info("generate: Batch API %s", {k: v for k, v in summary.items() if k != "failures"})


def run(cfg, rundir: RunDir, force: bool = False) -> dict:
    from tinystories.pipeline.config import derive_seed
    from tinystories.llm import Reject, make_client

    gcfg: Config = cfg.generate
    imp = getattr(cfg, "import_", None)
    if gcfg.num_stories == 0:
        log.info("generate: num_stories is 0, nothing to generate")
        return {"kept": 0, "skipped": "num_stories is 0"}
    if imp is not None and getattr(imp, "path", ""):
        raise UserError(
            f"generate.num_stories is {gcfg.num_stories} but import_.path is set; both write data/stories.jsonl: "
            "set --set generate.num_stories=0 to import, or clear import_.path to generate"
        )
    vocab = _load_vocab(rundir)
    reset_if_stale(
        rundir, STATE, _fingerprint(cfg, rundir), ID_PREFIX,
        changed="generate: config, model, template or vocabulary changed; starting the dataset over",
        foreign="holds imported stories; generate in a fresh --run-dir or delete the data/ files first",
    )
    base_seed = derive_seed(cfg.seed, NAME)
    llm_cfg = cfg.llm_for(SECTION)
    cap = gcfg.max_requests or 2 * gcfg.num_stories

    builder = DatasetBuilder(rundir, gcfg, seed=base_seed).open()
    resumed = {"kept": builder.kept, "rejected": sum(builder.rejected.values())}
    if resumed["kept"] or resumed["rejected"]:
        log.info("generate: resuming with %d kept and %d rejected stories on disk", resumed["kept"], resumed["rejected"])

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

    transport: list[str] = []
    prompts: dict[str, tuple[dict, str]] = {}  # in-flight only

    def on_result(response) -> None:
        params, prompt = prompts.pop(response.key)
        if not response.ok:
            reason = response.error.split(":")[0]
            if reason == "transport":
                transport.append(response.error)  # not recorded: the rerun asks again
                return
            builder.reject(response.key, reason, response.text, response.error, words=params["words"], features=params["features"], seed=response.seed)
            return
        builder.add(
            [
                {
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
            ],
            format_checks=False,  # the validator already ran them (and stripped a title line)
        )

    sent = [0]

    def requests(todo: int):
        """The `todo` smallest ids below the cap not yet kept or rejected, lazily."""
        i = n = 0
        while n < todo and i < cap:
            sid = story_id(i)
            if sid not in builder.done and sid not in prompts:
                params = story_params(base_seed, i, vocab, gcfg)
                request, prompt = make_request(i, params, gcfg, llm_cfg.mode)
                prompts[sid] = (params, prompt)
                n += 1
                sent[0] += 1
                yield request
            i += 1

    if gcfg.batch_api:
        _answer_through_batch(gcfg, llm_cfg, rundir, builder, base_seed, vocab, cap)
    client = make_client(llm_cfg, rundir.path("cache/llm"))
    try:
        while True:
            need = gcfg.num_stories - builder.kept
            todo = min(need, cap - len(builder.done))
            if todo <= 0:
                break
            before = sent[0]
            client.complete(requests(todo), validate=validate, on_result=on_result, total=todo, description="generate", collect=False)
            if sent[0] == before:
                break  # every id below the cap is done (e.g. the cap was lowered)
            if transport:
                raise UserError(
                    f"generate: {len(transport)} requests failed in transport ({transport[-1][:200]}); "
                    "check the llm backend and rerun the same command to resume"
                )
    finally:
        builder.close()
        client.close()

    if builder.kept < gcfg.num_stories:
        log.warning("generate: kept %d of %d stories after %d attempts (max_requests)", builder.kept, gcfg.num_stories, len(builder.done))
    stats = builder.finish(vocab, attempted=len(builder.done))
    print(stats_table(stats))
    s = client.stats
    return {
        "kept": stats["kept"],
        "rejected": stats["rejected"],
        "attempted": stats["attempted"],
        "target": gcfg.num_stories,
        "rejected_by_reason": stats["rejected_by_reason"],
        "words_mean": stats["words_per_story"]["mean"],
        "near_duplicate_rate": stats["near_duplicate_rate"],
        "backend_calls": s.backend_calls,
        "cache_hits": s.cache_hits,
        "completion_tokens": s.completion_tokens,
        "tokens_per_s": round(s.generated_tokens_live / s.backend_seconds, 2) if s.backend_seconds else None,
        "model": client.model_name,
        "template_version": template()["version"],
    }
