"""A stage's options for `tinystories STAGE --help`: name, default and the one-line comment
that documents each field of its Config dataclass (the comment is the documentation, so it is
read from the source rather than repeated in a help string)."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
import textwrap
import typing

_FIELD_LINE = re.compile(r"^\s+(?P<name>\w+)\s*:\s*[^=#]+?(?:=.*?)?\s*#\s*(?P<doc>.+)$")


# Cached: the source does not change within a process, and re-parsing it on every parser build
# hit a CPython 3.11.7 bug (SystemError "AST constructor recursion depth mismatch") after a stage
# was interrupted (tests/test_judge.py::test_judge_resumes_and_skips_done_requests).
def _source_without_gc(klass: type) -> str:
    # inspect.getsource parses the file with `ast`; CPython 3.11 can raise "AST constructor
    # recursion depth mismatch" when a garbage collection runs a finaliser mid-parse (seen when
    # an unawaited coroutine is collected), so the collector waits for the parse.
    import gc

    enabled = gc.isenabled()
    gc.disable()
    try:
        return inspect.getsource(klass)
    finally:
        if enabled:
            gc.enable()


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Field name -> its trailing `# comment` in the dataclass source (inherited fields too)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = _source_without_gc(klass)
        except (OSError, TypeError):
            continue
        for line in source.splitlines():
            match = _FIELD_LINE.match(line)
            if match:
                docs[match["name"]] = match["doc"].strip()
    return docs


def _default(field: dataclasses.Field) -> typing.Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def option_rows(section: str, cls: type) -> list[tuple[str, str, str]]:
    """(section.key, default, description) for every option, nested dataclasses flattened."""
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    rows = []
    for field in dataclasses.fields(cls):
        tp = hints.get(field.name)
        if dataclasses.is_dataclass(tp):
            rows += option_rows(f"{section}.{field.name}", tp)
            continue
        default = _default(field)
        shown = repr(default) if isinstance(default, str) else str(default).lower() if isinstance(default, bool) else str(default)
        rows.append((f"{section}.{field.name}", shown, docs.get(field.name, "")))
    return rows


def options_help(section: str, cls: type, width: int = 100) -> str:
    """The epilog of `tinystories STAGE --help`: one line per option."""
    rows = option_rows(section, cls)
    if not rows:
        return ""
    lines = ["options (set with --set KEY=VALUE or in the config's section), default in brackets:"]
    for key, default, doc in rows:
        lines.append(f"  {key} [{default}]")
        if doc:
            lines += textwrap.wrap(doc, width, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return "\n".join(lines)
