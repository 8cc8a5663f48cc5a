"""The `llm:` section: which backend and model answer the LLM stages, and how hard to push it."""

from __future__ import annotations

from dataclasses import dataclass, field

from tinystories.llm.registry import unknown_backend_problem


@dataclass
class LLMConfig:
    backend: str = "embedded"  # embedded (in-process llama.cpp, no network) | openai (any OpenAI-compatible endpoint) | a name given to llm.registry.register_backend
    model: str = "qwen2.5-coder-1.5b"  # embedded: a name from the model table or a path to a .gguf; openai: the served model name
    base_urls: list[str] = field(default_factory=list)  # openai: endpoint(s), e.g. http://127.0.0.1:8000/v1; load is spread over all of them
    api_key_env: str = "OPENAI_API_KEY"  # name of the environment variable holding the key (the key itself is never stored)
    mode: str = "chat"  # chat (messages) | completion (plain prompt)
    concurrency: int = 16  # requests in flight at once (embedded runs one at a time)
    requests_per_minute: float = 0.0  # client-side rate limit; 0 = none
    tokens_per_minute: float = 0.0  # client-side token budget per minute (prompt + max new tokens); 0 = none
    timeout_s: float = 120.0  # per request
    max_retries: int = 6  # transport retries on 429, 5xx, timeouts and dropped connections
    max_attempts: int = 3  # attempts when a caller's validator rejects a reply, then it is recorded as a failure
    backoff_s: float = 1.0  # first retry delay; doubles each retry, with jitter; Retry-After wins when sent
    price_prompt_per_1k: float = 0.0  # cost accounting, in your currency per 1,000 prompt tokens
    price_completion_per_1k: float = 0.0  # the same per 1,000 completion tokens
    n_ctx: int = 4096  # embedded: context window
    n_threads: int = 0  # embedded: CPU threads, 0 = all cores

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
        return problems
