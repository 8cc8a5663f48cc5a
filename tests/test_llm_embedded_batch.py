"""Continuous batching in the embedded backend (llm.batch_size > 1, llm/embedded_batch.py).

Real-model tests on smollm2-135m with short answers. On smollm2 (Q4_1) batched decoding is
bit-identical to one sequence at a time (measured), so the unbatched path is the reference here.
"""

from __future__ import annotations

import asyncio

import pytest

from tinystories.errors import UserError
from tinystories.llm import LLMConfig, Request, make_client
from tinystories.llm.embedded import EmbeddedBackend

from test_llm_embedded import MODEL, needs_model

BATCH = 3
QUESTIONS = [  # the first four end at EOS well within 40 tokens (greedy); the stories run to max_tokens
    "What is 2+2? Answer with one number.",
    "Say hi.",
    "Reply with the word yes.",
    "What colour is the sky? One word.",
    "Write a long story about a dog.",
    "Write a long story about a cat.",
    "Write a long story about a bird.",
]


@pytest.fixture(autouse=True)
def _cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYSTORIES_CACHE", str(tmp_path / "cache"))


def _backend(batch_size: int, **cfg) -> EmbeddedBackend:
    return EmbeddedBackend(LLMConfig(model=MODEL, n_ctx=512, batch_size=batch_size, **cfg))


@pytest.fixture(scope="module")
def backends(tmp_path_factory):
    """A batched backend and the unbatched one it is checked against."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TINYSTORIES_CACHE", str(tmp_path_factory.mktemp("cache")))
        batched, single = _backend(BATCH), _backend(1)
        yield batched, single
        batched.close()
        single.close()


def _requests(temperature: float = 1.0, stop: tuple[str, ...] = ()) -> list[Request]:
    # Different lengths, so sequences end at different steps and slots refill mid-batch.
    return [
        Request(key=f"q{i}", messages=({"role": "user", "content": q},), max_tokens=40 if i < 4 else 6 + 5 * i, temperature=temperature, seed=i, stop=stop)
        for i, q in enumerate(QUESTIONS)
    ]


def _answers(backend, requests) -> dict:
    client = make_client(backend.cfg, None, backend=backend)
    responses = client.complete(requests)
    assert client.stats.retries == 0, "no request timed out or was retried"
    keys = [r.key for r in responses]
    assert sorted(keys) == sorted(r.key for r in requests), "every request is answered exactly once"
    return {r.key: (r.text, r.finish_reason, r.prompt_tokens, r.completion_tokens) for r in responses}


@needs_model
def test_batched_answers_are_complete_and_honour_limits(backends):
    batched, _ = backends
    requests = _requests(temperature=0.0)
    answers = _answers(batched, requests)
    for request in requests:
        text, finish, prompt_tokens, completion_tokens = answers[request.key]
        assert text.strip(), f"{request.key}: a reply"
        assert prompt_tokens > 0, f"{request.key}: the prompt is counted"
        assert completion_tokens <= request.max_tokens, f"{request.key}: max_tokens is honoured"
        if finish == "length":
            assert completion_tokens == request.max_tokens, f"{request.key}: cut off exactly at max_tokens"
        else:
            assert finish == "stop" and completion_tokens < request.max_tokens, f"{request.key}: ended by EOS before the limit"
    assert [answers[f"q{i}"][1] for i in range(4)] == ["stop"] * 4, "the short questions end at EOS"
    assert [answers[f"q{i}"][1] for i in range(4, 7)] == ["length"] * 3, "the stories run to max_tokens"


@needs_model
def test_batched_answers_equal_unbatched_ones_on_smollm2(backends):
    batched, single = backends
    for temperature in (0.0, 1.0):
        requests = _requests(temperature)
        assert _answers(batched, requests) == _answers(single, requests), f"temperature {temperature}: same text, finish and counts"


@needs_model
def test_stop_strings_and_completion_mode_match_unbatched(backends):
    batched, single = backends
    stopped = _requests(temperature=1.0, stop=(".",))
    got = _answers(batched, stopped)
    assert got == _answers(single, stopped), "stop strings end a batched answer where they end an unbatched one"
    assert any(finish == "stop" and "." not in text for text, finish, _, _ in got.values()), "a stop string ended an answer, and is cut off"

    prompts = [Request(key=f"p{i}", prompt=f"Once upon a time, there was a little {w}", max_tokens=8 + i, temperature=1.0, seed=i)
               for i, w in enumerate(["dog", "cat", "bird", "frog"])]  # fmt: skip
    for backend in backends:
        backend.cfg.mode = "completion"
    try:
        assert _answers(batched, prompts) == _answers(single, prompts), "completion mode: same tokens, same answers"
    finally:
        for backend in backends:
            backend.cfg.mode = "chat"


@needs_model
def test_same_config_and_seed_give_the_same_text_across_runs(backends):
    batched, _ = backends
    requests = _requests(temperature=1.0)
    first = _answers(batched, requests)
    fresh = _backend(BATCH)
    try:
        assert _answers(fresh, requests) == first, "a fresh backend with the same config gives the same answers"
    finally:
        fresh.close()
    assert len({text for text, *_ in first.values()}) == len(requests), "different seeds and prompts, different answers"


@pytest.fixture
def schedule(monkeypatch):
    """Records what the decode loop does: the busy slots at each step (how many, which), at which step
    each request started, (running sequences, prompt tokens) per step, and the slot moves that close gaps."""
    from tinystories.llm.embedded_batch import BatchDecoder

    record = {"busy": [], "started": [], "slots": [], "mixed": [], "moves": []}
    real_step, real_start, real_chunks, real_compact = BatchDecoder._step, BatchDecoder._start, BatchDecoder._prompt_chunks, BatchDecoder._compact

    def occupied(self):
        return tuple(slot for slot, s in enumerate(self._slots) if s is not None)

    def step(self):
        record["busy"].append(self._busy())
        record["slots"].append(occupied(self))
        return real_step(self)

    def start(self, slot, job):
        record["started"].append((job.request.key, slot, len(record["busy"])))
        return real_start(self, slot, job)

    def prompt_chunks(self):
        chunks = real_chunks(self)
        record["mixed"].append((sum(s is not None and bool(s.tokens) for s in self._slots), sum(chunks.values())))
        return chunks

    def compact(self):
        before = occupied(self)
        real_compact(self)
        if occupied(self) != before:
            record["moves"].append((before, occupied(self)))

    monkeypatch.setattr(BatchDecoder, "_step", step)
    monkeypatch.setattr(BatchDecoder, "_start", start)
    monkeypatch.setattr(BatchDecoder, "_prompt_chunks", prompt_chunks)
    monkeypatch.setattr(BatchDecoder, "_compact", compact)
    return record


@needs_model
def test_finished_slots_take_the_next_request(backends, schedule):
    batched, _ = backends
    requests = _requests(temperature=1.0)
    _answers(batched, requests)
    busy, started = schedule["busy"], schedule["started"]
    assert max(busy) == BATCH, "never more sequences than llm.batch_size"
    assert busy[0] == BATCH, "the first step already decodes a full batch"
    assert [key for key, _, _ in started] == [r.key for r in requests], "requests start in the order they were sent"
    late = [at for _, _, at in started[BATCH:]]
    assert late and all(0 < at < len(busy) for at in late), "the later requests start mid-run, in freed slots"
    assert set(busy[: late[-1]]) == {BATCH}, "while requests wait, a freed slot is refilled before the next step"


@needs_model
def test_new_prompts_are_evaluated_beside_the_running_sequences(backends, schedule):
    batched, _ = backends
    requests = _requests(temperature=1.0)
    answers = _answers(batched, requests)
    mixed = schedule["mixed"]
    assert mixed[0] == (0, sum(answers[r.key][2] for r in requests[:BATCH])), "the first step evaluates the first prompts together"
    assert mixed[1][0] == BATCH, "from the second step on, every slot decodes"
    assert any(running and prompt for running, prompt in mixed), "a later prompt shares a llama_decode with the running sequences"
    assert sum(prompt for _, prompt in mixed) == sum(answers[r.key][2] for r in requests), "every prompt token is evaluated exactly once"


@needs_model
def test_prompts_longer_than_a_step_are_split_over_steps(backends, schedule, monkeypatch):
    """Chunks this small change the rounding even on smollm2 (its small-batch kernels differ), so the
    answers are checked for completeness and reproducibility, not against the unbatched ones."""
    import tinystories.llm.embedded_batch as embedded_batch

    _, single = backends
    step_tokens = 8
    monkeypatch.setattr(embedded_batch, "N_BATCH", step_tokens)
    requests = _requests(temperature=1.0)
    runs = []
    for _ in range(2):  # a fresh backend each time: nothing carries over from the first run
        small_steps = _backend(BATCH)
        try:
            runs.append(_answers(small_steps, requests))
            runs.append(_answers(small_steps, requests))
        finally:
            small_steps.close()
    first = runs[0]
    assert min(prompt_tokens for _, _, prompt_tokens, _ in first.values()) > step_tokens, "every prompt needs several steps"
    assert max(running + prompt for running, prompt in schedule["mixed"]) == step_tokens, "a step never holds more than n_batch tokens"
    assert all(run == first for run in runs), "the same requests give the same answers on every run"
    unbatched = _answers(single, requests)
    assert {k: a[2] for k, a in first.items()} == {k: a[2] for k, a in unbatched.items()}, "the same prompt tokens as unbatched"
    for request in requests:
        text, finish, _, completion_tokens = first[request.key]
        assert text.strip(), f"{request.key}: a reply"
        assert finish == "stop" or completion_tokens == request.max_tokens, f"{request.key}: ended by EOS or cut off exactly at max_tokens"


@needs_model
def test_a_gap_left_by_a_finished_sequence_is_closed(backends, schedule):
    """Slot 0 finishes first and nothing waits: the last busy slot moves into it, so every step
    decodes consecutive KV streams (one ubatch), and the moved sequence's answer does not change."""
    batched, single = backends
    requests = [  # stories run to max_tokens (see above): the first one ends first
        Request(key=f"story{i}", messages=({"role": "user", "content": QUESTIONS[4 + i]},), max_tokens=10 + 15 * i, temperature=0.0, seed=i)
        for i in range(BATCH)
    ]
    answers = _answers(batched, requests)
    assert [answers[r.key][1] for r in requests] == ["length"] * BATCH, "every story runs to its max_tokens"
    assert schedule["moves"] and schedule["moves"][0] == ((1, 2), (0, 1)), "the last busy slot moved into the freed first one"
    assert all(slots == tuple(range(len(slots))) for slots in schedule["slots"]), "every step decodes slots 0..n-1"
    assert answers == _answers(single, requests), "a moved sequence gives the unbatched answer"


@needs_model
def test_the_schedule_does_not_depend_on_the_callers_timing(backends, schedule):
    """Batched answers can depend on what is decoded beside them (not on smollm2, so the texts cannot
    show it): the batches themselves must follow from the requests, even when the caller is slow."""
    import time

    batched, _ = backends
    requests = _requests(temperature=1.0)
    _answers(batched, requests)
    quick = {k: list(v) for k, v in schedule.items()}
    for v in schedule.values():
        v.clear()

    def slow_validator(response):
        time.sleep(0.05)  # the caller's own work between an answer and its next request
        return response.text

    client = make_client(batched.cfg, None, backend=batched)
    client.complete(requests, validate=slow_validator)
    assert schedule == quick, "the same slots, the same steps, the same batches"


@needs_model
def test_logprob_requests_and_failures_in_a_batched_backend(backends):
    batched, single = backends
    scored = Request(key="lp", messages=({"role": "user", "content": "Name a colour."},), max_tokens=6, temperature=0.0, top_logprobs=2)
    too_long = Request(key="long", messages=({"role": "user", "content": "cat " * 600},), max_tokens=8)
    client = make_client(batched.cfg, None, backend=batched)
    responses = {r.key: r for r in client.complete([scored, too_long, *_requests(temperature=1.0)[:4]])}
    assert len(responses[scored.key].logprobs) == responses[scored.key].completion_tokens == 6, "log-probabilities come through the unbatched path"
    assert responses[too_long.key].error.startswith("request: prompt does not fit llm.n_ctx=512"), "a too long prompt fails alone"
    assert all(responses[f"q{i}"].ok for i in range(4)), "the other requests are answered"

    with pytest.raises(UserError, match="llm.mode: chat mode needs messages"):
        asyncio.run(batched.generate(Request(key="p", prompt="Hello", max_tokens=2)))


def test_batch_size_is_part_of_the_identity_only_when_batched():
    single = EmbeddedBackend(LLMConfig(model=MODEL)).identity()
    batched = EmbeddedBackend(LLMConfig(model=MODEL, batch_size=8)).identity()
    assert "batch_size" not in single, "batch_size 1 keeps the unbatched identity (and its cache)"
    assert batched["batch_size"] == 8, "a batched answer is cached per batch size"
    assert {k: v for k, v in batched.items() if k != "batch_size"} == single, "nothing else changes"
    assert EmbeddedBackend(LLMConfig(model=MODEL, batch_size=8)).max_concurrency == 8, "the client keeps every slot busy"


def test_batch_size_below_one_is_a_config_problem():
    assert any(p.startswith("batch_size:") for p in LLMConfig(batch_size=0).check()), "batch_size 0 is refused"
    assert not any(p.startswith("batch_size:") for p in LLMConfig(batch_size=16).check()), "16 is fine"
