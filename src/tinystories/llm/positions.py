"""Requests that read next-token distributions at several positions after one prompt
(`Request.continuations`), for a backend that has no native way to do it.

Expected scoring (eval/expected.py) reads the judge's distribution where it would write each grade:
one long shared prompt (the grading request with the story) and a short continuation per grade
("...Grammar: "). The embedded backend evaluates the prompt once and each continuation from its
KV cache (llm/embedded.py `read_positions`). An OpenAI-compatible server can only be asked one
generated token at a time, so here the request becomes one `max_tokens=1` request per
continuation, sent together: servers with prefix caching (llama.cpp's server, vLLM) then evaluate
the shared prompt once too.
"""

from __future__ import annotations

from tinystories.llm.base import RawResult, Request


def position_requests(request: Request) -> list[Request]:
    """One single-token request per continuation: its prompt is the request's prompt plus it."""
    return [
        # Temperature 1: a server that scales log-probabilities by the temperature then returns the
        # model's own distribution; the token it samples is never used.
        Request(key=f"{request.key}|{i}", prompt=request.prompt + continuation, max_tokens=1, temperature=1.0, seed=request.seed,
                template_version=request.template_version, top_logprobs=request.top_logprobs)  # fmt: skip
        for i, continuation in enumerate(request.continuations)
    ]


def merged(results: list[RawResult], model: str) -> RawResult:
    """The answers of `position_requests` as the one answer of the positions request: the first
    position of each in order (a reply that generated nothing gives an empty position; one without
    log-probabilities at all makes the whole answer one without them)."""
    return RawResult(
        text="",
        finish_reason="positions",
        prompt_tokens=sum(r.prompt_tokens for r in results),
        completion_tokens=0,  # the sampled tokens are never used
        model=results[0].model if results else model,
        logprobs=None if any(r.logprobs is None for r in results) else [(r.logprobs or [{}])[0] for r in results],
    )
