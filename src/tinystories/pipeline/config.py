"""Config: one YAML per run, one section per stage, each mapped onto a dataclass.

Stage modules declare their own `Config` dataclass (fields with a one-line comment); the
caller passes the sections (the registry's `load_run_config` passes every stage's, so this
module never imports the stages), `--set section.key=value` overrides apply strictly (unknown
key or wrong type is an error, blamed on the `--set` that caused it), every section's
cross-field `check()` runs, and one error names every problem found.
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

from tinystories.llm.config import LLMConfig

# YAML 1.1 reads these bare words as booleans; a text option (dedup: off) means the word.
_YAML_BOOL_WORDS = {False: ("off", "no", "false"), True: ("on", "yes", "true")}


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
        if isinstance(value, bool) and not any(isinstance(a, bool) for a in args):
            value = next((w for w in _YAML_BOOL_WORDS[value] if w in args), value)
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
            hint = " (YAML reads on/off/yes/no as true/false: quote the word, e.g. 'off')" if isinstance(value, bool) else ""
            problems.append(f"{where}: expected text, got {value!r}{hint}")
        return value
    return value


def build(cls: type, data: dict, where: str, problems: list[str]) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            moved = [name for name, tp in hints.items() if dataclasses.is_dataclass(tp) and key in {f.name for f in dataclasses.fields(tp)}]
            if moved:
                problems.append(f"{where}.{key}: unknown option; it lives under {where}.{moved[0]}.{key} now")
            else:
                problems.append(f"{where}.{key}: unknown option (known: {', '.join(sorted(fields))})")
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

    @property
    def section_names(self) -> list[str]:
        return list(self._values)

    def view(self, names: typing.Iterable[str]) -> "Config":
        """The same config holding only the named sections: what the executor hands a stage,
        so that reading an undeclared section fails loudly instead of escaping the config hash."""
        names = [n for n in names if n in self._values]
        return _SectionView(self.seed, {n: self._values[n] for n in names}, owner=", ".join(names))

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"seed": self.seed}
        for name, value in self._values.items():
            out[name] = dataclasses.asdict(value)
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def hash(self, names: typing.Iterable[str], include_seed: bool = True) -> str:
        """Hash of the named sections: a stage reruns when any of them changes."""
        payload = {name: _hashed_fields(self._values[name]) for name in names}
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


def _hashed_fields(section: Any) -> dict:
    """A section's fields minus those its dataclass marks NOT_IN_HASH (operational knobs)."""
    data = dataclasses.asdict(section)
    for name in getattr(type(section), "NOT_IN_HASH", ()):
        data.pop(name, None)
    return data


class _SectionView(Config):
    def __init__(self, seed: int, values: dict[str, Any], owner: str):
        super().__init__(seed, values)
        self._owner = owner

    def __getattr__(self, name: str) -> Any:
        values = self.__dict__.get("_values", {})
        if name in values:
            return values[name]
        if name.startswith("_"):
            raise AttributeError(name)
        raise AttributeError(
            f"config section {name!r} is not declared by this stage (it may read: {self.__dict__.get('_owner')}); add it to the stage's USES"
        )


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise UserError(f"--set {item!r}: expected section.key=value, e.g. --set pretrain.train.max_steps=100")
    key, raw = item.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if len(path) < 2 and path != ["seed"]:
        raise UserError(f"--set {item!r}: name the section and the key, e.g. --set generate.num_stories=100")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, bool) and raw.strip().lower() not in ("true", "false"):
        value = raw.strip()  # --set x=off means the word; only true/false are booleans here
    return path, value


def _read_yaml(path: Path, where: str) -> dict:
    if not path.exists():
        raise UserError(f"{where} {path}: file not found; pass an existing YAML file such as configs/quickstart.yaml")
    if path.is_dir():
        raise UserError(f"{where} {path}: is a directory, not a YAML file; name the config file inside it")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{where} {path}: is not UTF-8 text; save the config as UTF-8 YAML") from None
    except OSError as exc:
        raise UserError(f"{where} {path}: cannot be read ({exc.strerror}); check its permissions") from None
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{where} {path}:{line} is not valid YAML ({getattr(exc, 'problem', exc)}); fix the syntax") from None
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise UserError(f"{where} {path}: expected a mapping of sections (seed:, llm:, generate:, ...), got {type(loaded).__name__}")
    return loaded


def load_config(
    path: str | Path | None = None,
    overrides: typing.Sequence[str] = (),
    base: dict | None = None,
    sections: dict[str, type] | None = None,
    where: str | None = None,
) -> Config:
    """Read a YAML file (or `base`), apply overrides, check everything, raise once.

    `sections` maps section names to their dataclasses (the registry's `config_sections()`);
    `where` names the file in errors (default `--config PATH`)."""
    if sections is None:
        sections = {"llm": LLMConfig}
    data: dict[str, Any] = {}
    if base is not None:
        data = json.loads(json.dumps(base))
    if path is not None:
        path = Path(path)
        where = where or "--config"
        data = _deep_merge(data, _read_yaml(path, where))
    override_keys: dict[str, str] = {}
    for item in overrides:
        keys, value = _parse_override(item)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {item!r}: {k} is not a section")
        node[keys[-1]] = value
        override_keys[".".join(keys)] = item

    known = sections
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
        raise UserError(_blame(problems, override_keys, f"{where} {path}" if path else "config"))
    return Config(seed, values)


def _blame(problems: list[str], override_keys: dict[str, str], source: str) -> str:
    """One line: problems caused by a --set are blamed on it, the rest on the config file."""
    from_set, from_file = [], []
    for problem in problems:
        item = next((item for key, item in override_keys.items() if problem.startswith(key + ":") or problem.startswith(key + ".") or problem.startswith(key + "[")), None)
        (from_set if item else from_file).append(f"--set {item}: {problem}" if item else problem)
    parts = from_set + ([f"{source}: " + "; ".join(from_file)] if from_file else [])
    return "; ".join(parts)


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out
