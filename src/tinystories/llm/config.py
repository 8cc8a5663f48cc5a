"""The `llm:` section: which backend and model answer the LLM stages, and how hard to push it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from tinystories.llm.registry import unknown_backend_problem


# How far a run may go, not what an answer holds: resume fingerprints leave these out, so a
# stage stopped by a cap resumes when rerun with a higher one.
SPEND_CAPS = ("max_cost", "max_tokens_total")


@dataclass
class LLMConfig:
    backend: str = "embedded"  # embedded (in-process llama.cpp, no network) | openai (any OpenAI-compatible endpoint) | a name given to llm.registry.register_backend
    model: str = "qwen2.5-coder-1.5b"  # embedded: a name from the model table or a path to a .gguf; openai: the served model name
    base_urls: list[str] = field(default_factory=list)  # openai: endpoint(s), e.g. http://127.0.0.1:8000/v1; load is spread over all of them
    api_key_env: str = "OPENAI_API_KEY"  # name of the environment variable holding the key (the key itself is never stored)
    mode: str = "chat"  # chat (messages) | completion (plain prompt)
    concurrency: int = 16  # requests in flight at once (embedded: at most llm.batch_size)
    requests_per_minute: float = 0.0  # client-side rate limit; 0 = none
    tokens_per_minute: float = 0.0  # client-side token budget per minute (prompt + max new tokens); 0 = none
    timeout_s: float = 120.0  # per request
    max_retries: int = 6  # transport retries on 429, 5xx, timeouts and dropped connections
    max_attempts: int = 3  # attempts when a caller's validator rejects a reply, then it is recorded as a failure
    backoff_s: float = 1.0  # first retry delay; doubles each retry, with jitter; Retry-After wins when sent
    price_prompt_per_1k: float = 0.0  # cost accounting, in dollars (or your currency) per 1,000 prompt tokens; gpt-4o-mini: 0.00015
    price_completion_per_1k: float = 0.0  # the same per 1,000 completion tokens; gpt-4o-mini: 0.0006
    max_cost: float = 0.0  # stop a stage before its backend calls could cost more than this (priced as above; cache hits are free), per run of the stage; 0 = no cap
    max_tokens_total: int = 0  # stop a stage before its backend calls could use more prompt + completion tokens than this, per run of the stage; 0 = no cap
    n_ctx: int = 4096  # embedded: context window
    n_threads: int = 0  # embedded: CPU threads, 0 = all cores
    batch_size: int = 1  # embedded: requests decoded together (continuous batching; >1 is part of the cache identity, see README); 1 = one at a time
    # How hard to push the backend and what it costs, not what it answers: changing these never
    # makes a stage's outputs stale (Config.hash leaves them out).
    NOT_IN_HASH: ClassVar[tuple[str, ...]] = (
        "api_key_env", "concurrency", "requests_per_minute", "tokens_per_minute", "timeout_s", "max_retries", "backoff_s",
        "price_prompt_per_1k", "price_completion_per_1k", *SPEND_CAPS, "n_threads",
    )

    def check(self) -> list[str]:
        problems = []
        if (problem := unknown_backend_problem(self.backend)) is not None:
            problems.append(problem)
        if self.mode not in ("chat", "completion"):
            problems.append(f"mode: {self.mode!r} is not chat or completion")
        if self.backend == "openai" and not self.base_urls:
            problems.append("base_urls: the openai backend needs at least one endpoint, e.g. --set llm.base_urls=[http://127.0.0.1:8000/v1]")
        if self.concurrency < 1:
            problems.append("concurrency: must be at least 1")
        if self.max_attempts < 1:
            problems.append("max_attempts: must be at least 1")
        if self.max_retries < 0:
            problems.append("max_retries: must be 0 or more")
        if self.timeout_s <= 0:
            problems.append("timeout_s: must be positive")
        if self.batch_size < 1:
            problems.append("batch_size: must be at least 1 (1 = one request at a time)")
        if self.max_cost < 0 or self.max_tokens_total < 0:
            problems.append("max_cost and max_tokens_total: must be 0 (no cap) or more")
        if self.max_cost > 0 and not (self.price_prompt_per_1k or self.price_completion_per_1k):
            problems.append("max_cost: needs prices to count against; set price_prompt_per_1k and price_completion_per_1k (gpt-4o-mini: 0.00015 and 0.0006)")
        return problems

    def price_of(self, prompt_tokens: int, completion_tokens: int) -> float:
        """What that many tokens cost at this config's prices."""
        return (prompt_tokens * self.price_prompt_per_1k + completion_tokens * self.price_completion_per_1k) / 1000.0
