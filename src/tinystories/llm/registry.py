"""Which backend a name in `llm.backend` selects.

    register_backend("my-server", lambda cfg: MyBackend(cfg))   # then: --set llm.backend=my-server

The two real backends are registered here under "embedded" and "openai"; a test registers its
scripted backend the same way (tests/fake_llm.py) instead of patching `make_backend`, so the
stage code under test goes through exactly the lookup a real run does. The factories import
their module on first use: llama.cpp and the openai client load only when a run needs them.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Iterator

from tinystories.errors import UserError

if TYPE_CHECKING:
    from tinystories.llm.base import Backend
    from tinystories.llm.config import LLMConfig

Factory = Callable[["LLMConfig"], "Backend"]


def _embedded(cfg: "LLMConfig") -> "Backend":
    from tinystories.llm.embedded import EmbeddedBackend

    return EmbeddedBackend(cfg)


def _openai(cfg: "LLMConfig") -> "Backend":
    from tinystories.llm.openai_backend import OpenAIBackend

    return OpenAIBackend(cfg)


BUILT_IN: dict[str, Factory] = {"embedded": _embedded, "openai": _openai}
_factories: dict[str, Factory] = dict(BUILT_IN)


def register_backend(name: str, factory: Factory) -> Factory | None:
    """Make `llm.backend: <name>` build its backend with `factory(cfg)`. Returns the factory the
    name selected before (None if it was new), so a caller can put it back."""
    if not name or not name.strip() or name != name.strip():
        raise ValueError(f"register_backend: {name!r} is not a usable backend name")
    previous = _factories.get(name)
    _factories[name] = factory
    return previous


def unregister_backend(name: str, previous: Factory | None = None) -> None:
    """Remove `name`, or give it back `previous` (what register_backend returned)."""
    if previous is None:
        _factories.pop(name, None)
    else:
        _factories[name] = previous


@contextmanager
def backend_registered(name: str, factory: Factory) -> Iterator[None]:
    """`name` selects `factory` inside the block and what it selected before after it."""
    previous = register_backend(name, factory)
    try:
        yield
    finally:
        unregister_backend(name, previous)


@contextmanager
def registry_restored() -> Iterator[None]:
    """Whatever the block registers or removes is undone at its end (a test's isolation)."""
    saved = dict(_factories)
    try:
        yield
    finally:
        _factories.clear()
        _factories.update(saved)


def backend_names() -> list[str]:
    return sorted(_factories)


def unknown_backend_problem(name: str) -> str | None:
    """The one-line complaint about `llm.backend: <name>`, or None when the name is registered."""
    if name in _factories:
        return None
    return f"backend: unknown backend {name!r}; registered backends: {', '.join(backend_names())}"


def make_backend(cfg: "LLMConfig") -> "Backend":
    """The backend `cfg.backend` names, built from `cfg`."""
    problem = unknown_backend_problem(cfg.backend)
    if problem is not None:
        raise UserError(f"llm.{problem}")
    return _factories[cfg.backend](cfg)
