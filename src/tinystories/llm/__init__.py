"""The pluggable LLM layer used by story generation, summaries and the judge."""

from tinystories.llm.base import RawResult, Reject, Request, RequestError, Response, TransientError
from tinystories.llm.client import LLMClient, make_backend, make_client
from tinystories.llm.config import LLMConfig

__all__ = ["LLMClient", "LLMConfig", "RawResult", "Reject", "Request", "RequestError", "Response", "TransientError", "make_backend", "make_client"]
