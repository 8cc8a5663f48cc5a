"""A scripted backend for tests of LLM stages: answers come from a Python function, no model."""

from __future__ import annotations

import asyncio
from typing import Callable

from tinystories.llm.base import RawResult, Request


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
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        out = self._reply(request)
        if isinstance(out, RawResult):
            return out
        return RawResult(text=out, finish_reason="stop", prompt_tokens=request.approx_prompt_tokens(), completion_tokens=max(1, len(out.split())), model=self.model)

    async def aclose(self) -> None:
        pass
