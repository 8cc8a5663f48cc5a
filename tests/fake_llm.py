"""A scripted backend for tests of LLM stages: answers come from a Python function, no model.

A test puts it in place the way any backend gets in, through the registry (llm/registry.py):

    backend = register_scripted(ScriptedBackend(reply))
    main(["generate", ...])          # the stage's make_client finds the scripted backend

It is registered under "embedded", the default `llm.backend`, so a stage test needs no config
change to use it; tests/conftest.py undoes every registration when the test ends.
"""

from __future__ import annotations

import asyncio
from typing import Callable

from tinystories.llm.base import RawResult, Request
from tinystories.llm.positions import merged, position_requests
from tinystories.llm.registry import register_backend

SCRIPTED_AS = "embedded"


class ScriptedBackend:
    name = "scripted"

    def __init__(self, reply: Callable[[Request], str | RawResult], model: str = "scripted-model", max_concurrency: int = 8, delay_s: float = 0.0):
        self._reply = reply
        self.model = model
        self.max_concurrency = max_concurrency
        self.delay_s = delay_s
        self.calls: list[Request] = []

    def identity(self) -> dict:
        return {"model": self.model}

    async def generate(self, request: Request) -> RawResult:
        self.calls.append(request)
        if request.continuations:  # as a server would be asked: one single-token request per position
            return merged([await self.generate(r) for r in position_requests(request)], self.model)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        out = self._reply(request)
        if isinstance(out, RawResult):
            return out
        return RawResult(text=out, finish_reason="stop", prompt_tokens=request.approx_prompt_tokens(), completion_tokens=max(1, len(out.split())), model=self.model)

    async def aclose(self) -> None:
        pass

    def close(self) -> None:
        pass  # nothing held; a test keeps using the same instance across stage runs


def register_scripted(backend: ScriptedBackend, name: str = SCRIPTED_AS) -> ScriptedBackend:
    """Make `llm.backend: <name>` build `backend` (the same instance every time, so a test can read its calls)."""
    register_backend(name, lambda cfg: backend)
    return backend
