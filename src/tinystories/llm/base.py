"""The LLM layer's data types and the contract every backend fulfils."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

# Per generated token, the most likely tokens at that position with their log-probabilities
# (natural log), always including the token that was generated: [{" cat": -0.1, " dog": -2.3}, ...].
TokenLogprobs = list[dict[str, float]]


@dataclass(frozen=True)
class Request:
    """One prompt. `key` is the caller's stable id (a story id); it is not part of the cache key."""

    key: str
    messages: tuple[dict, ...] | None = None  # chat mode: ({"role": ..., "content": ...}, ...)
    prompt: str | None = None  # completion mode
    max_tokens: int = 512
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()
    template_version: str = ""  # a prompt template's version: changing the template invalidates the cache
    top_logprobs: int = 0  # > 0: also return, per generated token, this many most likely tokens with their log-probabilities
    # Non-empty: generate nothing; read the top_logprobs most likely next tokens after prompt + each
    # continuation (the answer's `logprobs` has one position per continuation, in order). One request
    # for many positions that share a long prompt, which a backend evaluates once (llm/positions.py).
    continuations: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("a Request needs exactly one of messages or prompt")
        if self.top_logprobs < 0:
            raise ValueError("a Request's top_logprobs must be 0 (none) or more")
        if self.continuations and (self.prompt is None or not self.top_logprobs):
            raise ValueError("a Request with continuations needs a plain prompt (completion mode) and top_logprobs > 0")

    def with_seed(self, seed: int) -> "Request":
        return Request(**{**asdict(self), "messages": self.messages, "continuations": self.continuations, "seed": seed})

    def approx_prompt_tokens(self) -> int:
        text = self.prompt if self.prompt is not None else " ".join(m.get("content", "") for m in self.messages or ())
        return max(1, (len(text) + sum(len(c) for c in self.continuations)) // 4)


@dataclass
class RawResult:
    """What a backend returns for one call."""

    text: str
    finish_reason: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model: str = ""
    logprobs: TokenLogprobs | None = None  # when the request asked for top_logprobs


@dataclass
class Response:
    key: str
    text: str | None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    model: str = ""
    backend: str = ""
    seed: int = 0  # the seed of the attempt that produced this answer
    cached: bool = False
    attempts: int = 1  # validation attempts used
    retries: int = 0  # transport retries (429, 5xx, timeouts, dropped connections)
    error: str | None = None  # why this request finally failed; None when it succeeded
    logprobs: TokenLogprobs | None = field(default=None, repr=False)  # when the request asked for top_logprobs
    value: Any = field(default=None, repr=False)  # what the caller's validator parsed out of the text

    @property
    def ok(self) -> bool:
        return self.error is None


class Reject(Exception):
    """Raised by a validator: the reply is unusable for this reason; retry with a fresh seed."""


class TransientError(Exception):
    """A failure worth retrying (429, 5xx, timeout, dropped connection)."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class RequestError(Exception):
    """This one request cannot be answered (e.g. 400: prompt too long); recorded as its failure, not retried."""


class Backend(Protocol):
    """What every backend implements. Callers never call it directly: they hand a batch of Requests
    to `LLMClient.complete` / `acomplete` (llm/client.py), which calls `generate` once per request
    (concurrently, up to `max_concurrency`), with caching, rate limits, retries and validation
    around it, and passes each Response to the caller as it arrives.
    """

    name: str  # "embedded" | "openai" | ...
    max_concurrency: int  # the most requests it can serve at once (1 for in-process llama.cpp)

    def identity(self) -> dict:
        """Everything about the backend that changes answers (model name, weights hash): part of the cache key."""

    async def generate(self, request: Request) -> RawResult:
        """One call. With `request.top_logprobs` > 0 the result carries `logprobs`, one dict per generated
        token; a backend or server that cannot give them raises UserError naming the option. Raise
        TransientError for retryable failures, RequestError when only this request is bad, UserError
        for a setup problem (stops the job). No message may carry a secret (llm/redact.py)."""

    async def aclose(self) -> None:
        """The end of one event loop's batch: release what belongs to that loop (connection pools)."""

    def close(self) -> None:
        """Free everything (a loaded model, connections); a later `generate` may set them up again."""


@runtime_checkable
class TokenScorer(Protocol):
    """A backend that can also score given text (the judge's reference perplexity): not every one can,
    an OpenAI-compatible chat endpoint returns log-probabilities only for tokens it generates."""

    def token_logprobs(self, prefix: str, continuation: str) -> list[float]:
        """log p(token | everything before it) for each token of `continuation`, given `prefix`."""


def token_scorer(backend: Backend) -> TokenScorer | None:
    """The backend as a TokenScorer, or None when it cannot score tokens."""
    return backend if isinstance(backend, TokenScorer) else None
