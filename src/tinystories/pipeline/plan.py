"""`tinystories plan`: what a config will ask for before it runs, stage by stage.

    tinystories plan --config configs/paper.yaml [--run-dir runs/paper] [--set llm.price_prompt_per_1k=0.00015 ...]

Per LLM stage: requests, prompt and completion tokens, dollars (when llm.price_*_per_1k are set)
and hours; per training stage: tokens trained and hours; per stage: disk. Every figure says what
it rests on (the `basis` lines): prompts are rendered from the real templates and counted as the
LLM client counts them (Request.approx_prompt_tokens); completions are the measured mean of the
run dir's data when there is some, else a stated typical length, and never more than max_tokens.
"at most" columns assume every request uses its whole max_tokens and every attempt is retried
(llm.max_attempts) up to the request cap: the spend llm.max_cost can stop a stage before.

Throughput: the run dir's own measurements (the manifest's tokens_per_s) win; else the figures
below, measured on the 2-core development machine (README "Performance"), or for an endpoint the
limits in the llm section; `--train-flops` gives training hours for your hardware instead.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Iterator

from tinystories.io.layout import META, REJECTED, STORIES, VOCABULARY
from tinystories.io.rundir import RunDir, read_jsonl
from tinystories.llm.config import LLMConfig

CHARS_PER_LLM_TOKEN = 4  # as Request.approx_prompt_tokens counts
TYPICAL_STORY_TOKENS = 300  # a 3-5 paragraph story of ~230 simple words, until the run dir has measured stories
TYPICAL_SUMMARY_TOKENS = 45  # a one-to-two-sentence summary
TYPICAL_JUDGE_REPLY_SHARE = 0.6  # of judge.max_tokens: an assessment paragraph and five grade lines
BYTES_PER_MODEL_TOKEN = 4.0  # our 10k BPE on simple stories, until data/meta.json measured it
PROMPT_SAMPLE = 200  # stories whose prompts are rendered to measure the mean prompt

# Measured on the 2-core development machine (README "Performance"): training tokens/s per
# preset (bench_train.py, bf16 + compile, context 512), sampling tokens/s (bench_sampler.py),
# embedded decoding tokens/s per model (README model table), prepare MB/s (bench_prepare.py).
CPU_TRAIN_TOKENS_PER_S = {"1M": 6860.0, "8M": 4378.0, "33M": 2471.0}
CPU_SAMPLE_TOKENS_PER_S = {"1M": 5198.0, "8M": 2319.0}
EMBEDDED_TOKENS_PER_S = {"qwen2.5-coder-1.5b": 11.0, "qwen2.5-coder-0.5b": 22.0, "smollm2-135m": 65.0}
# Prompt tokens read per second on 2 cores: the 1.5B's from benchmarks/bench_judge.py (5.5 s for a
# ~500-token judgment, whose time is all prompt reading); the others scaled by parameter count.
EMBEDDED_PROMPT_TOKENS_PER_S = {"qwen2.5-coder-1.5b": 90.0, "qwen2.5-coder-0.5b": 270.0, "smollm2-135m": 1000.0}
PREPARE_BYTES_PER_S = 10.1e6
STREAM_TOKENS_PER_S = 60.0  # one request's decoding speed at an endpoint, until the run dir measured it
CHECKPOINT_BYTES_PER_PARAM = 12  # fp32 weights (4) + AdamW's two moments (8) in train_state.pt; each save replaces the last


@dataclass
class Estimate:
    stage: str
    requests: int = 0  # expected LLM calls (attempts included)
    requests_max: int = 0  # at most: every id up to the cap, every attempt retried
    prompt_tokens: int = 0
    completion_tokens: int = 0
    completion_tokens_max: int = 0
    cost: float | None = None  # None: no prices set
    cost_max: float | None = None
    hours: float | None = None  # None: no throughput known
    train_tokens: int = 0
    disk_bytes: int = 0
    basis: list[str] = field(default_factory=list)


class Measured:
    """What a run dir already knows: stories written, their lengths, the speeds it measured."""

    def __init__(self, rundir: RunDir | None):
        self.rundir = rundir
        self.stories = self._first_stories()
        manifest = rundir.manifest()["stages"] if rundir is not None and rundir.manifest_path.exists() else {}
        self.metrics = {name: rec.get("metrics") or {} for name, rec in manifest.items()}

    def _first_stories(self) -> list[dict]:
        if self.rundir is None or not self.rundir.path(STORIES).is_file():
            return []
        out = []
        for rec in read_jsonl(self.rundir.path(STORIES)):
            out.append(rec)
            if len(out) >= PROMPT_SAMPLE:
                break
        return out

    def story_tokens(self) -> float | None:
        counts = [r["completion_tokens"] for r in self.stories if r.get("completion_tokens")]
        return sum(counts) / len(counts) if counts else None

    def story_chars(self) -> float:
        texts = [r.get("text") or r.get("story") or "" for r in self.stories]
        if texts:
            return sum(map(len, texts)) / len(texts)
        return TYPICAL_STORY_TOKENS * CHARS_PER_LLM_TOKEN

    def keep_rate(self) -> float | None:
        """Kept / attempted: from the finished generate record, else by counting the data files."""
        m = self.metrics.get("generate", {})
        if m.get("attempted"):
            return m["kept"] / m["attempted"]
        if not self.stories:
            return None
        kept = sum(1 for _ in read_jsonl(self.rundir.path(STORIES)))
        rejected = sum(1 for _ in read_jsonl(self.rundir.path(REJECTED))) if self.rundir.path(REJECTED).is_file() else 0
        return kept / (kept + rejected)

    def attempts(self) -> float:
        """Mean attempts per kept story (a rejected reply is retried with a fresh seed); 1 until measured."""
        counts = [r["attempts"] for r in self.stories if r.get("attempts")]
        return sum(counts) / len(counts) if counts else 1.0

    def bytes_per_token(self) -> float:
        if self.rundir is not None and self.rundir.path(META).is_file():
            train = json.loads(self.rundir.path(META).read_text()).get("train", {})
            if train.get("tokens"):
                return train["bytes"] / train["tokens"]
        return BYTES_PER_MODEL_TOKEN

    def tokens_per_s(self, stage: str, size: str | None = None) -> float | None:
        """A stage's measured decoding (LLM) or training (per size) speed; the judge keeps the LLM client's stats."""
        m = self.metrics.get(stage, {})
        m = m.get(size, {}) if size is not None else m
        if not isinstance(m, dict):
            return None
        llm = m.get("llm") if isinstance(m.get("llm"), dict) else {}
        if not m.get("tokens_per_s") and llm.get("backend_seconds"):
            return llm["generated_tokens_live"] / llm["backend_seconds"]
        return float(m["tokens_per_s"]) if m.get("tokens_per_s") else None


# -- LLM stages ---------------------------------------------------------------------------------


def llm_hours(llm: LLMConfig, calls: int, prompt: float, completion: float, max_tokens: int, measured_tok_s: float | None) -> tuple[float | None, str]:
    """Hours for `calls` requests and what bounds them (a rate limit, concurrency, or decoding speed)."""
    if llm.backend == "embedded":
        tok_s = measured_tok_s or EMBEDDED_TOKENS_PER_S.get(llm.model)
        if not tok_s:
            return None, f"embedded {llm.model}: no measured speed yet (run a few requests, then plan with --run-dir)"
        source = "measured" if measured_tok_s else "2-core figure"
        read_s = EMBEDDED_PROMPT_TOKENS_PER_S.get(llm.model)
        if not completion and read_s:  # nothing generated (grades read from probabilities): all prompt reading
            return calls * prompt / read_s / 3600, f"embedded {llm.model}, one request at a time, prompts read at {read_s:g} tok/s (2-core figure)"
        return calls * completion / tok_s / 3600, f"embedded {llm.model}, one request at a time at {tok_s:g} tok/s ({source}; prompt reading not counted)"
    stream = measured_tok_s or STREAM_TOKENS_PER_S
    per_minute = {"llm.concurrency": llm.concurrency * 60.0 / max(1e-9, completion / stream)}
    if llm.requests_per_minute:
        per_minute["llm.requests_per_minute"] = llm.requests_per_minute
    if llm.tokens_per_minute:  # the client books prompt + max_tokens per request against it
        per_minute["llm.tokens_per_minute"] = llm.tokens_per_minute / (prompt + max_tokens)
    bound = min(per_minute, key=per_minute.get)
    rate = per_minute[bound]
    return calls / rate / 60, f"{rate:,.0f} requests/min, bounded by {bound} ({stream:g} tok/s per request{' measured' if measured_tok_s else ' assumed'})"


def llm_estimate(name: str, llm: LLMConfig, calls: float, calls_max: int, prompt: float, completion: float, max_tokens: int, measured_tok_s: float | None, basis: list[str]) -> Estimate:
    """The shared arithmetic of an LLM stage: `prompt` and `completion` are mean tokens per call."""
    completion = min(completion, max_tokens)
    calls = int(math.ceil(calls))
    prompt_total, completion_total = int(calls * prompt), int(calls * completion)
    priced = bool(llm.price_prompt_per_1k or llm.price_completion_per_1k)
    hours, speed = llm_hours(llm, calls, prompt, completion, max_tokens, measured_tok_s)
    return Estimate(
        name,
        requests=calls,
        requests_max=calls_max,
        prompt_tokens=prompt_total,
        completion_tokens=completion_total,
        completion_tokens_max=calls_max * max_tokens,
        cost=llm.price_of(prompt_total, completion_total) if priced else None,
        cost_max=llm.price_of(int(calls_max * prompt), calls_max * max_tokens) if priced else None,
        hours=hours,
        basis=[*basis, f"{llm.backend} {llm.model}: {prompt:.0f} prompt + {completion:.0f} completion tokens a request (max_tokens {max_tokens})", speed],
    )


def plan_generate(cfg, measured: Measured) -> Estimate | None:
    from tinystories.data.generate import SECTION, make_request, story_params
    from tinystories.pipeline.ids import derive_seed
    from tinystories.text.prompts import story_template
    from tinystories.text.vocabulary import load_vocabulary

    g = cfg.generate
    if g.num_stories == 0:
        return None
    llm = cfg.llm_for(SECTION)
    vocab_path = measured.rundir.path(VOCABULARY) if measured.rundir is not None and measured.rundir.path(VOCABULARY).is_file() else None
    vocab = load_vocabulary(vocab_path)
    seed = derive_seed(cfg.seed, "generate")
    template = story_template(g.prompt_path)
    prompts = [make_request(i, story_params(seed, i, vocab, g), g, llm.mode, template)[0].approx_prompt_tokens() for i in range(PROMPT_SAMPLE)]
    cap = g.max_requests or 2 * g.num_stories
    keep = measured.keep_rate()
    ids = min(cap, g.num_stories / keep) if keep else g.num_stories
    tokens = measured.story_tokens()
    basis = [
        f"{g.num_stories:,} stories to keep, at most {cap:,} ids; "
        + (f"keep rate {keep:.0%} measured in this run dir" if keep else "assumes every story is kept (plan again with --run-dir after a first batch)"),
        f"story length: {tokens:.0f} tokens measured on {len(measured.stories)} stories" if tokens else f"story length: {TYPICAL_STORY_TOKENS} tokens assumed (no stories in the run dir yet)",
        f"{measured.attempts():.2f} attempts a story" + (" measured" if measured.stories else " assumed"),
    ]
    est = llm_estimate("generate", llm, ids * measured.attempts(), cap * llm.max_attempts, sum(prompts) / len(prompts), tokens or TYPICAL_STORY_TOKENS, g.max_tokens, measured.tokens_per_s("generate"), basis)
    if g.batch_api and est.cost is not None:
        est.cost, est.cost_max = est.cost / 2, est.cost_max / 2
        est.basis.append("generate.batch_api: first attempts at the Batch API's half price, within its 24 h window (not capped by llm.max_cost)")
    chars = measured.story_chars()
    prompt_chars = est.prompt_tokens / max(1, est.requests) * CHARS_PER_LLM_TOKEN
    # stories.jsonl (story, prompt, metadata) + the story file + the answer cache
    est.disk_bytes = int(g.num_stories * (2 * chars + prompt_chars + 400) + est.requests * (chars + 300))
    return est


def _stories_expected(cfg, measured: Measured) -> int:
    """Stories the later stages will see: generate's target (or what the run dir holds when importing)."""
    if cfg.generate.num_stories:
        return cfg.generate.num_stories
    return int(measured.metrics.get("import", {}).get("kept") or len(measured.stories))


def _sample_stories(measured: Measured) -> Iterator[dict]:
    """Real stories when the run dir has some; else stand-ins of the typical length with the paper's fields."""
    if measured.stories:
        yield from measured.stories
        return
    words = {"noun": "ball", "verb": "jump", "adjective": "happy"}
    sentence = "Tom and his mom went to the park to play with a big red ball. "
    text = sentence * int(TYPICAL_STORY_TOKENS * CHARS_PER_LLM_TOKEN / len(sentence))
    for i in range(PROMPT_SAMPLE):
        yield {"id": f"g{i:07d}", "story": text, "words": words, "words_used": list(words.values()), "features": ["Dialogue"] if i % 3 == 0 else []}


def plan_instruct_data(cfg, measured: Measured) -> Estimate | None:
    from tinystories.data.instruct_data import NAME, SECTION, plan_story
    from tinystories.pipeline.ids import derive_seed
    from tinystories.text.prompts import summary_prompt

    ic = cfg.instruct_data
    if ic.source_path:
        return Estimate("instruct-data", basis=[f"converts {ic.source_path}: no LLM request"])
    stories = _stories_expected(cfg, measured)
    if ic.max_stories:
        stories = min(stories, ic.max_stories)
    seed = derive_seed(cfg.seed, NAME)
    sample = [{**r, "story": r.get("story") or r.get("text") or ""} for r in _sample_stories(measured)]
    plans = [plan_story(r, ic, seed) for r in sample]
    share = sum(p["needs_summary"] for p in plans) / len(plans)
    prompt = sum(len(summary_prompt(r["story"])) // CHARS_PER_LLM_TOKEN for r in sample) / len(sample)
    llm = cfg.llm_for(SECTION)
    summaries = int(round(stories * share))
    # the speed generate measured holds for summaries only when the same model writes them
    same_model = llm.backend == cfg.llm_for("generate").backend and llm.model == cfg.llm_for("generate").model
    basis = [f"{stories:,} stories, {share:.0%} need an LLM summary (their drawn sets hold a Summary part; measured on {len(sample)} {'stories' if measured.stories else 'stand-in stories'})"]
    est = llm_estimate("instruct-data", llm, summaries, summaries * llm.max_attempts, prompt, TYPICAL_SUMMARY_TOKENS, ic.summary_max_tokens, measured.tokens_per_s("generate") if same_model else None, basis)
    est.disk_bytes = int(stories * ic.sets_per_story * (measured.story_chars() + 300) + est.requests * 500)
    return est


def completions_per_model(cfg) -> list[tuple[object, int, int]]:
    """(model spec, completions, completions the judge grades) per model `complete` will run."""
    from tinystories.eval.complete import model_specs
    from tinystories.eval.prompt_set import load_prompts

    c = cfg.complete
    prompts = load_prompts(c.prompts_path or None)
    beginnings = len(prompts["beginnings"][: c.max_beginnings or None])
    instructions = len(prompts["instructions"][: c.max_instructions or None])
    out = []
    for spec in model_specs(cfg):
        continues = beginnings if spec.kind != "instruct" or c.instruct_beginnings else 0
        instructs = instructions if spec.kind == "instruct" or (spec.kind == "base" and c.base_instructions) else 0
        graded = continues + (instructs if spec.kind == "instruct" else 0)  # judge.graded_by_judge
        out.append((spec, (continues + instructs) * c.samples, graded * c.samples))
    return out


def plan_judge(cfg, measured: Measured) -> Estimate:
    from tinystories.eval.damage import DAMAGES
    from tinystories.eval.expected import DIRECT_POSITIONS, SLOTS
    from tinystories.eval.judge import SECTION
    from tinystories.text.prompts import JUDGE_QUESTIONS, JUDGE_SYSTEM, judge_prompt

    j = cfg.judge
    llm = cfg.llm_for(SECTION)
    graded = [min(n, j.max_judged) if j.max_judged else n for _, _, n in completions_per_model(cfg)]
    main = sum(graded)
    # auto as eval/expected.resolve_scoring decides it (a completion-mode server is assumed to return log-probabilities)
    expected = j.scoring == "expected" or (j.scoring == "auto" and (llm.mode == "completion" or (llm.backend == "embedded" and not j.assessment)))
    direct = expected and not j.assessment  # every grade read after the exercise: nothing sampled, no repeats
    judgments = main + (0 if direct else min(j.consistency_sample, main)) + len(DAMAGES) * min(j.discrimination_sample, main)
    completion_chars = int(cfg.complete.max_new_tokens * measured.bytes_per_token())
    prompt = (len(JUDGE_SYSTEM) + len(judge_prompt("continue", "Once upon a time, there was a little girl named Lily. One day,", "x" * completion_chars))) / CHARS_PER_LLM_TOKEN
    if direct:
        # One positions request per judgment. The embedded backend evaluates it in one go; a
        # server gets (and bills) one single-token request per position, each with the whole prompt.
        questions = sum(len(q) for q in JUDGE_QUESTIONS["continue"].values()) / CHARS_PER_LLM_TOKEN
        calls_per = 1 if llm.backend == "embedded" else DIRECT_POSITIONS
        per_call_prompt = prompt + questions if calls_per == 1 else prompt + questions / len(SLOTS)
        per_call_completion = 0 if calls_per == 1 else 1
        how = "expected scoring, every grade read in one request" + ("" if calls_per == 1 else f" ({DIRECT_POSITIONS} single-token requests to a server)")
    else:
        calls_per = 1 + len(SLOTS) if expected else 1
        # expected scoring after an assessment: the assessment, then one-token grade requests that each resend prompt + assessment
        completion = j.max_tokens * TYPICAL_JUDGE_REPLY_SHARE
        per_call_prompt = prompt + (calls_per - 1) * completion / calls_per
        per_call_completion = (completion + (calls_per - 1)) / calls_per
        how = f"{calls_per} request{'s' if calls_per > 1 else ''} each ({'expected' if expected else 'sampled'} scoring)"
    basis = [
        f"{main:,} completions judged + {judgments - main:,} reliability judgments ({'' if direct else 'repeats and '}{len(DAMAGES)} damages), {how}",
        f"completions assumed to run to complete.max_new_tokens ({cfg.complete.max_new_tokens})",
    ]
    calls = judgments * calls_per
    est = llm_estimate("judge", llm, calls, calls * llm.max_attempts, per_call_prompt, per_call_completion, j.max_tokens, measured.tokens_per_s("judge"), basis)
    est.disk_bytes = judgments * 3000
    return est


# -- compute stages -----------------------------------------------------------------------------


def cpu_tokens_per_s(table: dict[str, float], flops: float, vocab: int) -> tuple[float, str]:
    """Tokens/s of a model of `flops` training FLOPs per token, from a table of measured presets:
    the preset's own figure, else the achieved FLOP/s interpolated (log-log) between the measured
    presets around it (small models reach fewer FLOP/s: overheads dominate), held flat outside."""
    from tinystories.train.shapes import PRESETS, Shape, train_flops_per_token

    points = sorted((train_flops_per_token(Shape(**PRESETS[n]), vocab, 512), rate, n) for n, rate in table.items())
    for ref_flops, rate, name in points:
        if math.isclose(ref_flops, flops, rel_tol=1e-9):
            return rate, f"2-core CPU figure of {name}"
    achieved = [(math.log(f), math.log(f * rate)) for f, rate, _ in points]
    x = min(max(math.log(flops), achieved[0][0]), achieved[-1][0])
    for (x0, y0), (x1, y1) in zip(achieved, achieved[1:]):
        if x0 <= x <= x1:
            y = y0 + (y1 - y0) * (x - x0) / (x1 - x0)
            break
    return math.exp(y) / flops, "2-core CPU, FLOP/s interpolated between " + ", ".join(n for _, _, n in points)


def train_tokens_per_s(size: str, shape, vocab: int, context: int, measured: float | None, train_flops: float) -> tuple[float, str]:
    """Tokens/s of one size: measured in the run dir, else from --train-flops, else the CPU table."""
    from tinystories.train.shapes import train_flops_per_token

    flops = train_flops_per_token(shape, vocab, context)
    if measured:
        return measured, "measured in this run dir"
    if train_flops:
        return train_flops / flops, f"--train-flops {train_flops:.3g}"
    return cpu_tokens_per_s(CPU_TRAIN_TOKENS_PER_S, flops, vocab)


def _train_estimate(name: str, runs: list[tuple[str, object, int, int, float | None]], vocab: int, train_flops: float) -> Estimate:
    """runs: (size, shape, steps, tokens per step, measured tokens/s) per model trained."""
    from tinystories.train.shapes import count_params

    est = Estimate(name, hours=0.0)
    for size, shape, steps, per_step, measured in runs:
        tokens = steps * per_step
        tok_s, source = train_tokens_per_s(size, shape, vocab, min(per_step, 512), measured, train_flops)
        est.train_tokens += tokens
        est.hours += tokens / tok_s / 3600
        est.disk_bytes += count_params(shape, vocab)["params"] * CHECKPOINT_BYTES_PER_PARAM
        est.basis.append(f"{size}: {steps:,} steps x {per_step:,} tokens at {tok_s:,.0f} tok/s ({source})")
    return est


def _shape_of(cfg, size: str):
    from tinystories.train.shapes import resolve_shape

    return resolve_shape(size, cfg.pretrain.shapes)


def plan_pretrain(cfg, measured: Measured, train_flops: float) -> Estimate:
    p, t = cfg.pretrain, cfg.pretrain.train
    per_step = t.batch_size * t.context * t.grad_accum
    steps = math.ceil(p.max_tokens / per_step) if p.max_tokens > 0 else t.max_steps
    runs = [(s, _shape_of(cfg, s), steps, per_step, measured.tokens_per_s("pretrain", s)) for s in p.sizes]
    est = _train_estimate("pretrain", runs, cfg.tokenizer.vocab_size, train_flops)
    est.basis.insert(0, "one process; N GPUs under accelerate divide the hours by about N")
    return est


def plan_sft(cfg, measured: Measured, train_flops: float) -> Estimate:
    from tinystories.train.checkpoints import sft_checkpoints

    s, t = cfg.sft, cfg.sft.train
    pairs = _stories_expected(cfg, measured) * cfg.instruct_data.sets_per_story
    pairs = min(pairs, s.max_pairs) if s.max_pairs else pairs
    example = min(t.context, int((measured.story_chars() + 150) / measured.bytes_per_token()))  # story + instruction lines
    per_step = t.batch_size * t.grad_accum * example
    steps = t.max_steps or max(1, math.ceil(s.epochs * pairs / (t.batch_size * t.grad_accum)))
    runs = [(name, _shape_of(cfg, src.split("/", 1)[1]), steps, per_step, measured.tokens_per_s("sft", name)) for name, src in sft_checkpoints(cfg) if src.startswith("pretrain/")]
    est = _train_estimate("sft", runs, cfg.tokenizer.vocab_size, train_flops)
    est.basis.insert(0, f"{pairs:,} pairs of ~{example} tokens, {s.epochs:g} epochs")
    return est


def plan_prepare(cfg, measured: Measured) -> Estimate:
    text_bytes = _stories_expected(cfg, measured) * measured.story_chars()
    tokens = int(text_bytes / measured.bytes_per_token())
    return Estimate(
        "prepare",
        train_tokens=tokens,
        hours=text_bytes / PREPARE_BYTES_PER_S / 3600,
        disk_bytes=2 * tokens,
        basis=[f"{tokens:,} tokens at {measured.bytes_per_token():.2f} bytes a token, 2 bytes each in data/*.bin; {PREPARE_BYTES_PER_S / 1e6:g} MB/s (2-core CPU)"],
    )


def plan_complete(cfg) -> Estimate:
    """Sampling: completions x max_new_tokens per model, at the sampler's CPU speed scaled by model FLOPs."""
    from tinystories.train.shapes import PRESETS, train_flops_per_token

    c, vocab = cfg.complete, cfg.tokenizer.vocab_size
    est = Estimate("complete", hours=0.0)
    for spec, completions, _ in completions_per_model(cfg):
        tokens = completions * c.max_new_tokens
        est.train_tokens += tokens
        est.disk_bytes += int(completions * (c.max_new_tokens * BYTES_PER_MODEL_TOKEN + 400))
        size = spec.path.split("/", 1)[1] if spec.kind != "baseline" else None
        if size is None or not (size in PRESETS or size in cfg.pretrain.shapes):
            est.basis.append(f"{spec.name}: {completions:,} completions (speed unknown: not counted in hours)")
            continue
        tok_s, _ = cpu_tokens_per_s(CPU_SAMPLE_TOKENS_PER_S, train_flops_per_token(_shape_of(cfg, size), vocab, 512), vocab)
        est.hours += tokens / tok_s / 3600
        est.basis.append(f"{spec.name}: {completions:,} completions x {c.max_new_tokens} tokens at ~{tok_s:,.0f} tok/s (2-core CPU)")
    return est


# -- the whole plan -----------------------------------------------------------------------------


def make_plan(cfg, rundir: RunDir | None = None, train_flops: float = 0.0) -> list[Estimate]:
    """One estimate per stage that costs something, in pipeline order."""
    measured = Measured(rundir)
    plans = [
        plan_generate(cfg, measured),
        plan_prepare(cfg, measured),
        plan_pretrain(cfg, measured, train_flops),
        plan_instruct_data(cfg, measured),
        plan_sft(cfg, measured, train_flops),
        plan_complete(cfg),
        plan_judge(cfg, measured),
    ]
    return [p for p in plans if p is not None]


def _num(value: float | None, money: bool = False) -> str:
    if not value:  # None (unknown) or nothing to count: a dash reads faster than a column of zeros
        return "-"
    if money:
        return f"${value:,.2f}"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.1f}{unit}"
    return f"{value:.0f}"


def _bytes(n: int) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def render(plans: list[Estimate]) -> str:
    """The plan as a table, then each stage's basis lines, then the totals."""
    head = f"{'stage':<14}{'requests':>10}{'(at most)':>11}{'prompt tok':>12}{'compl. tok':>12}{'(at most)':>11}{'cost':>12}{'(at most)':>12}{'train tok':>11}{'hours':>9}{'disk':>10}"
    lines = [head, "-" * len(head)]
    for p in plans:
        lines.append(
            f"{p.stage:<14}{_num(p.requests):>10}{_num(p.requests_max):>11}{_num(p.prompt_tokens):>12}{_num(p.completion_tokens):>12}"
            f"{_num(p.completion_tokens_max):>11}{_num(p.cost, True):>12}{_num(p.cost_max, True):>12}{_num(p.train_tokens):>11}"
            f"{(f'{p.hours:,.1f}' if p.hours is not None else '-'):>9}{_bytes(p.disk_bytes):>10}"
        )
    costs = [p.cost for p in plans if p.cost is not None]
    hours = [p.hours for p in plans if p.hours is not None]
    lines.append("-" * len(head))
    lines.append(
        f"{'total':<14}{_num(sum(p.requests for p in plans)):>10}{'':>11}{_num(sum(p.prompt_tokens for p in plans)):>12}"
        f"{_num(sum(p.completion_tokens for p in plans)):>12}{'':>11}{_num(sum(costs) if costs else None, True):>12}{'':>12}{'':>11}"
        f"{sum(hours):>9,.1f}{_bytes(sum(p.disk_bytes for p in plans)):>10}"
    )
    lines.append("")
    for p in plans:
        for line in p.basis:
            lines.append(f"{p.stage}: {line}")
    if not costs:
        lines.append("cost: set llm.price_prompt_per_1k and llm.price_completion_per_1k (per 1,000 tokens) to see dollars")
    return "\n".join(lines)
