"""Spend caps: `llm.max_cost` and `llm.max_tokens_total` stop a job before it could pass them.

Why a reservation per backend call rather than a look at the spend so far: with 64 requests in
flight, "stop once the spend reaches the cap" overshoots by up to 64 answers. Here a call goes out
only when its worst case (estimated prompt tokens + max_tokens, priced with llm.price_*_per_1k)
fits in what is left after the spend so far and the worst cases of the calls still in flight.
When the next call does not fit, no new request starts, the calls in flight finish (their answers
reach the stage and the answer cache: what was paid for is kept) and the job ends with
SpendCapReached, a UserError the executor records as the stage's error.

What counts: prompt + completion tokens of real backend calls, retries and rejected attempts
included; answers served from the cache are free. A cap belongs to one client, that is one
execution of a stage: a rerun starts from zero and, because answers are cached and every LLM
stage resumes, pays only for what is still missing. The spend of the stopped execution is kept in
the manifest (the stage record's metrics), so the total over reruns is the sum of those records.
"""

from __future__ import annotations

from tinystories.errors import UserError
from tinystories.llm.base import RawResult, Request
from tinystories.llm.config import LLMConfig


class CapRefused(Exception):
    """Raised inside the client when a call would not fit in a cap; the worker stops on it."""


class SpendCapReached(UserError):
    """A stage stopped by a cap. `metrics` is what the executor records for the stopped stage."""

    def __init__(self, message: str, metrics: dict):
        super().__init__(message)
        self.metrics = metrics


class SpendCap:
    def __init__(self, cfg: LLMConfig):
        self.cfg = cfg
        self.cost = 0.0  # spent by answered backend calls
        self.tokens = 0
        self._reserved_cost = 0.0  # worst case of the calls in flight
        self._reserved_tokens = 0
        self.reached: str | None = None  # the option that stopped the job, once one did

    @property
    def active(self) -> bool:
        return self.cfg.max_cost > 0 or self.cfg.max_tokens_total > 0

    def reserve(self, request: Request) -> tuple[float, int]:
        """Book the worst case of one call, or raise CapRefused when it would not fit."""
        if not self.active:
            return 0.0, 0
        if self.reached:
            raise CapRefused(self.reached)
        prompt = request.approx_prompt_tokens()
        tokens = prompt + request.max_tokens
        cost = self.cfg.price_of(prompt, request.max_tokens)
        if self.cfg.max_tokens_total and self.tokens + self._reserved_tokens + tokens > self.cfg.max_tokens_total:
            self.reached = "llm.max_tokens_total"
        elif self.cfg.max_cost and self.cost + self._reserved_cost + cost > self.cfg.max_cost:
            self.reached = "llm.max_cost"
        if self.reached:
            raise CapRefused(self.reached)
        self._reserved_cost += cost
        self._reserved_tokens += tokens
        return cost, tokens

    def settle(self, booked: tuple[float, int], result: RawResult | None) -> None:
        """Release a call's booking and count what it really used (None: it failed, nothing to count)."""
        self._reserved_cost -= booked[0]
        self._reserved_tokens -= booked[1]
        if result is not None:
            self.tokens += result.prompt_tokens + result.completion_tokens
            self.cost += self.cfg.price_of(result.prompt_tokens, result.completion_tokens)

    def stop_error(self, description: str, answered: int, backend_calls: int) -> SpendCapReached:
        limit = f"${self.cfg.max_cost:g}" if self.reached == "llm.max_cost" else f"{self.cfg.max_tokens_total:,} tokens"
        priced = self.cfg.price_prompt_per_1k or self.cfg.price_completion_per_1k
        spent = f"${self.cost:.4f}, {self.tokens:,} tokens" if priced else f"{self.tokens:,} tokens"
        message = (
            f"{description}: stopped: {self.reached} {limit} reached after {answered} requests ({backend_calls} backend calls, {spent} this run); "
            f"the answers so far are kept: rerun to resume (each run may spend up to the cap again; raise or clear it with --set {self.reached}=...)"
        )
        metrics = {"stopped_by": self.reached, "llm_cost": round(self.cost, 6), "llm_tokens": self.tokens, "requests_answered": answered, "backend_calls": backend_calls}
        return SpendCapReached(message, metrics)
