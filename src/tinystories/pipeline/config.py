"""Config: one YAML per run, one section per stage, each mapped onto a dataclass.

Stage modules declare their own `Config` dataclass (fields with a one-line comment); this
module assembles the root from the stage registry, applies `--set section.key=value`
overrides strictly (unknown key or wrong type is an error), runs every section's cross-field
`check()`, and raises once with every problem found.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from tinystories.errors import UserError

# Sections that are not stages but are shared by several of them.
from tinystories.llm.config import LLMConfig


def derive_seed(seed: int, stage: str) -> int:
    """Each stage gets its own seed, derived from the run's one top-level seed."""
    digest = hashlib.sha256(f"{seed}:{stage}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def convert(value: Any, tp: Any, where: str, problems: list[str]) -> Any:
    """Check `value` against the annotation `tp`; return the converted value or record a problem."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        sub_problems: list[str] = []
        for arg in args:
            if arg is type(None):
                continue
            trial: list[str] = []
            out = convert(value, arg, where, trial)
            if not trial:
                return out
            sub_problems.extend(trial)
        problems.append(sub_problems[0] if sub_problems else f"{where}: unexpected value {value!r}")
        return value
    if origin is typing.Literal:
        if value not in args:
            problems.append(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            problems.append(f"{where}: expected a mapping of {tp.__name__} options, got {value!r}")
            return tp()
        return build(tp, value, where, problems)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            problems.append(f"{where}: expected a list, got {value!r}")
            return value
        item_tp = args[0] if args else Any
        return [convert(v, item_tp, f"{where}[{i}]", problems) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{where}: expected a mapping, got {value!r}")
            return value
        val_tp = args[1] if len(args) > 1 else Any
        return {str(k): convert(v, val_tp, f"{where}.{k}", problems) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            problems.append(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"{where}: expected a number, got {value!r}")
            return value
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            # YAML reads 1M as a string but 10 as an int: accept scalars where text is expected.
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return str(value)
            problems.append(f"{where}: expected text, got {value!r}")
        return value
    return value


def build(cls: type, data: dict, where: str, problems: list[str]) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            known = ", ".join(sorted(fields))
            problems.append(f"{where}.{key}: unknown option (known: {known})")
            continue
        kwargs[key] = convert(value, hints[key], f"{where}.{key}", problems)
    try:
        obj = cls(**kwargs)
    except TypeError as exc:  # a required field without default
        problems.append(f"{where}: {exc}")
        obj = cls()
    check = getattr(obj, "check", None)
    if callable(check) and not problems:
        problems.extend(f"{where}.{p}" if not p.startswith(where) else p for p in check())
    return obj


def sections() -> dict[str, type]:
    """Section name -> dataclass: `llm` plus every registered stage's own section."""
    from tinystories.pipeline.registry import STAGES

    out: dict[str, type] = {"llm": LLMConfig}
    for stage in STAGES:
        out[stage.section] = stage.Config
    return out


class Config:
    """The resolved config of a run: `cfg.seed`, `cfg.llm`, `cfg.<section>`."""

    def __init__(self, seed: int, values: dict[str, Any]):
        self.seed = seed
        self._values = values

    def __getattr__(self, name: str) -> Any:
        values = self.__dict__.get("_values", {})
        if name in values:
            return values[name]
        raise AttributeError(name)

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"seed": self.seed}
        for name, value in self._values.items():
            out[name] = dataclasses.asdict(value)
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def hash(self, names: typing.Iterable[str], include_seed: bool = True) -> str:
        """Hash of the named sections: a stage reruns when any of them changes."""
        payload = {name: dataclasses.asdict(self._values[name]) for name in names}
        if include_seed:
            payload["seed"] = self.seed
        blob = json.dumps(payload, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()

    def llm_for(self, section: str) -> LLMConfig:
        """The root `llm` section with a stage's own `llm:` overrides (e.g. a separate judge)."""
        base = dataclasses.asdict(self.llm)
        overrides = getattr(self._values.get(section), "llm", None) or {}
        if not overrides:
            return self.llm
        problems: list[str] = []
        merged = build(LLMConfig, {**base, **overrides}, f"{section}.llm", problems)
        if problems:
            raise UserError("; ".join(problems))
        return merged


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise UserError(f"--set {item!r}: expected section.key=value, e.g. --set pretrain.max_steps=100")
    key, raw = item.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if len(path) < 2 and path != ["seed"]:
        raise UserError(f"--set {item!r}: name the section and the key, e.g. --set generate.num_stories=100")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return path, value


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = (), base: dict | None = None) -> Config:
    """Read a YAML file (or `base`), apply overrides, check everything, raise once."""
    data: dict[str, Any] = {}
    if base is not None:
        data = json.loads(json.dumps(base))
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise UserError(f"--config {path}: file not found; pass an existing YAML file such as configs/quickstart.yaml")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f" line {mark.line + 1}" if mark else ""
            raise UserError(f"--config {path}:{line} is not valid YAML ({getattr(exc, 'problem', exc)}); fix the syntax") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise UserError(f"--config {path}: expected a mapping of sections (seed:, llm:, generate:, ...), got {type(loaded).__name__}")
        data = _deep_merge(data, loaded)
    for item in overrides:
        keys, value = _parse_override(item)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {item!r}: {k} is not a section")
        node[keys[-1]] = value

    known = sections()
    problems: list[str] = []
    seed = data.pop("seed", 1337)
    if isinstance(seed, bool) or not isinstance(seed, int):
        problems.append(f"seed: expected an integer, got {seed!r}")
        seed = 1337
    values: dict[str, Any] = {}
    for name, value in data.items():
        if name not in known:
            problems.append(f"{name}: unknown section (known: seed, {', '.join(known)})")
    for name, cls in known.items():
        raw = data.get(name) or {}
        if not isinstance(raw, dict):
            problems.append(f"{name}: expected a mapping of options, got {raw!r}")
            raw = {}
        values[name] = build(cls, raw, name, problems)
    if problems:
        where = f"config {path}" if path else "config"
        raise UserError(f"{where}: " + "; ".join(problems))
    return Config(seed, values)


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out
