"""Grade the completions with an LLM judge (the paper's method), and measure how far to trust it.

    tinystories judge --run-dir runs/quickstart [--set judge.llm.model=... --set judge.reference=none]

The grading prompt follows the paper (text/prompts.py, judge section; your own with
`judge.template_path`, README "Custom prompts"): the story's beginning,
then `***`, then the student's completion; the judge writes an assessment of the part after
`***`, then grades it out of 10 for grammar, creativity, consistency with the beginning (for an
instruction-following completion the "beginning" is the instruction) and whether the plot makes
sense, and guesses the writer's age group (A: 3 or under, B: 4-5, C: 6-7, D: 8-9, E: 10-12,
F: 13-16).

How a grade is read (`judge.scoring`):
- expected (G-Eval; eval/expected.py): the grade is the expected value of the judge's next-token
  distribution over 1..10 where it writes that grade; a grade with less than
  `judge.min_grade_mass` of the probability on 1..10 is a failure. By default
  (`judge.assessment: false`) every grade is read in one request right after the exercise, one
  question per grade, nothing sampled (so nothing is judged twice); with `judge.assessment: true`
  the judge first writes its assessment and the grade lines are forced after it one by one.
  Needs a judge in completion mode that returns token log-probabilities;
- sampled: the judge writes the whole reply and its numbers are parsed strictly
  (eval/grading.py);
- auto (the default): expected when the judge is in completion mode and returns
  log-probabilities, or is a backend that reads the grades from the raw prompt itself (embedded),
  else sampled.
A reply that cannot be graded is retried with a fresh seed by the LLM layer and then recorded in
eval/judgments.jsonl as a failure with its reason: never scored as zero, never dropped.

A request that fails in transport (the judge server is down or keeps refusing, after the LLM
layer's retries) is not a judgment: nothing is recorded for it, the stage ends with a one-line
error saying how many failed, and is not marked done; rerun the same command once the server
is back and exactly those requests are sent.

Reliability, measured on every run (a weak judge is the norm on a laptop), under the scoring
in use, per category:
- consistency: `judge.consistency_sample` of the models' completions judged a second time with
  another seed; mean absolute difference and share within one point (not under expected scoring
  without an assessment: its grades are deterministic);
- discrimination: originals known to be good, damaged four ways (eval/damage.py: sentences
  shuffled, words shuffled into salad, cut after a few words, replaced by another beginning's
  continuation) and judged the same way; per damage and category, the share of pairs where the
  original scores strictly higher. The originals are `judge.discrimination_sample` held-out
  stories cut at a sentence boundary into a beginning and its true continuation
  (eval/originals.py; `judge.originals`), plus as many of each baseline model's completions
  where `complete.baselines` names one. The models' own completions are no originals: a small
  model's are word salad already, so no judge could tell them from their damaged versions.
- trust (grading.category_trust): a category is trusted when its grade falls on the damages that
  should hurt it (`judge.must_catch`) in at least `judge.min_discrimination` of at least
  `judge.min_pairs` pairs each, and repeats differ by at most `judge.max_inconsistency`. A judge
  with no trusted category is flagged unreliable (the report then says so at the top).
Judge-free signals (eval/metrics.py):
- perplexity of each completion given its beginning under a reference LM (`judge.reference`:
  "embedded", a path to a HF causal LM directory, or "none"), checked the same way: the share of
  pairs where the original has the lower perplexity than its damaged version;
- contamination: word 13-gram overlap between every evaluation prompt and data/stories.jsonl;
- word compliance (the paper's instruction-following signal without a judge): per model, over
  its instruction completions that request words, the share that contain every requested word
  and the mean share of requested words present (any inflection counts: "jumped" for jump,
  "mice" for mouse), for instruct models and for base models given the same instruction text.

What the LLM judge grades: every completion except instructions given to a model that was not
instruction-tuned (base models' instruction completions, see `tinystories complete`): those are
a baseline for word compliance only, so they add no judge requests and leave the judged sample
(`judge.max_judged`) and the perplexity sample as they were.

A correct run writes eval/judgments.jsonl (one record per judge request, role main / repeat /
original (a held-out story's true continuation) / damaged) and eval/scores.json (per model, task
and category: mean, 95% CI, n judged, n failed; the reliability tables under the scoring used,
per category and damage kind, and each category's trust verdict; perplexity per model;
contamination; word_compliance). A rerun skips requests already
recorded with the same fingerprint (judge identity, template, settings, completion text).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tinystories.errors import UserError
from tinystories.eval.damage import DAMAGES
from tinystories.eval import expected
from tinystories.eval.grading import CATEGORIES, MUST_CATCH, TrustRules, build_scores, parse_grades
from tinystories.eval.judge_plan import fingerprint_plan, plan_requests
from tinystories.eval.originals import SOURCES, heldout_originals
from tinystories.eval.metrics import make_scorer, perplexity_section, prompt_contamination, word_compliance
from tinystories.io.layout import COMPLETIONS, JUDGMENTS, LLM_CACHE_DIR, SCORES, STORIES, VAL_STORIES
from tinystories.io.resume import keep_rows
from tinystories.io.rundir import JsonlWriter, RunDir, read_jsonl, write_json
from tinystories.pipeline.ids import derive_seed
from tinystories.text.prompts import JUDGE_REPLY_START, absolute_prompt_path, judge_completion_prompt, judge_prompt, judge_template, prompt_file_inputs

NAME = "judge"
SECTION = "judge"
USES = ("llm",)  # the root llm section, under the judge's own judge.llm overrides

COMPLETION_FIELDS = ("model", "kind", "task", "prompt_id", "sample_id", "prompt", "text")

log = logging.getLogger("tinystories.eval.judge")


@dataclass
class Config:
    llm: dict[str, Any] = field(default_factory=dict)  # overrides of the root llm section for the judge, e.g. {backend: openai, model: gpt-4o, base_urls: [...]}
    max_tokens: int = 400  # judge reply budget (assessment + grades; under expected scoring, the assessment's)
    temperature: float = 0.7  # judge sampling temperature (> 0, so the consistency check measures something)
    max_judged: int = 0  # judge at most this many completions per model and task, the same (beginning, sample) slots for every model (seeded); 0 = all
    consistency_sample: int = 20  # completions judged twice with different seeds
    discrimination_sample: int = 20  # held-out stories (and completions per baseline model) judged whole and after each of the four damages
    originals: str = "auto"  # discrimination originals: heldout (prepare's data/val_stories.json; an input) | sample (seeded, of data/stories.jsonl) | auto (heldout where that file exists, else sample)
    min_discrimination: float = 0.75  # a category is trusted only if the original beats each damage in its must_catch in at least this share of pairs
    min_pairs: int = 4  # ... judged on at least this many pairs per damage (fewer tell nothing)
    max_inconsistency: float = 1.0  # ... and two judgments of one completion differ by at most this many points on average
    must_catch: dict[str, list[str]] = field(default_factory=lambda: {k: list(v) for k, v in MUST_CATCH.items()})  # per category, the damages that must lower its grade
    reference: str = "embedded"  # perplexity reference LM: embedded | a path to a HF causal LM directory | none
    perplexity_max: int = 0  # completions per model scored for perplexity (a seeded sample); 0 = all
    contamination_n: int = 13  # word n-gram length for the prompt/training overlap check; 0 = skip
    scoring: str = "auto"  # expected (grade = expected value of the judge's grade-token distribution) | sampled (parse the written grade) | auto (expected for a completion-mode judge that returns log-probabilities, else sampled)
    assessment: bool = False  # expected scoring: the judge first writes its assessment and the grades are read after it, as the paper's judge replies (a sampled text and a request per grade line per completion); false: every grade is read right after the request, in one request (README "The judge")
    top_logprobs: int = 20  # expected scoring: most likely tokens read at each grade position
    min_grade_mass: float = 0.5  # expected scoring: a grade with less probability than this on 1..10 (or A-F) is a failure
    template_path: str = ""  # your grading prompts, a text file with a system line and `continue:` / `instruct:` requests using {beginning} and {completion} (README "Custom prompts"), relative to the current directory; empty = the paper's (text/prompts.py)

    def __post_init__(self) -> None:
        self.template_path = absolute_prompt_path(self.template_path)

    def template(self) -> dict:
        """The grading prompts: the shipped ones or the file's (text/prompts.judge_template)."""
        return judge_template(self.template_path)

    def check(self) -> list[str]:
        problems = []
        try:
            self.template()
        except UserError as exc:
            problems.append(f"template_path: {exc}")
        if self.max_tokens < 16:
            problems.append("max_tokens: must be at least 16 (the reply holds an assessment and four grades)")
        if self.temperature < 0:
            problems.append("temperature: must be 0 or more")
        for name in ("max_judged", "consistency_sample", "discrimination_sample", "perplexity_max", "contamination_n"):
            if getattr(self, name) < 0:
                problems.append(f"{name}: must be 0 or more")
        if self.scoring not in ("auto", "expected", "sampled"):
            problems.append(f"scoring: {self.scoring!r} is not auto, expected or sampled")
        if self.top_logprobs < 1:
            problems.append("top_logprobs: must be at least 1")
        if not 0 < self.min_grade_mass <= 1:
            problems.append("min_grade_mass: must be a share above 0 and at most 1")
        if not 0 <= self.min_discrimination <= 1:
            problems.append("min_discrimination: must be a share between 0 and 1")
        if self.min_pairs < 1:
            problems.append("min_pairs: must be at least 1")
        if self.max_inconsistency < 0:
            problems.append("max_inconsistency: must be 0 or more")
        if self.originals not in SOURCES:
            problems.append(f"originals: {self.originals!r} is not {', '.join(SOURCES)}")
        for cat, kinds in (self.must_catch or {}).items():
            if cat not in CATEGORIES:
                problems.append(f"must_catch: {cat!r} is not a category ({', '.join(CATEGORIES)})")
            for kind in kinds or ():
                if kind not in DAMAGES:
                    problems.append(f"must_catch.{cat}: {kind!r} is not a damage ({', '.join(DAMAGES)})")
        if self.reference not in ("embedded", "none") and not self.reference.strip():
            problems.append("reference: use embedded, none or a path to a HF causal LM directory")
        return problems


def inputs(cfg) -> list[str]:
    # Under originals: auto, data/val_stories.json is read when present but is no input: it
    # changes only with prepare, which retrains the models, which changes the completions.
    out = [COMPLETIONS]
    if cfg.judge.contamination_n or cfg.judge.originals != "auto":
        out.append(STORIES)
    if cfg.judge.originals == "heldout":
        out.append(VAL_STORIES)
    return out + prompt_file_inputs(cfg.judge.template_path)


def outputs(cfg) -> list[str]:
    return [JUDGMENTS, SCORES]


def graded_by_judge(rec: dict) -> bool:
    """Whether the LLM judge (and the perplexity check) sees this completion: not when a model
    that never learnt the instruction format got an instruction (a word-compliance baseline)."""
    return rec["task"] != "instruct" or rec["kind"] == "instruct"


def is_transport_failure(error: str | None) -> bool:
    """The LLM layer's "transport: ..." reason: the judge was never reached, so there is no verdict."""
    return bool(error) and error.split(":")[0] == "transport"


# -- the steps of a run ------------------------------------------------------------------------


def load_completions(rundir: RunDir) -> list[dict]:
    path = rundir.path(COMPLETIONS)
    completions = list(read_jsonl(path))
    if not completions:
        raise UserError(f"{path} has no completions; run `tinystories complete --run-dir {rundir.root}` first")
    for i, rec in enumerate(completions, 1):
        missing = [k for k in COMPLETION_FIELDS if k not in rec]
        if missing:
            raise UserError(f"{path}:{i}: record lacks {', '.join(missing)}; rerun `tinystories complete --force`")
    return completions


def resume_judgments(path: Path, plan: list[dict]) -> dict[str, dict]:
    """Judgments already made for this plan under the current fingerprint, by key. The file is
    rewritten without the rest: other completions or settings, duplicates, and transport failures
    (a judge stage before that rule recorded them as if final; they are asked again)."""
    fingerprints = {item["key"]: item["fingerprint"] for item in plan}
    done: dict[str, dict] = {}

    def keep(rec: dict) -> bool:
        key = rec.get("key")
        if key not in fingerprints or fingerprints[key] != rec.get("fingerprint") or key in done or is_transport_failure(rec.get("error")):
            return False
        done[key] = rec
        return True

    _, dropped = keep_rows(path, keep)
    if dropped:
        log.info("dropping %d judgments made for other completions or settings, or lost in transport", dropped)
    return done


def make_request(item: dict, c: Config, mode: str, stage_seed: int):
    from tinystories.llm import Request

    src = item["source"]
    template = c.template()
    user = judge_prompt(src["task"], src["prompt"], item["text"], template)
    common = dict(key=item["key"], max_tokens=c.max_tokens, temperature=c.temperature, seed=derive_seed(stage_seed, item["key"]), template_version=template["version"])
    if mode == "completion":
        return Request(prompt=judge_completion_prompt(user, template["system"]), **common)
    return Request(messages=({"role": "system", "content": template["system"]}, {"role": "user", "content": user}), **common)


def reply_validator(mode: str) -> Callable:
    """Parse a reply as grades; raises Reject when it does not parse."""

    def validate(resp) -> dict:
        text = resp.text or ""
        if mode == "completion" and not re.match(r"\s*\**assessment", text, re.IGNORECASE):
            text = JUDGE_REPLY_START + text  # the prompt ended with it, so the reply starts after it
        return parse_grades(text)

    return validate


def judgment_record(item: dict, value: dict | None, error: str | None, meta: dict, reply: str | None = None) -> dict:
    """One line of eval/judgments.jsonl: the request, the verdict `value` (or the failure and the
    reply); `meta` holds judge_model, judge_backend, seed and attempts."""
    src = item["source"]
    rec = {
        "key": item["key"],
        "role": item["role"],
        "damage": item["damage"],
        "model": src["model"],
        "kind": src["kind"],
        "task": src["task"],
        "prompt_id": src["prompt_id"],
        "sample_id": src["sample_id"],
        "ok": error is None,
        "grades": None,
        "age_group": None,
        "error": error,
        **{k: meta.get(k) for k in ("judge_model", "judge_backend", "seed", "attempts")},
        "fingerprint": item["fingerprint"],
        # Present in every row (null where absent) so the file keeps one schema.
        "assessment": None,
        "reply": None,
        "age_group_error": None,
        "distributions": None,
        "text": item["text"] if item["role"] in ("damaged", "original") else None,  # not in completions.jsonl: kept so the pair can be read
        "prompt": src["prompt"] if item["role"] == "original" else None,
    }
    if error is None:
        rec["grades"] = {k: value[k] for k in CATEGORIES}
        rec["age_group"] = value["age_group"]
        rec["age_group_error"] = value.get("age_group_error")  # expected scoring: the grades stand without it
        rec["assessment"] = value["assessment"][:2000]
    elif reply is not None:
        rec["reply"] = reply[:2000]  # kept so a failure can be inspected
    if value is not None and "distributions" in value:
        # expected scoring: per category, grade -> probability (a failure keeps those it read, and the one that failed)
        rec["distributions"] = value["distributions"]
    return rec


def send_sampled(client, todo: list[dict], record: Callable, c: Config, mode: str, stage_seed: int) -> list[str]:
    """Judge `todo` with whole replies, parsed; `record(item, value, error, meta, reply)` takes each
    final judgment as it arrives. Returns the transport errors, which are not recorded."""
    wanted = {item["key"]: item for item in todo}
    transport: list[str] = []

    def on_result(resp) -> None:
        if not resp.ok and is_transport_failure(resp.error):
            transport.append(resp.error)
            return
        record(wanted[resp.key], resp.value, resp.error, expected.response_meta(resp), resp.text or "")

    requests = [make_request(item, c, mode, stage_seed) for item in todo]
    client.complete(requests, validate=reply_validator(mode), on_result=on_result, collect=False, total=len(todo), description="judge")
    return transport


def send_expected(client, todo: list[dict], record: Callable, c: Config, stage_seed: int) -> list[str]:
    """Judge `todo` by expected scoring (eval/expected.py); the same contract as `send_sampled`."""
    settings = expected.Settings(max_tokens=c.max_tokens, temperature=c.temperature, top_logprobs=c.top_logprobs, min_mass=c.min_grade_mass, template=c.template())
    described = client.describe()
    who = f"the judge ({described.get('backend')}, {described.get('model')})"
    transport: list[str] = []
    if not c.assessment:

        def on_direct(item: dict, value: dict | None, error: str | None, meta: dict) -> None:
            if is_transport_failure(error):
                transport.append(error)
                return
            record(item, value, error, meta, None)

        expected.send_direct(client, todo, settings, {item["key"]: derive_seed(stage_seed, item["key"]) for item in todo}, who, on_direct)
        return transport
    judgments = [expected.start(item, settings, derive_seed(stage_seed, item["key"])) for item in todo]

    def on_finished(j) -> None:
        if is_transport_failure(j.error):
            transport.append(j.error)
            return
        record(j.item, j.value(), j.error, j.meta, j.reply_so_far())

    expected.run_rounds(client, judgments, who, on_finished)
    return transport


def send_requests(client, todo: list[dict], done: dict[str, dict], path: Path, c: Config, mode: str, scoring: str, stage_seed: int) -> list[str]:
    """Judge `todo`, appending each final judgment to `path` (and `done`) as it arrives. Returns
    the transport errors: those requests are not recorded, so that a rerun sends them again."""
    with JsonlWriter(path, sync_every=16) as writer:

        def record(item: dict, value: dict | None, error: str | None, meta: dict, reply: str | None = None) -> None:
            rec = judgment_record(item, value, error, meta, reply)
            writer.write(rec)
            done[item["key"]] = rec

        if scoring == "expected":
            return send_expected(client, todo, record, c, stage_seed)
        return send_sampled(client, todo, record, c, mode, stage_seed)


def transport_failure(errors: list[str], sent: int) -> UserError:
    last = errors[-1].splitlines()[0][:200] if errors[-1] else "transport"
    return UserError(
        f"judge: {len(errors)} of {sent} requests failed in transport ({last}); nothing was recorded for them: "
        "check the judge's llm backend (judge.llm, llm) and rerun the same command to send exactly those"
    )


def contamination_check(c: Config, rundir: RunDir, completions: list[dict]) -> dict:
    if not c.contamination_n:
        return {"n": 0, "skipped": "judge.contamination_n is 0"}
    return prompt_contamination(completions, read_jsonl(rundir.path(STORIES)), c.contamination_n)


def score_run(cfg, rundir: RunDir, completions: list[dict], graded: list[dict], records: list[dict], plan: list[dict], settings: dict, plan_info: dict, stage_seed: int) -> dict:
    """eval/scores.json: the judgments aggregated, then the judge-free signals."""
    c: Config = cfg.judge
    rules = TrustRules(min_discrimination=c.min_discrimination, max_inconsistency=c.max_inconsistency, min_pairs=c.min_pairs, must_catch=c.must_catch)
    scores = build_scores(graded, records, settings, plan_info, rules)
    scorer, info = make_scorer(c.reference, cfg.llm_for(SECTION))
    damaged = [item for item in plan if item["role"] == "damaged"]
    scores["perplexity"] = perplexity_section(scorer, info, graded, damaged, c.perplexity_max, stage_seed)
    scores["contamination"] = contamination_check(c, rundir, completions)
    scores["word_compliance"] = word_compliance(completions)
    write_json(rundir.path(SCORES), scores)
    return scores


def judge_settings(client, c: Config, mode: str, scoring: str) -> dict:
    """What every judgment depends on besides its texts (part of its fingerprint, and of scores.json)."""
    settings = {"judge": client.describe(), "template": c.template()["version"], "max_tokens": c.max_tokens, "temperature": c.temperature, "mode": mode, "scoring": scoring}
    if scoring == "expected":
        settings.update(top_logprobs=c.top_logprobs, min_grade_mass=c.min_grade_mass, assessment=c.assessment)
    return settings


def run(cfg, rundir: RunDir, force: bool = False) -> dict:
    from tinystories.llm import make_client

    c: Config = cfg.judge
    completions = load_completions(rundir)
    graded = [r for r in completions if graded_by_judge(r)]
    stage_seed = derive_seed(cfg.seed, NAME)
    heldout, origin = heldout_originals(rundir, c.originals, c.discrimination_sample, stage_seed)

    llm_cfg = cfg.llm_for(SECTION)
    client = make_client(llm_cfg, rundir.path(LLM_CACHE_DIR))
    try:
        scoring = expected.resolve_scoring(c.scoring, llm_cfg.mode, client, stage_seed, c.assessment)
        plan, plan_info = plan_requests(graded, c, stage_seed, heldout, deterministic=scoring == "expected" and not c.assessment)
        plan_info["originals"] = origin
        settings = judge_settings(client, c, llm_cfg.mode, scoring)
        fingerprint_plan(plan, settings)
        done = resume_judgments(rundir.path(JUDGMENTS), plan)
        todo = [item for item in plan if item["key"] not in done]
        transport = send_requests(client, todo, done, rundir.path(JUDGMENTS), c, llm_cfg.mode, scoring, stage_seed)
    finally:
        client.close()
    if transport:
        raise transport_failure(transport, len(todo))

    records = [done[item["key"]] for item in plan if item["key"] in done]
    scores = score_run(cfg, rundir, completions, graded, records, plan, settings, plan_info, stage_seed)
    return {
        "judged": scores["totals"]["judged"],
        "failed": scores["totals"]["failed"],
        "requests_now": len(todo),
        "unreliable": scores["reliability"]["unreliable"],
        "trusted": scores["reliability"]["trusted"],
        "originals": origin["source"],
        "scoring": scoring,
        "llm": client.stats.as_dict(),
    }
