"""The evaluation prompts: story beginnings and instructions, read from JSON and checked.

The built-in set is resources/evaluation_prompts.json; `complete.prompts_path` names another
file of the same shape. Every problem is a one-line UserError naming the file and the entry.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from tinystories.errors import UserError

PROMPTS_SHAPE = '{"version": ..., "beginnings": [{"id": ..., "text": ...}], "instructions": [{"id": ..., "instruction": ..., "words": [...]}]}'
BUILTIN = "resources/evaluation_prompts.json"
TOP_KEYS = {"version", "beginnings", "instructions", "description"}


def load_prompts(path: str | Path | None = None) -> dict:
    """Read and validate a prompts file (the built-in one when `path` is empty):
    {version, beginnings: [{id, text}], instructions: [{id, instruction, words}]}."""
    where, data = _read(path)
    beginnings = data.get("beginnings", [])
    instructions = data.get("instructions", [])
    if not isinstance(beginnings, list) or not isinstance(instructions, list):
        raise UserError(f"{where}: beginnings and instructions must be lists")
    if not beginnings and not instructions:
        raise UserError(f"{where}: no prompts; add at least one entry to beginnings or instructions")
    seen: set[str] = set()
    for section, text_key in (("beginnings", "text"), ("instructions", "instruction")):
        for i, entry in enumerate(data.get(section, [])):
            _check_entry(f"{where}: {section}[{i}]", entry, text_key, section == "instructions", seen)
    return {
        "version": str(data.get("version", "")),
        "beginnings": [{"id": b["id"], "text": b["text"]} for b in beginnings],
        "instructions": [{"id": x["id"], "instruction": x["instruction"], "words": list(x.get("words", []))} for x in instructions],
    }


def _read(path: str | Path | None) -> tuple[str, dict]:
    """(how errors name the file, its top-level object)."""
    if path:
        p = Path(path)
        where = str(p)
        if not p.exists():
            raise UserError(f"complete.prompts_path {p}: file not found; give a JSON file shaped {PROMPTS_SHAPE}")
        text = p.read_text(encoding="utf-8")
    else:
        where = "built-in evaluation_prompts.json"
        text = resources.files("tinystories").joinpath(BUILTIN).read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{where}: line {exc.lineno}: not valid JSON ({exc.msg}); fix the syntax") from None
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected an object shaped {PROMPTS_SHAPE}")
    unknown = sorted(set(data) - TOP_KEYS)
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(unknown)}; expected version, beginnings, instructions")
    return where, data


def _check_entry(at: str, entry, text_key: str, may_list_words: bool, seen: set[str]) -> None:
    """One beginning or instruction: known keys, a unique id, non-empty text, words as strings."""
    if not isinstance(entry, dict):
        raise UserError(f"{at}: expected an object with id and {text_key}")
    extra = sorted(set(entry) - {"id", text_key, "words"})
    if extra:
        raise UserError(f"{at}: unknown key(s) {', '.join(extra)}; allowed: id, {text_key}" + (", words" if may_list_words else ""))
    pid = entry.get("id")
    if not isinstance(pid, str) or not pid.strip() or any(c in pid for c in "|\n"):
        raise UserError(f"{at}: id must be a non-empty string without '|' or newlines")
    if pid in seen:
        raise UserError(f"{at}: duplicate id {pid!r}; ids must be unique across beginnings and instructions")
    seen.add(pid)
    body = entry.get(text_key)
    if not isinstance(body, str) or not body.strip():
        raise UserError(f"{at} ({pid}): {text_key} must be non-empty text")
    words = entry.get("words", [])
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise UserError(f"{at} ({pid}): words must be a list of strings")
