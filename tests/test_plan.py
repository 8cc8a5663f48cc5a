"""`tinystories plan`: estimates from the templates and the config, measured figures when the run dir has them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tinystories.cli import main
from tinystories.data.generate import make_request, story_params
from tinystories.io.layout import REJECTED, STORIES
from tinystories.io.rundir import RunDir
from tinystories.pipeline import plan as P
from tinystories.pipeline.ids import derive_seed
from tinystories.pipeline.registry import load_run_config
from tinystories.text.prompts import story_template
from tinystories.text.vocabulary import load_vocabulary

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["generate.num_stories=100", "pretrain.sizes=[1M]", "pretrain.train.max_steps=10", "complete.samples=2", "complete.max_beginnings=3", "complete.max_instructions=2"]


def config(*sets: str, path: Path | None = None):
    return load_run_config(path, [*SMALL, *sets])


def by_stage(plans: list[P.Estimate]) -> dict[str, P.Estimate]:
    return {p.stage: p for p in plans}


def test_generate_prompts_are_counted_from_the_real_template_as_the_client_counts_them():
    cfg = config()
    est = by_stage(P.make_plan(cfg))["generate"]
    vocab, seed, template = load_vocabulary(None), derive_seed(cfg.seed, "generate"), story_template(cfg.generate.prompt_path)
    prompts = [make_request(i, story_params(seed, i, vocab, cfg.generate), cfg.generate, "chat", template)[0].approx_prompt_tokens() for i in range(P.PROMPT_SAMPLE)]
    assert est.requests == 100, f"without data every kept story is one request: {est.requests}"
    assert est.prompt_tokens == int(100 * sum(prompts) / len(prompts)), est.prompt_tokens
    assert est.completion_tokens == 100 * P.TYPICAL_STORY_TOKENS, est.completion_tokens
    assert est.requests_max == 200 * cfg.llm.max_attempts, "at most: every id up to 2 x num_stories, every attempt retried"
    assert est.completion_tokens_max == est.requests_max * cfg.generate.max_tokens, est.completion_tokens_max


def test_dollars_appear_only_with_prices_and_follow_them():
    unpriced = by_stage(P.make_plan(config()))["generate"]
    assert unpriced.cost is None, "no prices: no dollars"
    priced = by_stage(P.make_plan(config("llm.price_prompt_per_1k=0.00015", "llm.price_completion_per_1k=0.0006")))["generate"]
    expected = (priced.prompt_tokens * 0.00015 + priced.completion_tokens * 0.0006) / 1000
    assert priced.cost == pytest.approx(expected, rel=1e-6), f"{priced.cost} != {expected}"
    assert priced.cost_max > priced.cost, "the worst case costs more than the expected case"


def test_measured_story_lengths_and_keep_rate_replace_the_assumptions(tmp_path: Path):
    rundir = RunDir(tmp_path / "run")
    rundir.ensure()
    stories = [{"id": f"g{i:07d}", "story": "A story. " * 50, "completion_tokens": 123, "attempts": 1, "words": {}, "features": []} for i in range(10)]
    rundir.path(STORIES).write_text("".join(json.dumps(s) + "\n" for s in stories))
    rundir.update_stage("generate", {"status": "done", "metrics": {"kept": 40, "attempted": 50, "tokens_per_s": 20.0}})
    est = by_stage(P.make_plan(config(), rundir))["generate"]
    assert any("1.00 attempts a story measured" in b for b in est.basis), est.basis
    assert est.requests == 125, f"100 stories at a measured 80% keep rate need 125 requests, not {est.requests}"
    assert est.completion_tokens == 125 * 123, "the measured story length replaces the typical one"
    assert est.hours == pytest.approx(125 * 123 / 20.0 / 3600), "embedded hours come from the measured tokens/s"


def test_without_a_finished_record_the_keep_rate_is_counted_from_the_data_files(tmp_path: Path):
    rundir = RunDir(tmp_path / "run")
    rundir.ensure()
    rundir.path(STORIES).write_text("".join(json.dumps({"id": f"g{i}", "story": "A story.", "attempts": 2}) + "\n" for i in range(3)))
    rundir.path(REJECTED).write_text(json.dumps({"id": "g9", "reason": "too_short"}) + "\n")
    est = by_stage(P.make_plan(config(), rundir))["generate"]
    # 3 kept of 4: 100 stories need 133.3 ids, each taking 2 attempts as measured
    assert est.requests == math.ceil(100 / 0.75 * 2), f"{est.requests} requests"


def test_an_endpoint_is_as_fast_as_its_tightest_limit():
    cfg = config("llm.backend=openai", "llm.base_urls=[http://127.0.0.1:1/v1]", "llm.concurrency=1000", "llm.requests_per_minute=60")
    est = by_stage(P.make_plan(cfg))["generate"]
    assert est.hours == pytest.approx(100 / 60 / 60), f"100 requests at 60 a minute take 1/36 h, not {est.hours}"
    assert any("bounded by llm.requests_per_minute" in b for b in est.basis), est.basis


def test_training_tokens_and_hours_come_from_steps_and_the_speed_table():
    est = by_stage(P.make_plan(config()))["pretrain"]
    t = config().pretrain.train
    assert est.train_tokens == 10 * t.batch_size * t.context * t.grad_accum, est.train_tokens
    assert est.hours == pytest.approx(est.train_tokens / P.CPU_TRAIN_TOKENS_PER_S["1M"] / 3600), "1M trains at its measured CPU speed"


def test_measured_training_speed_and_train_flops_win_over_the_table(tmp_path: Path):
    rundir = RunDir(tmp_path / "run")
    rundir.ensure()
    rundir.update_stage("pretrain", {"status": "done", "metrics": {"1M": {"tokens_per_s": 1000.0}}})
    measured = by_stage(P.make_plan(config(), rundir))["pretrain"]
    assert measured.hours == pytest.approx(measured.train_tokens / 1000.0 / 3600), "the run dir's measured tokens/s is used"
    fast = by_stage(P.make_plan(config(), train_flops=1e15))["pretrain"]
    assert fast.hours < measured.hours / 100, "--train-flops of a GPU gives far fewer hours"


def test_an_unmeasured_size_interpolates_the_achieved_flops_between_measured_ones():
    rate, basis = P.cpu_tokens_per_s(P.CPU_TRAIN_TOKENS_PER_S, _flops("3M"), 10000)
    assert P.CPU_TRAIN_TOKENS_PER_S["8M"] < rate < P.CPU_TRAIN_TOKENS_PER_S["1M"], f"3M at {rate} tok/s is not between 1M and 8M"
    assert "interpolated" in basis, basis
    exact, _ = P.cpu_tokens_per_s(P.CPU_TRAIN_TOKENS_PER_S, _flops("8M"), 10000)
    assert exact == P.CPU_TRAIN_TOKENS_PER_S["8M"], "a measured preset keeps its own figure"


def _flops(size: str) -> float:
    from tinystories.train.shapes import PRESETS, Shape, train_flops_per_token

    return train_flops_per_token(Shape(**PRESETS[size]), 10000, 512)


def test_judge_requests_follow_models_prompts_samples_and_the_reliability_samples():
    est = by_stage(P.make_plan(config("judge.scoring=sampled")))["judge"]
    # pretrain/1M: 3 beginnings graded (its 2 instructions are a word-compliance baseline only);
    # sft/1M: 3 beginnings + 2 instructions; 2 samples each: 16 graded.
    graded = 2 * 3 + 2 * 5
    reliability = min(20, graded) + 4 * min(20, graded)
    assert est.requests == graded + reliability, f"{est.requests} != {graded} + {reliability}"


def test_expected_scoring_after_an_assessment_sends_one_request_per_grade_slot_more():
    sampled = by_stage(P.make_plan(config("judge.scoring=sampled")))["judge"]
    expected = by_stage(P.make_plan(config("judge.scoring=expected", "judge.assessment=true", "judge.llm={mode: completion}")))["judge"]
    assert expected.requests == sampled.requests * 6, "expected scoring: the assessment and five one-token grade requests"
    assessment = 0.6 * config().judge.max_tokens  # TYPICAL_JUDGE_REPLY_SHARE of the reply budget
    resent = 6 * sampled.prompt_tokens + 5 * sampled.requests * assessment  # each grade request resends prompt + assessment
    assert expected.prompt_tokens == pytest.approx(resent, rel=1e-3), f"{expected.prompt_tokens} != {resent}"


def test_expected_scoring_without_an_assessment_is_one_request_embedded_and_nine_for_a_server():
    from tinystories.eval.expected import DIRECT_POSITIONS

    sampled_without_repeats = by_stage(P.make_plan(config("judge.scoring=sampled", "judge.consistency_sample=0")))["judge"]
    assert by_stage(P.make_plan(config()))["judge"].requests == sampled_without_repeats.requests, "auto: the embedded judge reads grades in one request"
    embedded = by_stage(P.make_plan(config("judge.scoring=expected", "judge.llm={mode: completion, backend: embedded}")))["judge"]
    served = by_stage(P.make_plan(config("judge.scoring=expected", "judge.llm={mode: completion, backend: openai, base_urls: [http://127.0.0.1:9/v1]}")))["judge"]
    assert embedded.requests == sampled_without_repeats.requests, "one request per judgment, and no repeats: nothing is sampled"
    assert embedded.completion_tokens == 0, "nothing is generated"
    assert embedded.hours == pytest.approx(embedded.prompt_tokens / P.EMBEDDED_PROMPT_TOKENS_PER_S["qwen2.5-coder-1.5b"] / 3600), "its time is prompt reading"
    assert served.requests == DIRECT_POSITIONS * embedded.requests, "a server gets one single-token request per position"
    assert served.prompt_tokens > 5 * embedded.prompt_tokens, "and is sent the whole prompt with each"


def test_plan_command_prints_every_stage_and_says_how_to_get_dollars(capsys):
    assert main(["plan", "--config", str(ROOT / "configs/paper.yaml")]) == 0
    out = capsys.readouterr().out
    for stage in ("generate", "prepare", "pretrain", "instruct-data", "sft", "complete", "judge", "total"):
        assert f"\n{stage} " in out, f"no {stage} row in:\n{out}"
    assert "set llm.price_prompt_per_1k" in out, "without prices the plan says how to get dollars"


def test_paper_plan_at_gpt_4o_mini_prices_is_in_the_hundreds_of_dollars():
    cfg = load_run_config(ROOT / "configs/paper.yaml", ["llm.price_prompt_per_1k=0.00015", "llm.price_completion_per_1k=0.0006"])
    est = by_stage(P.make_plan(cfg))["generate"]
    assert est.requests == 2_000_000, est.requests
    assert 100 < est.cost < 1000, f"2M stories of ~300 tokens at $0.60/M output cost a few hundred dollars, not {est.cost}"
    assert math.isfinite(est.hours) and est.hours > 1, est.hours
