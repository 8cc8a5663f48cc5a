"""Grade the completions with an LLM judge (the paper's method), and measure how far to trust it.

    tinystories judge --run-dir runs/quickstart [--set judge.llm.model=... --set judge.reference=none]

The grading prompt follows the paper: the story's beginning, then `***`, then the student's
completion; the judge writes an assessment of the part after `***`, then grades it out of 10
for grammar, creativity and consistency with the beginning (plus plot for instruction-following
completions, where the "beginning" is the instruction), and guesses the writer's age group
(A: 3 or under, B: 4-5, C: 6-7, D: 8-9, E: 10-12, F: 13-16). Replies are parsed strictly
(`parse_grades`); an unparseable reply is retried with a fresh seed by the LLM layer and then
recorded in eval/judgments.jsonl as a failure with its reason: never scored as zero, never dropped.

Reliability, measured on every run (a weak judge is the norm on a laptop):
- consistency: `judge.consistency_sample` completions judged a second time with another seed;
  mean absolute difference per category;
- discrimination: `judge.discrimination_sample` completions damaged four ways (sentences
  shuffled, words shuffled into salad, cut after a few words, replaced by a completion of another
  prompt) and judged the same way; per damage and category, the share of pairs where the
  original scores strictly higher. A judge whose salad discrimination on grammar is below
  `judge.min_discrimination` is flagged unreliable (the report then says so at the top).
Judge-free signals:
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
damaged) and eval/scores.json (per model, task and category: mean, 95% CI, n judged, n failed;
the reliability tables; perplexity per model; contamination; word_compliance). A rerun skips requests already
recorded with the same fingerprint (judge identity, template, settings, completion text).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from tinystories.errors import UserError
from tinystories.io.rundir import JsonlWriter, RunDir, read_jsonl, write_json, write_text

NAME = "judge"
SECTION = "judge"
USES = ("llm",)

COMPLETIONS = "eval/completions.jsonl"
JUDGMENTS = "eval/judgments.jsonl"
SCORES = "eval/scores.json"
STORIES = "data/stories.jsonl"

TEMPLATE_VERSION = "judge-grading-1"
CATEGORIES = ("grammar", "creativity", "consistency", "plot")
AGE_GROUPS = {"A": "3 or under", "B": "4-5", "C": "6-7", "D": "8-9", "E": "10-12", "F": "13-16"}
DAMAGES = ("shuffled_sentences", "word_salad", "truncated", "swapped")

log = logging.getLogger("tinystories.eval.judge")


@dataclass
class Config:
    llm: dict[str, Any] = field(default_factory=dict)  # overrides of the root llm section for the judge, e.g. {backend: openai, model: gpt-4o, base_urls: [...]}
    max_tokens: int = 400  # judge reply budget (assessment + grades)
    temperature: float = 0.7  # judge sampling temperature (> 0, so the consistency check measures something)
    max_judged: int = 0  # judge at most this many completions per model (a seeded sample); 0 = all
    consistency_sample: int = 20  # completions judged twice with different seeds
    discrimination_sample: int = 20  # completions judged again after each of the four damages
    min_discrimination: float = 0.75  # below this share on word salad / grammar, the judge is flagged unreliable
    reference: str = "embedded"  # perplexity reference LM: embedded | a path to a HF causal LM directory | none
    perplexity_max: int = 0  # completions per model scored for perplexity (a seeded sample); 0 = all
    contamination_n: int = 13  # word n-gram length for the prompt/training overlap check; 0 = skip

    def check(self) -> list[str]:
        problems = []
        if self.max_tokens < 16:
            problems.append("max_tokens: must be at least 16 (the reply holds an assessment and four grades)")
        if self.temperature < 0:
            problems.append("temperature: must be 0 or more")
        for name in ("max_judged", "consistency_sample", "discrimination_sample", "perplexity_max", "contamination_n"):
            if getattr(self, name) < 0:
                problems.append(f"{name}: must be 0 or more")
        if not 0 <= self.min_discrimination <= 1:
            problems.append("min_discrimination: must be a share between 0 and 1")
        if self.reference not in ("embedded", "none") and not self.reference.strip():
            problems.append("reference: use embedded, none or a path to a HF causal LM directory")
        return problems


def inputs(cfg) -> list[str]:
    out = [COMPLETIONS]
    if cfg.judge.contamination_n:
        out.append(STORIES)
    return out


def outputs(cfg) -> list[str]:
    return [JUDGMENTS, SCORES]


# -- the grading prompt ------------------------------------------------------------------------

SYSTEM = "You are an experienced teacher who grades short stories written by young students. You are fair, specific and brief."

CONTINUE_TEMPLATE = """Here is a writing exercise. The student received the beginning of a story and had to finish it. The beginning comes first; the three stars *** mark where the given beginning stops and the student's own writing starts. The beginning may stop in the middle of a sentence: the student then has to finish that sentence in a way that fits.

{beginning} ***{completion}

First write a short assessment of the student's part only (the text after ***). Is it grammatically correct? Does it continue the beginning: the same characters and situation, and a sensible end to the interrupted sentence? Is it creative? Does the story make sense as a whole?

Then grade the student's part with a whole number from 1 (very poor) to 10 (excellent) for each of grammar, creativity and consistency with the beginning, and guess the student's age group from the writing: A (3 or under), B (4-5), C (6-7), D (8-9), E (10-12) or F (13-16).

Reply in exactly this format:
Assessment: <your assessment>
Grammar: <1-10>/10
Creativity: <1-10>/10
Consistency: <1-10>/10
Age group: <one letter A-F>"""

INSTRUCT_TEMPLATE = """Here is a writing exercise. The student received the instructions below and had to write a short story that follows them. The instructions come first; the three stars *** mark where the student's story starts. Words: listed words must appear in the story; Features: the story must have these features; Summary: the story must tell this plot; Sentence: the story must contain this sentence.

{beginning}
***{completion}

First write a short assessment of the student's story. Is it grammatically correct? Does it follow every instruction? Is it creative? Does the plot make sense, with a beginning, a middle and an end?

Then grade the story with a whole number from 1 (very poor) to 10 (excellent) for each of grammar, creativity, consistency with the instructions and plot, and guess the student's age group from the writing: A (3 or under), B (4-5), C (6-7), D (8-9), E (10-12) or F (13-16).

Reply in exactly this format:
Assessment: <your assessment>
Grammar: <1-10>/10
Creativity: <1-10>/10
Consistency: <1-10>/10
Plot: <1-10>/10
Age group: <one letter A-F>"""


def categories_for(task: str) -> tuple[str, ...]:
    return CATEGORIES if task == "instruct" else CATEGORIES[:3]


def render_prompt(task: str, beginning: str, completion: str) -> str:
    template = INSTRUCT_TEMPLATE if task == "instruct" else CONTINUE_TEMPLATE
    return template.format(beginning=beginning.rstrip(), completion=completion)


_NUM = r"(\d+(?:\.\d+)?)"


def parse_grades(text: str | None, task: str) -> dict:
    """Grades from a judge reply, or `Reject` with the reason. Strict on structure:

    every category of the task exactly once (repeats must agree), each a number from 1 to 10
    (written N, N/10 or N out of 10; any other scale is rejected), and one age group letter A-F.
    Markdown decoration (**Grammar:** 8/10, - Grammar: 8) is tolerated.
    """
    from tinystories.llm import Reject

    if not text or not text.strip():
        raise Reject("empty reply")
    out: dict[str, Any] = {}
    first_grade_at = len(text)
    for cat in categories_for(task):
        pattern = re.compile(rf"^[ \t>*#_-]*{cat}[ \t*_]*[:=][ \t*_]*{_NUM}[ \t*_]*(?:(?:/|out of)[ \t]*(\d+(?:\.\d+)?))?", re.IGNORECASE | re.MULTILINE)
        found = list(pattern.finditer(text))
        if not found:
            raise Reject(f"no {cat} grade")
        values = set()
        for m in found:
            value = float(m.group(1))
            scale = m.group(2)
            if scale is not None and float(scale) != 10:
                raise Reject(f"{cat} graded out of {scale}, not 10")
            if not 1 <= value <= 10:
                raise Reject(f"{cat} grade {m.group(1)} outside 1-10")
            values.add(value)
            first_grade_at = min(first_grade_at, m.start())
        if len(values) > 1:
            raise Reject(f"conflicting {cat} grades {sorted(values)}")
        out[cat] = values.pop()
    ages = re.findall(r"^[ \t>*#_-]*age(?:[ \t]*group)?[ \t*_]*[:=][ \t*_(\[]*([A-Fa-f])(?![A-Za-z])", text, re.IGNORECASE | re.MULTILINE)
    if not ages:
        raise Reject("no age group A-F")
    if len({a.upper() for a in ages}) > 1:
        raise Reject(f"conflicting age groups {sorted({a.upper() for a in ages})}")
    out["age_group"] = ages[0].upper()
    head = text[:first_grade_at]
    m = re.search(r"assessment[ \t*_]*:[ \t*_]*", head, re.IGNORECASE)
    out["assessment"] = (head[m.end() :] if m else head).strip()
    return out


# -- damage ------------------------------------------------------------------------------------

_SENT = re.compile(r"[^.!?]+[.!?]+[\"')\]]*|[^.!?]+$")


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENT.findall(text) if s.strip()]


def shuffle_sentences(text: str, rng: random.Random) -> str | None:
    """The same sentences in another order; None when there are fewer than two sentences."""
    sents = split_sentences(text)
    if len(sents) < 2:
        return None
    order = list(range(len(sents)))
    for _ in range(10):
        rng.shuffle(order)
        if order != sorted(order):
            break
    return " " + " ".join(sents[i] for i in order)


def word_salad(text: str, rng: random.Random) -> str | None:
    """The same words in random order, punctuation left where the words take it."""
    words = text.split()
    if len(words) < 3:
        return None
    shuffled = words[:]
    for _ in range(10):
        rng.shuffle(shuffled)
        if shuffled != words:
            break
    return " " + " ".join(shuffled)


def truncate(text: str, rng: random.Random, low: int = 2, high: int = 5) -> str | None:
    """Only the first few words: a completion that stops before saying anything."""
    words = text.split()
    n = rng.randint(low, high)
    if len(words) <= n + 2:
        return None
    return " " + " ".join(words[:n])


def damage(kind: str, text: str, rng: random.Random, other: str | None = None) -> str | None:
    if kind == "shuffled_sentences":
        return shuffle_sentences(text, rng)
    if kind == "word_salad":
        return word_salad(text, rng)
    if kind == "truncated":
        return truncate(text, rng)
    if kind == "swapped":
        return other if other and other.strip() and other != text else None
    raise ValueError(f"unknown damage {kind}")


# -- statistics --------------------------------------------------------------------------------

# Two-sided 95% Student t quantiles; beyond 30 degrees of freedom the normal 1.96 is close enough.
_T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def mean_ci(values: list[float]) -> dict:
    """Mean and the half-width of its 95% confidence interval (t distribution); None when n < 2."""
    n = len(values)
    if n == 0:
        return {"mean": None, "ci95": None, "n": 0}
    mean = sum(values) / n
    if n < 2:
        return {"mean": round(mean, 4), "ci95": None, "n": n}
    sd = statistics.stdev(values)
    t = _T95[n - 2] if n - 1 <= len(_T95) else 1.96
    return {"mean": round(mean, 4), "ci95": round(t * sd / math.sqrt(n), 4), "n": n}


def proportion_ci(hits: int, n: int) -> dict:
    """A share with its 95% Wilson score interval: unlike mean ± t*sd, it stays honest at the
    edges (0 of 3 is not "certainly 0%")."""
    if n == 0:
        return {"share": None, "low": None, "high": None, "hits": 0, "n": 0}
    z = 1.96
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return {"share": round(p, 4), "low": round(max(0.0, centre - half), 4), "high": round(min(1.0, centre + half), 4), "hits": hits, "n": n}


def consistency_table(pairs: list[tuple[dict, dict]]) -> dict:
    """Mean absolute grade difference per category between two judgments of the same completion."""
    out: dict[str, Any] = {"n_pairs": len(pairs), "mean_abs_diff": {}}
    for cat in CATEGORIES:
        diffs = [abs(a[cat] - b[cat]) for a, b in pairs if cat in a and cat in b]
        if diffs:
            out["mean_abs_diff"][cat] = round(sum(diffs) / len(diffs), 4)
    return out


def discrimination_table(pairs: list[tuple[dict, dict]], lower_is_better: bool = False, keys: Iterable[str] = CATEGORIES) -> dict:
    """Share of (original, damaged) pairs where the original is strictly better, per key."""
    out: dict[str, Any] = {"n_pairs": len(pairs), "share_original_better": {}}
    for key in keys:
        both = [(a[key], b[key]) for a, b in pairs if key in a and key in b]
        if both:
            better = sum((x < y) if lower_is_better else (x > y) for x, y in both)
            out["share_original_better"][key] = round(better / len(both), 4)
    return out


# -- contamination -----------------------------------------------------------------------------

_WORD = re.compile(r"[a-z0-9']+")


def words_of(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def ngrams(words: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def contamination(prompts: dict[str, str], stories: Iterable[dict], n: int) -> dict:
    """Word n-gram overlap between each prompt and the training stories (streamed once)."""
    wanted: dict[tuple[str, ...], set[str]] = {}
    per_prompt: dict[str, dict] = {}
    for pid, text in prompts.items():
        grams = ngrams(words_of(text), n)
        per_prompt[pid] = {"ngrams": len(grams), "matched": set(), "example_story": None}
        for g in grams:
            wanted.setdefault(g, set()).add(pid)
    scanned = 0
    for story in stories:
        scanned += 1
        text = story.get("text") or story.get("story") or ""
        w = words_of(text)
        for i in range(len(w) - n + 1):
            g = tuple(w[i : i + n])
            hits = wanted.get(g)
            if hits:
                for pid in hits:
                    rec = per_prompt[pid]
                    rec["matched"].add(g)
                    if rec["example_story"] is None:
                        rec["example_story"] = story.get("id", scanned - 1)
    out = {}
    for pid, rec in per_prompt.items():
        matched = len(rec["matched"])
        out[pid] = {
            "ngrams": rec["ngrams"],
            "matched": matched,
            "share": round(matched / rec["ngrams"], 4) if rec["ngrams"] else None,
            "example_story": rec["example_story"],
        }
    return {"n": n, "stories_scanned": scanned, "prompts": out, "flagged": sorted(p for p, r in out.items() if r["matched"])}


# -- word compliance ---------------------------------------------------------------------------


def graded_by_judge(rec: dict) -> bool:
    """Whether the LLM judge (and the perplexity check) sees this completion: not when a model
    that never learnt the instruction format got an instruction (a word-compliance baseline)."""
    return rec["task"] != "instruct" or rec["kind"] == "instruct"


def word_compliance(completions: Iterable[dict], words_used: Callable[[str, list[str]], dict | None] | None = None) -> dict:
    """Per model, over its instruction completions whose instruction requests words: the share
    containing ALL of them (with its 95% Wilson interval) and the mean share of them present (mean
    and 95% CI half-width over completions).

    A word counts in any inflection under any part of speech, decided by the same check the data
    filters apply to generated stories (`StoryFilter.words_used`), so "present" means the same here
    as in data/stats.json.
    """
    models: dict[str, dict] = {}
    for rec in completions:
        if rec["task"] != "instruct":
            continue
        m = models.setdefault(rec["model"], {"kind": rec["kind"], "instruction_completions": 0, "all": [], "shares": []})
        m["instruction_completions"] += 1
        words = [w for w in rec.get("words") or [] if str(w).strip()]
        if not words:
            continue  # e.g. a Summary-only instruction: nothing to count
        if words_used is None:
            from tinystories.data.filters import FilterOptions, StoryFilter

            words_used = StoryFilter(FilterOptions()).words_used
        used = words_used(rec["text"], words) or {}
        present = sum(bool(used.get(w)) for w in dict.fromkeys(words))
        total = len(dict.fromkeys(words))
        m["all"].append(1.0 if present == total else 0.0)
        m["shares"].append(present / total)
    out = {
        name: {
            "kind": m["kind"],
            "instruction_completions": m["instruction_completions"],
            "n": len(m["all"]),
            "all_words": proportion_ci(int(sum(m["all"])), len(m["all"])),
            "words_present": mean_ci(m["shares"]),
        }
        for name, m in sorted(models.items())
    }
    return {"method": "a requested word is present when the completion contains it or any of its inflections as noun, verb or adjective", "models": out}


# -- reference perplexity ----------------------------------------------------------------------

Scorer = Callable[[str, str], list[float]]


def hf_scorer(path: str | Path, device: str = "cpu") -> tuple[Scorer, dict]:
    """log p(token | prefix, earlier tokens) for the continuation's tokens under a HF causal LM."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not (path / "config.json").exists():
        raise UserError(f"judge.reference: {path} is not a HF causal LM directory (no config.json); use embedded, none or a save_pretrained path")
    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path)).to(device).eval()
    start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    limit = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None) or 2048

    def score(prefix: str, continuation: str) -> list[float]:
        ctx = ([start] if start is not None else []) + tok(prefix, add_special_tokens=False).input_ids
        target = tok(continuation, add_special_tokens=False).input_ids
        if not target or not ctx:
            return []
        ids = (ctx + target)[-limit:]
        n_target = min(len(target), len(ids) - 1)
        with torch.inference_mode():
            logits = model(torch.tensor([ids], device=device)).logits[0].float()
        logp = torch.log_softmax(logits[-n_target - 1 : -1], dim=-1)
        picked = logp.gather(-1, torch.tensor(ids[-n_target:], device=device).unsqueeze(-1)).squeeze(-1)
        return picked.tolist()

    return score, {"reference": "hf", "path": str(path)}


def embedded_scorer(cfg) -> tuple[Scorer | None, dict]:
    import dataclasses

    from tinystories.llm import client as client_mod
    from tinystories.llm.config import LLMConfig

    llm_cfg = cfg.llm_for("judge")
    if llm_cfg.backend != "embedded":
        llm_cfg = dataclasses.replace(LLMConfig(), n_threads=llm_cfg.n_threads)  # the judge is remote; score with the default embedded model
    # Through make_backend, like every LLM use, so a test's scripted backend replaces it too.
    backend = client_mod.make_backend(llm_cfg)
    score = getattr(backend, "token_logprobs", None)
    if score is None:
        return None, {"reference": "embedded", "unavailable": f"the {backend.name} backend cannot score tokens"}
    return score, {"reference": "embedded", **backend.identity()}


def make_scorer(cfg) -> tuple[Scorer | None, dict]:
    ref = cfg.judge.reference
    if ref == "none":
        return None, {"reference": "none"}
    if ref == "embedded":
        return embedded_scorer(cfg)
    return hf_scorer(Path(ref).expanduser())


def perplexity(logprobs: list[float]) -> float | None:
    return math.exp(-sum(logprobs) / len(logprobs)) if logprobs else None


# -- the stage ---------------------------------------------------------------------------------


def _hash(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _seed(stage_seed: int, key: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{stage_seed}|{key}".encode()).digest()[:4], "little") & 0x7FFFFFFF


def _ckey(rec: dict) -> str:
    return f"{rec['model']}|{rec['prompt_id']}|{rec['sample_id']}"


def plan_requests(completions: list[dict], c: Config, stage_seed: int) -> tuple[list[dict], dict]:
    """Every judge request: main judgments, repeats, damaged versions (deterministic given the seed)."""
    rng = random.Random(stage_seed)
    by_model: dict[str, list[dict]] = {}
    for rec in completions:
        by_model.setdefault(rec["model"], []).append(rec)
    judged: list[dict] = []
    for model in sorted(by_model):
        recs = sorted(by_model[model], key=lambda r: (r["task"], r["prompt_id"], r["sample_id"]))
        if c.max_judged and len(recs) > c.max_judged:
            recs = sorted(random.Random(f"{stage_seed}|{model}").sample(recs, c.max_judged), key=lambda r: (r["task"], r["prompt_id"], r["sample_id"]))
        judged.extend(recs)
    plan = [{"role": "main", "damage": None, "source": r, "text": r["text"], "key": f"main|{_ckey(r)}"} for r in judged]
    usable = [r for r in judged if r["text"].strip()]
    repeat = rng.sample(usable, min(c.consistency_sample, len(usable)))
    plan += [{"role": "repeat", "damage": None, "source": r, "text": r["text"], "key": f"repeat|{_ckey(r)}"} for r in repeat]
    disc = rng.sample(usable, min(c.discrimination_sample, len(usable)))
    skipped: dict[str, int] = {d: 0 for d in DAMAGES}
    for r in disc:
        # Swap in a story the same model wrote for another prompt: as fluent, but off topic.
        others = [o for o in usable if o["prompt_id"] != r["prompt_id"] and o["task"] == r["task"] and o["model"] == r["model"]]
        others = others or [o for o in usable if o["prompt_id"] != r["prompt_id"] and o["task"] == r["task"]]
        other = rng.choice(others)["text"] if others else None
        for kind in DAMAGES:
            drng = random.Random(f"{stage_seed}|{kind}|{_ckey(r)}")
            text = damage(kind, r["text"], drng, other)
            if text is None:
                skipped[kind] += 1
                continue
            plan.append({"role": "damaged", "damage": kind, "source": r, "text": text, "key": f"damaged|{kind}|{_ckey(r)}"})
    return plan, {"damage_not_applicable": skipped, "discrimination_sample": len(disc), "consistency_sample": len(repeat)}


def run(cfg, rundir: RunDir, force: bool = False) -> dict:
    from tinystories.pipeline.config import derive_seed
    from tinystories.llm import Request, make_client

    c: Config = cfg.judge
    completions = list(read_jsonl(rundir.path(COMPLETIONS)))
    if not completions:
        raise UserError(f"{rundir.path(COMPLETIONS)} has no completions; run `tinystories complete --run-dir {rundir.root}` first")
    for i, rec in enumerate(completions, 1):
        missing = [k for k in ("model", "kind", "task", "prompt_id", "sample_id", "prompt", "text") if k not in rec]
        if missing:
            raise UserError(f"{rundir.path(COMPLETIONS)}:{i}: record lacks {', '.join(missing)}; rerun `tinystories complete --force`")
    stage_seed = derive_seed(cfg.seed, NAME)
    llm_cfg = cfg.llm_for("judge")
    client = make_client(llm_cfg, rundir.path("cache/llm"))
    judge_id = client.describe()
    settings = {"judge": judge_id, "template": TEMPLATE_VERSION, "max_tokens": c.max_tokens, "temperature": c.temperature, "mode": llm_cfg.mode}

    graded = [r for r in completions if graded_by_judge(r)]
    plan, plan_info = plan_requests(graded, c, stage_seed)
    for item in plan:
        item["fingerprint"] = _hash(settings, item["key"], item["source"]["prompt"], item["text"])
    wanted = {item["key"]: item for item in plan}

    # Resume: keep records of planned requests with the current fingerprint, drop the rest.
    out_path = rundir.path(JUDGMENTS)
    done: dict[str, dict] = {}
    if out_path.exists():
        stale = 0
        for rec in read_jsonl(out_path):
            item = wanted.get(rec.get("key"))
            if item is None or item["fingerprint"] != rec.get("fingerprint") or rec["key"] in done:
                stale += 1
                continue
            done[rec["key"]] = rec
        if stale:
            log.info("dropping %d judgments made for other completions or settings", stale)
            write_text(out_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in done.values()))
    todo = [item for item in plan if item["key"] not in done]

    def make_request(item: dict) -> Request:
        src = item["source"]
        user = render_prompt(src["task"], src["prompt"], item["text"])
        common = dict(key=item["key"], max_tokens=c.max_tokens, temperature=c.temperature, seed=_seed(stage_seed, item["key"]), template_version=TEMPLATE_VERSION)
        if llm_cfg.mode == "completion":
            return Request(prompt=f"{SYSTEM}\n\n{user}\n\nAssessment:", **common)
        return Request(messages=({"role": "system", "content": SYSTEM}, {"role": "user", "content": user}), **common)

    def validate(resp):
        task = wanted[resp.key]["source"]["task"]
        text = resp.text or ""
        if llm_cfg.mode == "completion" and not re.match(r"\s*\**assessment", text, re.IGNORECASE):
            text = "Assessment:" + text  # the prompt ended with "Assessment:"
        return parse_grades(text, task)

    with JsonlWriter(out_path, sync_every=16) as writer:

        def on_result(resp) -> None:
            item = wanted[resp.key]
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
                "ok": resp.ok,
                "grades": None,
                "age_group": None,
                "error": resp.error,
                "judge_model": resp.model,
                "judge_backend": resp.backend,
                "seed": resp.seed,
                "attempts": resp.attempts,
                "fingerprint": item["fingerprint"],
            }
            if resp.ok:
                value = resp.value
                rec["grades"] = {k: value[k] for k in categories_for(src["task"])}
                rec["age_group"] = value["age_group"]
                rec["assessment"] = value["assessment"][:2000]
            else:
                rec["reply"] = (resp.text or "")[:2000]  # kept so a failure can be inspected
            if item["role"] == "damaged":
                rec["text"] = item["text"]
            writer.write(rec)
            done[item["key"]] = rec

        try:
            client.complete([make_request(i) for i in todo], validate=validate, on_result=on_result, collect=False, total=len(todo), description="judge")
        finally:
            client.close()

    records = [done[item["key"]] for item in plan if item["key"] in done]
    scores = build_scores(graded, records, plan, settings, plan_info, c)
    scores["perplexity"] = perplexity_section(cfg, graded, plan, stage_seed)
    scores["contamination"] = contamination_section(cfg, rundir, completions)
    scores["word_compliance"] = word_compliance(completions)
    write_json(rundir.path(SCORES), scores)
    return {
        "judged": scores["totals"]["judged"],
        "failed": scores["totals"]["failed"],
        "requests_now": len(todo),
        "unreliable": scores["reliability"]["unreliable"],
        "llm": client.stats.as_dict(),
    }


def build_scores(completions: list[dict], records: list[dict], plan: list[dict], settings: dict, plan_info: dict, c: Config) -> dict:
    """eval/scores.json minus perplexity and contamination: everything from the judgments."""
    main = [r for r in records if r["role"] == "main"]
    models: dict[str, dict] = {}
    kinds = {r["model"]: r["kind"] for r in completions}
    for model in sorted(kinds):
        tasks: dict[str, dict] = {}
        for task in sorted({r["task"] for r in completions if r["model"] == model}):
            rows = [r for r in main if r["model"] == model and r["task"] == task]
            ok = [r for r in rows if r["ok"]]
            failures: dict[str, int] = {}
            for r in rows:
                if not r["ok"]:
                    failures[r["error"]] = failures.get(r["error"], 0) + 1
            ages: dict[str, int] = {}
            for r in ok:
                ages[r["age_group"]] = ages.get(r["age_group"], 0) + 1
            tasks[task] = {
                "completions": sum(1 for r in completions if r["model"] == model and r["task"] == task),
                "n_judged": len(ok),
                "n_failed": len(rows) - len(ok),
                "failure_reasons": failures,
                "categories": {cat: mean_ci([r["grades"][cat] for r in ok]) for cat in categories_for(task)},
                "age_groups": dict(sorted(ages.items())),
            }
        models[model] = {"kind": kinds[model], "tasks": tasks}

    def grades_by(role: str, damage: str | None = None) -> dict[str, dict]:
        return {f"{r['model']}|{r['prompt_id']}|{r['sample_id']}": r["grades"] for r in records if r["role"] == role and r["damage"] == damage and r["ok"]}

    originals = grades_by("main")
    repeats = grades_by("repeat")
    cons = consistency_table([(originals[k], repeats[k]) for k in repeats if k in originals])
    cons["n_failed"] = sum(1 for r in records if r["role"] == "repeat" and not r["ok"])
    disc: dict[str, dict] = {}
    for kind in DAMAGES:
        damaged = grades_by("damaged", kind)
        table = discrimination_table([(originals[k], damaged[k]) for k in damaged if k in originals])
        table["n_failed"] = sum(1 for r in records if r["role"] == "damaged" and r["damage"] == kind and not r["ok"])
        table["not_applicable"] = plan_info["damage_not_applicable"][kind]
        disc[kind] = table
    reasons = []
    salad = disc["word_salad"]["share_original_better"].get("grammar")
    if salad is None:
        reasons.append("no word-salad pair could be judged, so the judge's discrimination is unknown")
    elif salad < c.min_discrimination:
        reasons.append(f"the judge rated the original above its word salad for grammar in only {salad:.0%} of pairs (needs {c.min_discrimination:.0%})")
    n_main = len(main)
    n_failed = sum(1 for r in main if not r["ok"])
    failure_reasons: dict[str, int] = {}
    for r in records:
        if not r["ok"]:
            failure_reasons[r["error"]] = failure_reasons.get(r["error"], 0) + 1
    return {
        "judge": {**settings, "template_version": TEMPLATE_VERSION},
        "age_groups": AGE_GROUPS,
        "models": models,
        "totals": {"requests": len(records), "judged": n_main - n_failed, "failed": n_failed, "failure_reasons_all_roles": failure_reasons},
        "reliability": {
            "consistency": cons,
            "discrimination": disc,
            "min_discrimination": c.min_discrimination,
            "unreliable": bool(reasons),
            "reasons": reasons,
            **plan_info,
        },
    }


def perplexity_section(cfg, completions: list[dict], plan: list[dict], stage_seed: int) -> dict:
    from tinystories.progress import progress_bar

    c: Config = cfg.judge
    scorer, info = make_scorer(cfg)
    if scorer is None:
        return {**info, "models": {}, "discrimination": {}}
    chosen: list[dict] = []
    by_model: dict[str, list[dict]] = {}
    for rec in completions:
        if rec["text"].strip():
            by_model.setdefault(rec["model"], []).append(rec)
    for model, recs in sorted(by_model.items()):
        if c.perplexity_max and len(recs) > c.perplexity_max:
            recs = random.Random(f"{stage_seed}|ppl|{model}").sample(recs, c.perplexity_max)
        chosen.extend(recs)
    damaged = [item for item in plan if item["role"] == "damaged"]
    disc_sources = {_ckey(item["source"]): item["source"] for item in damaged}
    cache: dict[str, list[float]] = {}
    jobs = [(_ckey(r), r["prompt"], r["text"]) for r in chosen]
    jobs += [(k, s["prompt"], s["text"]) for k, s in disc_sources.items()]
    jobs += [(item["key"], item["source"]["prompt"], item["text"]) for item in damaged]
    with progress_bar("perplexity", len(jobs), unit="text") as bar:
        for key, prefix, text in jobs:
            if key not in cache:
                cache[key] = scorer(prefix, text)
            bar.advance(1)
    models: dict[str, dict] = {}
    for rec in chosen:
        lp = cache[_ckey(rec)]
        m = models.setdefault(rec["model"], {"nll": 0.0, "tokens": 0, "per": []})
        if lp:
            m["nll"] -= sum(lp)
            m["tokens"] += len(lp)
            m["per"].append(perplexity(lp))
    out_models = {
        name: {
            "ppl": round(math.exp(m["nll"] / m["tokens"]), 4) if m["tokens"] else None,
            "median_ppl": round(statistics.median(m["per"]), 4) if m["per"] else None,
            "n": len(m["per"]),
            "tokens": m["tokens"],
        }
        for name, m in sorted(models.items())
    }
    disc: dict[str, dict] = {}
    for kind in DAMAGES:
        pairs = []
        for item in damaged:
            if item["damage"] != kind:
                continue
            a, b = perplexity(cache[_ckey(item["source"])]), perplexity(cache[item["key"]])
            if a is not None and b is not None:
                pairs.append(({"ppl": a}, {"ppl": b}))
        table = discrimination_table(pairs, lower_is_better=True, keys=("ppl",))
        disc[kind] = {"n_pairs": table["n_pairs"], "share_original_lower": table["share_original_better"].get("ppl")}
    return {**info, "models": out_models, "discrimination": disc}


def contamination_section(cfg, rundir: RunDir, completions: list[dict]) -> dict:
    n = cfg.judge.contamination_n
    if not n:
        return {"n": 0, "skipped": "judge.contamination_n is 0"}
    prompts = {}
    for rec in completions:
        prompts.setdefault(rec["prompt_id"], rec["prompt"])
    return contamination(prompts, read_jsonl(rundir.path(STORIES)), n)
