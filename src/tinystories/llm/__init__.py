"""The pluggable LLM layer used by story generation, summaries and the judge."""

from tinystories.llm.base import Backend, RawResult, Reject, Request, RequestError, Response, TokenScorer, TransientError, token_scorer
from tinystories.llm.client import LLMClient, make_client
from tinystories.llm.config import LLMConfig
from tinystories.llm.registry import backend_registered, make_backend, register_backend

__all__ = [
    "Backend", "LLMClient", "LLMConfig", "RawResult", "Reject", "Request", "RequestError", "Response", "TokenScorer", "TransientError",
    "backend_registered", "make_backend", "make_client", "register_backend", "token_scorer",
]  # fmt: skip
