"""The LLM layer's data types and the contract every backend fulfils."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol


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

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("a Request needs exactly one of messages or prompt")

    def with_seed(self, seed: int) -> "Request":
        return Request(**{**asdict(self), "messages": self.messages, "seed": seed})

    def approx_prompt_tokens(self) -> int:
        text = self.prompt if self.prompt is not None else " ".join(m.get("content", "") for m in self.messages or ())
        return max(1, len(text) // 4)


@dataclass
class RawResult:
    """What a backend returns for one call."""

    text: str
    finish_reason: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model: str = ""


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
    name: str  # "embedded" | "openai" | ...
    max_concurrency: int  # the most requests it can serve at once (1 for in-process llama.cpp)

    def identity(self) -> dict:
        """Everything about the backend that changes answers (model name, weights hash): part of the cache key."""

    async def generate(self, request: Request) -> RawResult:
        """One call. Raise TransientError for retryable failures, RequestError when only this request
        is bad, UserError for a setup problem (stops the job)."""

    async def aclose(self) -> None: ...
