"""LLMClient policy with a scripted backend: validation retries, cache keys, transport retries, limits."""

from __future__ import annotations

import asyncio
import time

import pytest
from fake_llm import ScriptedBackend

from tinystories.errors import UserError
from tinystories.llm import LLMConfig, RawResult, Reject, Request, RequestError, TransientError, make_client
from tinystories.llm.cache import cache_key
from tinystories.llm.client import RateLimiter


def cfg(**kw) -> LLMConfig:
    base = dict(backend="embedded", model="scripted-model", backoff_s=0.01, max_retries=3, max_attempts=3, concurrency=4)
    return LLMConfig(**{**base, **kw})


def req(key: str, text: str | None = None, **kw) -> Request:
    return Request(key=key, messages=({"role": "user", "content": text or f"prompt {key}"},), **kw)


def test_reject_retries_with_fresh_seeds_then_records_the_reason():
    backend = ScriptedBackend(lambda r: "short")

    def validate(response):
        raise Reject("too short: 1 word")

    client = make_client(cfg(), backend=backend)
    [response] = client.complete([req("a", seed=5)], validate=validate)
    assert not response.ok
    assert response.error == "too short: 1 word"
    assert response.attempts == 3
    assert [c.seed for c in backend.calls] == [5, 5 + 1_000_003, 5 + 2_000_006]
    assert client.stats.failed == 1 and client.stats.succeeded == 0
    assert client.stats.rejected_attempts == 3
    assert client.stats.failures == {"too short": 1}


def test_reject_then_accept_keeps_the_accepted_seed():
    backend = ScriptedBackend(lambda r: "good answer here" if r.seed != 0 else "bad")

    def validate(response):
        if response.text == "bad":
            raise Reject("bad")
        return response.text.upper()

    client = make_client(cfg(), backend=backend)
    [response] = client.complete([req("a")], validate=validate)
    assert response.ok and response.value == "GOOD ANSWER HERE"
    assert response.attempts == 2 and response.seed == 1_000_003
    assert client.stats.rejected_attempts == 1 and client.stats.succeeded == 1


def test_cache_key_covers_everything_that_changes_the_answer():
    identity = {"model": "m", "mode": "chat"}
    base = req("a", "hello", seed=1, temperature=0.7, top_p=0.9, max_tokens=50, template_version="v1")
    k = cache_key(identity, "chat", base)
    assert cache_key(identity, "chat", req("other-key", "hello", seed=1, temperature=0.7, top_p=0.9, max_tokens=50, template_version="v1")) == k
    variants = [
        req("a", "hello", seed=2, temperature=0.7, top_p=0.9, max_tokens=50, template_version="v1"),
        req("a", "hello", seed=1, temperature=0.8, top_p=0.9, max_tokens=50, template_version="v1"),
        req("a", "hello", seed=1, temperature=0.7, top_p=0.8, max_tokens=50, template_version="v1"),
        req("a", "hello", seed=1, temperature=0.7, top_p=0.9, max_tokens=51, template_version="v1"),
        req("a", "hello", seed=1, temperature=0.7, top_p=0.9, max_tokens=50, template_version="v2"),
        req("a", "hello", seed=1, temperature=0.7, top_p=0.9, max_tokens=50, template_version="v1", stop=("\n",)),
        req("a", "hello!", seed=1, temperature=0.7, top_p=0.9, max_tokens=50, template_version="v1"),
    ]
    keys = {cache_key(identity, "chat", v) for v in variants}
    assert k not in keys and len(keys) == len(variants)
    assert cache_key({"model": "other", "mode": "chat"}, "chat", base) != k
    assert cache_key(identity, "completion", base) != k


def test_cache_serves_a_second_run_without_backend_calls(tmp_path):
    backend = ScriptedBackend(lambda r: f"answer {r.messages[0]['content']}")
    requests = [req(str(i)) for i in range(5)]
    client = make_client(cfg(), tmp_path / "cache", backend=backend)
    first = client.complete(requests)
    client.close()
    assert len(backend.calls) == 5
    again = make_client(cfg(), tmp_path / "cache", backend=backend)
    seen = []
    second = again.complete(requests, on_result=seen.append)
    again.close()
    assert len(backend.calls) == 5  # nothing new
    assert all(r.cached for r in second) and again.stats.cache_hits == 5 and again.stats.backend_calls == 0
    assert sorted(r.text for r in second) == sorted(r.text for r in first)
    assert sorted(r.key for r in seen) == [str(i) for i in range(5)]
    # A new template version is a new prompt: it goes to the backend again.
    third = make_client(cfg(), tmp_path / "cache", backend=backend)
    third.complete([req("0", template_version="v2")])
    assert len(backend.calls) == 6 and third.stats.cache_hits == 0


def test_transient_errors_are_retried_then_given_up():
    failures = {"flaky": 2, "dead": 10**6}

    def reply(r):
        key = r.messages[0]["content"]
        if failures.get(key, 0) > 0:
            failures[key] -= 1
            raise TransientError(f"503 for {key}")
        return f"fine {key}"

    client = make_client(cfg(max_retries=3), backend=ScriptedBackend(reply))
    out = {r.key: r for r in client.complete([req("a", "flaky"), req("b", "dead"), req("c", "ok")])}
    assert out["a"].ok and out["a"].retries == 2 and out["a"].text == "fine flaky"
    assert not out["b"].ok and out["b"].error == "transport: gave up after 3 retries: 503 for dead"
    assert out["c"].ok and out["c"].retries == 0
    assert client.stats.retries == 2 + 3
    assert client.stats.failures == {"transport": 1}
    assert client.stats.backend_calls == 3 + 4 + 1


def test_request_error_fails_only_that_request_without_retries():
    def reply(r):
        if "long" in r.messages[0]["content"]:
            raise RequestError("400 from server: prompt too long")
        return "ok"

    backend = ScriptedBackend(reply)
    client = make_client(cfg(), backend=backend)
    out = {r.key: r for r in client.complete([req("a", "long one"), req("b", "short")])}
    assert out["a"].error == "request: 400 from server: prompt too long"
    assert out["b"].ok
    assert len(backend.calls) == 2 and client.stats.retries == 0


def test_user_error_stops_the_job():
    def reply(r):
        raise UserError("llm: bad key; set OPENAI_API_KEY")

    client = make_client(cfg(), backend=ScriptedBackend(reply))
    with pytest.raises(UserError, match="bad key"):
        client.complete([req(str(i)) for i in range(10)])


def test_retry_after_is_honoured_and_pauses_every_worker():
    state = {"told": False, "times": []}

    def reply(r):
        state["times"].append((r.key, time.monotonic()))
        if r.key == "a" and not state["told"]:
            state["told"] = True
            raise TransientError("429", retry_after=0.4)
        return "ok"

    backend = ScriptedBackend(reply, delay_s=0.0)
    client = make_client(cfg(concurrency=1, backoff_s=5.0), backend=backend)
    t0 = time.monotonic()
    out = client.complete([req("a"), req("b"), req("c")])
    assert all(r.ok for r in out)
    times = dict((k, t) for k, t in state["times"][1:])  # the retry of a, then b, c
    assert times["a"] - t0 >= 0.38  # waited Retry-After, not backoff_s (5 s)
    assert time.monotonic() - t0 < 3.0


def test_shared_pause_holds_other_workers():
    async def scenario():
        limiter = RateLimiter(0, 0)
        await limiter.acquire(1)
        limiter.pause(0.3)
        t0 = time.monotonic()
        await asyncio.gather(limiter.acquire(1), limiter.acquire(1))
        return time.monotonic() - t0

    assert asyncio.run(scenario()) >= 0.28


def test_requests_per_minute_spaces_calls():
    stamps = []
    backend = ScriptedBackend(lambda r: stamps.append(time.monotonic()) or "ok", max_concurrency=8)
    client = make_client(cfg(requests_per_minute=1200, concurrency=8), backend=backend)
    client.complete([req(str(i)) for i in range(8)])
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    assert min(gaps) >= 0.045  # 1200 rpm = one call every 50 ms
    assert stamps[-1] - stamps[0] >= 7 * 0.05 - 0.01


def test_every_request_answered_exactly_once_with_mixed_outcomes():
    def reply(r):
        n = int(r.messages[0]["content"].split()[-1])
        if n % 7 == 0:
            raise RequestError("bad")
        if n % 5 == 0:
            return RawResult(text="", finish_reason="stop")
        return f"story {n}"

    results = []
    client = make_client(cfg(concurrency=6), backend=ScriptedBackend(reply, max_concurrency=6, delay_s=0.001))
    client.complete((req(str(i), f"prompt {i}") for i in range(50)), on_result=results.append, collect=False)
    assert sorted(int(r.key) for r in results) == list(range(50))
    failed = {int(r.key) for r in results if not r.ok}
    assert failed == {i for i in range(50) if i % 7 == 0 or i % 5 == 0}
    assert client.stats.requests == 50 and client.stats.succeeded + client.stats.failed == 50


# -- token log-probabilities -----------------------------------------------------------------
def test_logprob_requests_have_their_own_cache_key_and_carry_the_logprobs(tmp_path):
    identity = {"model": "m", "mode": "chat"}
    plain, with_top = req("a", "hello"), req("a", "hello", top_logprobs=3)
    assert cache_key(identity, "chat", plain) != cache_key(identity, "chat", with_top), "asking for logprobs is another request"
    assert cache_key(identity, "chat", with_top) != cache_key(identity, "chat", req("a", "hello", top_logprobs=2)), "so is another k"

    def reply(r):
        logprobs = [{" hi": -0.5, " yo": -1.5}] if r.top_logprobs else None
        return RawResult(text=" hi", finish_reason="stop", completion_tokens=1, logprobs=logprobs)

    backend = ScriptedBackend(reply)
    client = make_client(cfg(), tmp_path / "cache", backend=backend)
    [answer] = client.complete([with_top])
    client.close()
    assert answer.logprobs == [{" hi": -0.5, " yo": -1.5}], "the response carries the backend's logprobs"
    again = make_client(cfg(), tmp_path / "cache", backend=backend)
    [cached] = again.complete([with_top])
    again.close()
    assert cached.cached and cached.logprobs == answer.logprobs, "the cache keeps the logprobs"
    with pytest.raises(ValueError, match="top_logprobs"):
        req("a", top_logprobs=-1)


def test_a_cached_answer_without_logprobs_is_not_served_to_a_request_for_them(tmp_path):
    from tinystories.llm.cache import ResponseCache

    backend = ScriptedBackend(lambda r: RawResult(text="fresh", finish_reason="stop", logprobs=[{"fresh": -0.1}]))
    client = make_client(cfg(), tmp_path / "cache", backend=backend)
    request = req("a", top_logprobs=1)
    cache = ResponseCache(tmp_path / "cache")  # an answer stored without them, as a Batch API result would be
    cache.put(cache_key(backend.identity(), "chat", request), RawResult(text="batch", finish_reason="stop"))
    cache.close()
    [answer] = client.complete([request])
    client.close()
    assert not answer.cached and answer.logprobs == [{"fresh": -0.1}] and len(backend.calls) == 1


# -- the backend registry --------------------------------------------------------------------
def test_the_config_name_selects_a_registered_backend():
    from fake_llm import register_scripted

    from tinystories.llm import make_backend, register_backend
    from tinystories.llm.registry import backend_names

    assert {"embedded", "openai"} <= set(backend_names()), "both real backends are registered"
    scripted = ScriptedBackend(lambda r: "from the registry")
    register_backend("my-test-llm", lambda c: scripted)
    assert LLMConfig(backend="my-test-llm").check() == [], "a registered name is a valid llm.backend"
    assert make_backend(LLMConfig(backend="my-test-llm")) is scripted
    client = make_client(LLMConfig(backend="my-test-llm"))
    assert client.complete([req("a")])[0].text == "from the registry"
    assert register_scripted(scripted) is scripted and make_backend(LLMConfig()) is scripted, "a test's backend can stand in for the default"


def test_an_unknown_backend_is_a_one_line_error_listing_the_registered_ones():
    from tinystories.llm import make_backend

    [problem] = LLMConfig(backend="nope").check()
    assert "nope" in problem and "embedded" in problem and "openai" in problem and "\n" not in problem
    with pytest.raises(UserError) as info:
        make_backend(LLMConfig(backend="nope"))
    message = str(info.value)
    assert message.startswith("llm.backend: unknown backend 'nope'") and "embedded, openai" in message and "\n" not in message


def test_registry_restored_undoes_registrations_and_removals():
    from tinystories.llm import register_backend
    from tinystories.llm.registry import backend_names, registry_restored, unregister_backend

    before = backend_names()
    with registry_restored():  # what tests/conftest.py wraps every test in
        register_backend("my-test-llm", lambda c: ScriptedBackend(lambda r: "x"))
        unregister_backend("openai")
        assert "my-test-llm" in backend_names() and "openai" not in backend_names()
    assert backend_names() == before, "the registry is as it was"


def test_backend_registered_restores_what_the_name_selected():
    from tinystories.llm import backend_registered, make_backend

    stand_in = ScriptedBackend(lambda r: "x")
    with backend_registered("openai", lambda c: stand_in):
        assert make_backend(LLMConfig(backend="openai", base_urls=["http://127.0.0.1:1/v1"])) is stand_in
    real = make_backend(LLMConfig(backend="openai", base_urls=["http://127.0.0.1:1/v1"], api_key_env="TINYSTORIES_TEST_UNSET_KEY"))
    assert real.name == "openai", "the real backend is back after the block"


def test_the_client_closes_a_backend_it_made_but_not_one_it_was_lent():
    from tinystories.llm import register_backend

    closed = []
    backend = ScriptedBackend(lambda r: "ok")
    backend.close = lambda: closed.append("closed")
    register_backend("closing", lambda c: backend)
    make_client(LLMConfig(backend="closing")).close()
    assert closed == ["closed"], "a backend the registry built is freed with its client"
    make_client(LLMConfig(backend="closing"), backend=backend).close()
    assert closed == ["closed"], "a lent backend stays open for its owner"
