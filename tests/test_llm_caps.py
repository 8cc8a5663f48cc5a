"""llm.max_cost and llm.max_tokens_total: a job stops before passing its cap, keeps what it paid for, and resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fake_llm import ScriptedBackend, register_scripted
from story_samples import STORY

from tinystories.cli import main
from tinystories.errors import UserError
from tinystories.io.layout import MANIFEST, STORIES, VOCABULARY
from tinystories.io.rundir import read_jsonl
from tinystories.llm import LLMConfig, RawResult, Request, make_client
from tinystories.llm.spend import SpendCapReached
from tinystories.pipeline.registry import load_run_config

PROMPT = "x" * 400  # 100 tokens by Request.approx_prompt_tokens
VOCAB = {"nouns": ["ball", "dog", "tree"], "verbs": ["jump", "run", "sing"], "adjectives": ["happy", "big", "red"]}
ONLY_SUMMARIES = "instruct_data.kinds=[summary]"  # every story's set is its summary: one LLM request a story


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A run dir holding a vocabulary put there by hand (the executor trusts a file without a producer record)."""
    run = tmp_path / "run"
    (run / "data").mkdir(parents=True)
    (run / VOCABULARY).write_text(json.dumps(VOCAB))
    return run


def write_stories(run: Path, n: int) -> None:
    (run / "data").mkdir(parents=True, exist_ok=True)
    (run / STORIES).write_text("".join(json.dumps({"id": f"s{i}", "story": STORY, "words": {}, "features": []}) + "\n" for i in range(n)))


def summary_reply(request: Request) -> str:
    return "Max the dog plays with a red ball and his friend Sue."


def cfg(**kw) -> LLMConfig:
    return LLMConfig(**{**dict(backend="embedded", model="scripted-model", concurrency=4, backoff_s=0.01), **kw})


def requests(n: int, max_tokens: int = 50) -> list[Request]:
    return [Request(key=f"r{i}", messages=({"role": "user", "content": PROMPT},), max_tokens=max_tokens, seed=i) for i in range(n)]


def fixed_usage(request: Request) -> RawResult:
    return RawResult(text="an answer", finish_reason="stop", prompt_tokens=100, completion_tokens=20, model="scripted-model")


def test_a_token_cap_stops_before_the_call_that_could_pass_it():
    backend = ScriptedBackend(fixed_usage, max_concurrency=4, delay_s=0.01)
    client = make_client(cfg(max_tokens_total=1000), backend=backend)
    answered = []
    with pytest.raises(SpendCapReached) as caught:
        client.complete(requests(20), on_result=answered.append, collect=False)
    # Worst case per call is 100 + 50 = 150 tokens; in flight ones are booked at that, so the
    # spend stays below the cap however many run at once.
    assert client.spend.tokens <= 1000, f"spent {client.spend.tokens} tokens past the cap of 1000"
    assert len(backend.calls) >= 6, f"only {len(backend.calls)} calls were made, though 6 worst cases (900 tokens) fit"
    assert len(answered) == len(backend.calls), "every paid call's answer reaches the stage"
    assert "stopped: llm.max_tokens_total 1,000 tokens reached" in str(caught.value), str(caught.value)
    assert caught.value.metrics["llm_tokens"] == client.spend.tokens, caught.value.metrics


def test_a_cost_cap_never_spends_past_it_with_many_calls_in_flight():
    backend = ScriptedBackend(fixed_usage, max_concurrency=8, delay_s=0.01)
    prices = dict(price_prompt_per_1k=0.01, price_completion_per_1k=0.1)  # a call: at most 0.001 + 0.005, really 0.001 + 0.002
    client = make_client(cfg(max_cost=0.05, concurrency=8, **prices), backend=backend)
    with pytest.raises(SpendCapReached) as caught:
        client.complete(requests(100))
    assert client.stats.cost <= 0.05, f"spent {client.stats.cost} past the cap of 0.05"
    assert client.stats.cost >= 0.05 - 8 * 0.006, f"stopped at {client.stats.cost}, far below the cap"
    assert caught.value.metrics["stopped_by"] == "llm.max_cost", caught.value.metrics


def test_cached_answers_are_free_so_a_rerun_goes_further(tmp_path: Path):
    backend = ScriptedBackend(fixed_usage, max_concurrency=1)
    first = make_client(cfg(max_tokens_total=500, concurrency=1), cache_dir=tmp_path, backend=backend)
    with pytest.raises(SpendCapReached):
        first.complete(requests(10))
    first.close()
    paid = len(backend.calls)
    assert paid == 3, f"500 tokens hold 3 worst cases of 150, not {paid}"
    again = make_client(cfg(max_tokens_total=500, concurrency=1), cache_dir=tmp_path, backend=backend)
    with pytest.raises(SpendCapReached):
        again.complete(requests(10))
    assert again.stats.cache_hits == 3, "the answers paid for in the first run come back from the cache"
    assert len(backend.calls) == 2 * paid, "the rerun pays only for requests not answered before"


def test_no_cap_means_no_stop():
    backend = ScriptedBackend(fixed_usage)
    client = make_client(cfg(), backend=backend)
    answers = client.complete(requests(10))
    assert len(answers) == 10, "without a cap every request is answered"
    assert client.spend.tokens == 10 * 120, "the spend is counted even without a cap"


def test_a_request_bigger_than_the_whole_cap_is_never_sent():
    backend = ScriptedBackend(fixed_usage)
    client = make_client(cfg(max_tokens_total=100), backend=backend)
    with pytest.raises(SpendCapReached) as caught:
        client.complete(requests(3))
    assert backend.calls == [], "a call whose worst case exceeds the cap is not made"
    assert "after 0 requests" in str(caught.value), str(caught.value)


def test_max_cost_without_prices_is_a_config_error():
    with pytest.raises(UserError, match="max_cost: needs prices"):
        load_run_config(None, ["llm.max_cost=5"])


def test_negative_caps_are_config_errors():
    with pytest.raises(UserError, match="max_cost and max_tokens_total: must be 0"):
        load_run_config(None, ["llm.max_tokens_total=-1"])


def test_generate_stopped_by_a_cap_is_failed_with_the_reason_and_resumes_with_a_higher_one(run_dir: Path):
    backend = register_scripted(ScriptedBackend(lambda request: STORY))
    base = ["generate", "--run-dir", str(run_dir), "--set", "llm.concurrency=1", "--set", "generate.num_stories=6", "--set", "generate.max_tokens=200", "--set", "generate.dedup=off"]
    # A story prompt books ~70 + 200 tokens and uses ~70 + 80 (the story's words): 1000 hold 4 to 6 calls.
    assert main([*base, "--set", "llm.max_tokens_total=1000"]) == 2, "a stage stopped by a cap fails like any UserError"
    record = json.loads((run_dir / MANIFEST).read_text())["stages"]["generate"]
    assert record["status"] == "failed", record
    paid = len(backend.calls)
    assert record["error"].startswith(f"generate: stopped: llm.max_tokens_total 1,000 tokens reached after {paid} requests"), record["error"]
    assert 0 < record["metrics"]["llm_tokens"] <= 1000, f"the spend of the stopped run is in the manifest: {record}"
    kept = [r["id"] for r in read_jsonl(run_dir / STORIES)]
    assert len(kept) == paid, f"every story paid for is kept: {kept} from {paid} calls"
    assert paid < 6, f"the cap stopped the stage before its 6 stories ({paid} calls)"
    assert "llm spend this run: " in (run_dir / "logs" / "generate.log").read_text(), "the stage log keeps what the stopped run spent"

    assert main([*base, "--set", "llm.max_tokens_total=100000"]) == 0, "a higher cap lets the stage finish"
    record = json.loads((run_dir / MANIFEST).read_text())["stages"]["generate"]
    assert record["status"] == "done", record
    assert len(list(read_jsonl(run_dir / STORIES))) == 6, "the rerun completed the dataset"
    assert len(backend.calls) == 6, f"one call per story over both runs: the rerun asked only for the missing ones ({len(backend.calls)} calls)"


def test_instruct_data_stopped_by_a_cap_keeps_its_partial_files_through_a_higher_cap(tmp_path: Path):
    backend = register_scripted(ScriptedBackend(summary_reply, max_concurrency=1))
    run = tmp_path / "run"
    write_stories(run, n=8)
    base = ["instruct-data", "--run-dir", str(run), "--set", ONLY_SUMMARIES, "--set", "llm.concurrency=1"]
    assert main([*base, "--set", "llm.max_tokens_total=1000"]) == 2, "the cap stops the stage"
    record = json.loads((run / MANIFEST).read_text())["stages"]["instruct-data"]
    assert record["error"].startswith("summaries: stopped: llm.max_tokens_total"), record["error"]
    asked_first = [c.key for c in backend.calls]
    written = {r["id"] for r in read_jsonl(run / "data" / "instruction_dataset.jsonl.partial")}
    assert written == set(asked_first), f"every summary paid for is written: {written} vs {asked_first}"
    assert 0 < len(written) < 8, f"the cap stopped part way: {len(written)} of 8"

    assert main([*base, "--set", "llm.max_tokens_total=0"]) == 0, "without the cap the stage finishes"
    asked_again = [c.key for c in backend.calls[len(asked_first):]]
    # The cap is not part of the resume fingerprint: the partial files are kept, not rebuilt from the cache.
    assert asked_again == [f"s{i}" for i in range(8) if f"s{i}" not in written], asked_again
    stats = json.loads((run / "data" / "instruct_stats.json").read_text())
    assert stats["resumed_stories"] == len(written), f"the stories written before the stop are resumed: {stats['resumed_stories']}"
    assert len(list(read_jsonl(run / "data" / "instruction_dataset.jsonl"))) == 8, "every story got its set"


def write_completions(run: Path, n: int) -> None:
    (run / "eval").mkdir(parents=True, exist_ok=True)
    recs = [
        {"model": "pretrain/1M", "kind": "base", "task": "continue", "prompt_id": f"b{i}", "sample_id": 0, "prompt": "Once upon a time, a dog", "text": f" {STORY} Tale {i}."}
        for i in range(n)
    ]
    (run / "eval" / "completions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))


def grades(request: Request) -> str:
    return "Assessment: a clear simple story.\nGrammar: 8/10\nCreativity: 6/10\nConsistency: 7/10\nPlot: 6/10\nAge group: C"


def test_judge_stopped_by_a_cap_keeps_its_judgments_and_a_rerun_sends_only_the_rest(tmp_path: Path):
    backend = register_scripted(ScriptedBackend(grades, max_concurrency=1))
    run = tmp_path / "run"
    write_completions(run, 8)
    base = ["judge", "--run-dir", str(run), "--set", "llm.concurrency=1", "--set", "judge.reference=none", "--set", "judge.contamination_n=0",
            "--set", "judge.consistency_sample=0", "--set", "judge.discrimination_sample=0"]  # fmt: skip
    # A judge request books ~250 prompt + 400 max_tokens; 2000 tokens stop it part way.
    assert main([*base, "--set", "llm.max_tokens_total=2000"]) == 2, "the cap stops the judge"
    record = json.loads((run / MANIFEST).read_text())["stages"]["judge"]
    assert record["error"].startswith("judge: stopped: llm.max_tokens_total"), record["error"]
    kept = list(read_jsonl(run / "eval" / "judgments.jsonl"))
    assert 0 < len(kept) < 8, f"the judgments paid for are kept: {len(kept)} of 8"
    paid = len(backend.calls)
    assert len(kept) == paid, f"one judgment per paid call: {len(kept)} vs {paid}"

    assert main([*base, "--set", "llm.max_tokens_total=0"]) == 0, "without the cap the judge finishes"
    assert len(backend.calls) == 8, f"the rerun sent only the {8 - paid} judgments missing ({len(backend.calls) - paid} sent)"
    assert len(list(read_jsonl(run / "eval" / "judgments.jsonl"))) == 8, "every completion is judged"
