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
