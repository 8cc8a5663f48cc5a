"""LLMClient: runs many requests through one backend with caching, limits, retries and validation.

Why our own loop rather than the openai client's built-in retries: the same policy must cover
the embedded backend, every retry must be counted in the stats, a reply the caller rejects
must be retried with a fresh seed, and results must reach the caller as they arrive (so a
long job appends to disk and a kill loses nothing already answered).

Every failure text the client writes (a retry's log line, a request's stored failure reason) goes
through llm/redact.py: it may quote a server, and a server may quote the API key.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from tinystories.llm.base import Backend, RawResult, Reject, Request, RequestError, Response, TransientError
from tinystories.llm.cache import ResponseCache, cache_key
from tinystories.llm.config import LLMConfig
from tinystories.llm.redact import redact
from tinystories.llm.registry import make_backend
from tinystories.llm.spend import CapRefused, SpendCap
from tinystories.progress import progress_bar

log = logging.getLogger(__name__)

Validator = Callable[[Response], Any]


def default_validator(response: Response) -> str:
    if response.finish_reason == "positions":  # a Request.continuations answer: its positions, no text
        if not response.logprobs:
            raise Reject("no positions read")
        return response.text or ""
    if not (response.text or "").strip():
        raise Reject("empty reply")
    return response.text


@dataclass
class Stats:
    requests: int = 0
    succeeded: int = 0
    failed: int = 0
    cache_hits: int = 0  # answers (including rejected attempts) served from the cache
    backend_calls: int = 0
    retries: int = 0
    rejected_attempts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    generated_tokens_live: int = 0  # completion tokens from real backend calls (for tokens/s)
    backend_seconds: float = 0.0
    cost: float = 0.0
    failures: dict = field(default_factory=dict)  # reason -> count

    def as_dict(self) -> dict:
        out = dict(self.__dict__)
        out["failures"] = dict(self.failures)
        return out


class RateLimiter:
    """Requests-per-minute as even spacing, tokens-per-minute as a refilling bucket, and a shared
    pause: when the server says Retry-After, every worker holds off, not just the one that was told."""

    def __init__(self, requests_per_minute: float, tokens_per_minute: float):
        self._interval = 60.0 / requests_per_minute if requests_per_minute > 0 else 0.0
        self._tpm = tokens_per_minute
        self._next_slot = 0.0
        self._tokens = tokens_per_minute
        self._refilled = time.monotonic()
        self._paused_until = 0.0
        self._lock = asyncio.Lock()

    def pause(self, seconds: float) -> None:
        self._paused_until = max(self._paused_until, time.monotonic() + seconds)

    async def acquire(self, tokens: int) -> None:
        while (wait := self._paused_until - time.monotonic()) > 0:
            await asyncio.sleep(wait)
        if not self._interval and not self._tpm:
            return
        async with self._lock:
            if self._interval:
                now = time.monotonic()
                wait = self._next_slot - now
                if wait > 0:
                    await asyncio.sleep(wait)
                self._next_slot = max(now, self._next_slot) + self._interval
            if self._tpm:
                need = min(tokens, self._tpm)
                while True:
                    now = time.monotonic()
                    self._tokens = min(self._tpm, self._tokens + (now - self._refilled) * self._tpm / 60.0)
                    self._refilled = now
                    if self._tokens >= need:
                        self._tokens -= need
                        break
                    await asyncio.sleep((need - self._tokens) * 60.0 / self._tpm)


class LLMClient:
    def __init__(self, cfg: LLMConfig, backend: Backend, cache: ResponseCache | None = None, owns_backend: bool = False):
        self.cfg = cfg
        self.backend = backend
        self._owns_backend = owns_backend  # close() frees a backend the client made, not one it was lent
        self.cache = cache if cache is not None else ResponseCache(None)  # not `or`: an empty cache has len 0, so is falsy
        self.stats = Stats()
        self.spend = SpendCap(cfg)  # llm.max_cost / llm.max_tokens_total over this client's life (one run of a stage)
        self._identity = backend.identity()

    @property
    def model_name(self) -> str:
        return str(self._identity.get("model", self.cfg.model))

    def describe(self) -> dict:
        """Provenance for manifests and reports (never includes secrets)."""
        return {"backend": self.backend.name, **self._identity}

    # -- one request -----------------------------------------------------------------------
    async def _call(self, request: Request, limiter: RateLimiter) -> tuple[RawResult, bool, int, float]:
        key = cache_key(self._identity, self.cfg.mode, request)
        hit = self.cache.get(key)
        if hit is not None and request.top_logprobs and hit.logprobs is None:
            hit = None  # answered without log-probabilities (a Batch API answer): ask again, with them
        if hit is not None:
            self.stats.cache_hits += 1
            return hit, True, 0, 0.0
        retries = 0
        while True:
            await limiter.acquire(request.approx_prompt_tokens() + request.max_tokens)
            booked = self.spend.reserve(request)  # after the limiter's wait: the booking covers only calls really in flight
            t0 = time.monotonic()
            try:
                self.stats.backend_calls += 1
                result = await asyncio.wait_for(self.backend.generate(request), timeout=self.cfg.timeout_s + 5)
            except (TransientError, asyncio.TimeoutError) as exc:
                self.spend.settle(booked, None)  # released before the backoff, so other workers may use it meanwhile
                if retries >= self.cfg.max_retries:
                    raise TransientError(f"gave up after {retries} retries: {redact(exc or 'timeout')}") from None
                retry_after = getattr(exc, "retry_after", None)
                if retry_after is not None:
                    delay = retry_after
                    limiter.pause(retry_after)
                else:
                    delay = self.cfg.backoff_s * (2**retries) * (0.5 + random.random())
                retries += 1
                self.stats.retries += 1
                # info, not warning: retries are routine and counted in the progress bar; a warning per
                # retry would bury the bar (and the final one-line error) under noise.
                log.info("retry %d for %s in %.1fs: %s", retries, request.key, delay, redact(exc or "timeout"))
                await asyncio.sleep(delay)
                continue
            except BaseException:
                self.spend.settle(booked, None)
                raise
            self.spend.settle(booked, result)
            self.stats.cost = self.spend.cost  # every live call is priced once, there (cache hits cost nothing)
            latency = time.monotonic() - t0
            self.stats.backend_seconds += latency
            self.stats.generated_tokens_live += result.completion_tokens
            self.cache.put(key, result)
            return result, False, retries, latency

    async def _one(self, request: Request, validate: Validator, limiter: RateLimiter) -> Response:
        last_reason = "no attempt"
        total_retries = 0
        response = Response(key=request.key, text=None)
        for attempt in range(self.cfg.max_attempts):
            # A fresh seed per attempt: the same prompt with the same seed gives the same bad answer.
            attempt_request = request if attempt == 0 else request.with_seed(request.seed + 1_000_003 * attempt)
            try:
                raw, cached, retries, latency = await self._call(attempt_request, limiter)
            except TransientError as exc:
                last_reason = f"transport: {redact(exc)}"
                break
            except RequestError as exc:
                last_reason = f"request: {redact(exc)}"
                break
            total_retries += retries
            response = Response(
                key=request.key,
                text=raw.text,
                finish_reason=raw.finish_reason,
                prompt_tokens=raw.prompt_tokens,
                completion_tokens=raw.completion_tokens,
                latency_s=round(latency, 4),
                model=raw.model or self.model_name,
                backend=self.backend.name,
                seed=attempt_request.seed,
                cached=cached,
                attempts=attempt + 1,
                retries=total_retries,
                logprobs=raw.logprobs,
            )
            self.stats.prompt_tokens += raw.prompt_tokens
            self.stats.completion_tokens += raw.completion_tokens
            try:
                response.value = validate(response)
                return response
            except Reject as exc:  # a validator may quote the reply, and the reply may quote the request
                last_reason = redact(exc) or "rejected"
                self.stats.rejected_attempts += 1
        response.error = last_reason
        response.retries = total_retries
        response.attempts = min(self.cfg.max_attempts, response.attempts)
        return response

    # -- many requests ---------------------------------------------------------------------
    async def acomplete(
        self,
        requests: Iterable[Request],
        validate: Validator | None = None,
        on_result: Callable[[Response], None] | None = None,
        total: int | None = None,
        description: str = "llm",
        collect: bool = True,
    ) -> list[Response]:
        validate = validate or default_validator
        limiter = RateLimiter(self.cfg.requests_per_minute, self.cfg.tokens_per_minute)
        workers = max(1, min(self.cfg.concurrency, getattr(self.backend, "max_concurrency", self.cfg.concurrency)))
        iterator = iter(requests)
        results: list[Response] = []
        t_start = time.monotonic()

        with progress_bar(description, total, unit="req") as bar:

            async def worker() -> None:
                # shared iterator: each request is taken by exactly one worker; none is taken once a cap stopped the job
                while not self.spend.reached and (request := next(iterator, None)) is not None:
                    self.stats.requests += 1
                    try:
                        response = await self._one(request, validate, limiter)
                    except CapRefused:
                        return  # not answered, so not reported: the stage asks for it again when rerun
                    if response.ok:
                        self.stats.succeeded += 1
                    else:
                        self.stats.failed += 1
                        reason = response.error.split(":")[0]
                        self.stats.failures[reason] = self.stats.failures.get(reason, 0) + 1
                    if on_result is not None:
                        on_result(response)
                    if collect:
                        results.append(response)
                    elapsed = max(1e-9, time.monotonic() - t_start)
                    bar.advance(
                        1,
                        failed=self.stats.failed,
                        retries=self.stats.retries,
                        cached=self.stats.cache_hits,
                        tok_s=f"{self.stats.generated_tokens_live / elapsed:.1f}",
                    )

            tasks = [asyncio.create_task(worker()) for _ in range(workers)]
            try:
                await asyncio.gather(*tasks)
            except BaseException:
                for task in tasks:
                    task.cancel()
                raise
        if self.spend.reached:
            raise self.spend.stop_error(description, self.stats.succeeded + self.stats.failed, self.stats.backend_calls)
        return results

    def complete(self, requests: Iterable[Request], **kwargs) -> list[Response]:
        """Synchronous wrapper; see `acomplete`."""

        async def main() -> list[Response]:
            try:
                return await self.acomplete(requests, **kwargs)
            finally:
                await self.backend.aclose()

        return asyncio.run(main())

    def close(self) -> None:
        if self.stats.backend_calls:  # the stage's log keeps what each run paid, finished or stopped
            log.info("llm spend this run: %d backend calls, %d tokens, $%.4f", self.stats.backend_calls, self.spend.tokens, self.spend.cost)
        self.cache.close()
        if self._owns_backend:
            self.backend.close()


def make_client(cfg: LLMConfig, cache_dir=None, backend: Backend | None = None) -> LLMClient:
    """The one way stages get an LLM: `make_client(cfg.llm_for("generate"), rundir.path("cache/llm"))`.
    The backend is the one `cfg.backend` names in the registry (llm/registry.py) unless one is lent."""
    if backend is not None:
        return LLMClient(cfg, backend, ResponseCache(cache_dir))
    return LLMClient(cfg, make_backend(cfg), ResponseCache(cache_dir), owns_backend=True)
