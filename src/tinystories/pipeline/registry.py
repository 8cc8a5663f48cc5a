"""The stage registry: pipeline order and the `Stage` wrapper the CLI and the executor use.

A stage is a module with `NAME`, `SECTION`, `USES` (the other config sections it reads; each
one changes its output), a `Config` dataclass, `inputs(cfg)`, `outputs(cfg)` (run-dir-relative
paths) and `run(cfg, rundir, force=False) -> dict` (its metrics). Stage modules keep their heavy
imports (torch, llama_cpp) inside functions so that `tinystories --help` stays fast.
"""

from __future__ import annotations

import importlib
import typing
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from tinystories.errors import UserError
from tinystories.llm.config import LLMConfig

if typing.TYPE_CHECKING:
    from tinystories.io.rundir import RunDir
    from tinystories.pipeline.config import Config

# Pipeline order. `tinystories run` walks this list.
STAGE_MODULES: list[str] = [
    "data.vocab", "data.generate", "data.import_stories", "train.tokenizer", "train.prepare", "train.pretrain",
    "data.instruct_data", "train.sft", "eval.complete", "eval.judge", "eval.report",
]


@dataclass(frozen=True)
class Stage:
    module: ModuleType

    @property
    def name(self) -> str:
        return self.module.NAME

    @property
    def section(self) -> str:
        return self.module.SECTION

    @property
    def Config(self) -> type:  # noqa: N802 - mirrors the module attribute
        return self.module.Config

    @property
    def uses(self) -> tuple[str, ...]:
        return tuple(getattr(self.module, "USES", ()))

    @property
    def sections(self) -> tuple[str, ...]:
        """Every config section the stage may read: its own and those it declares in USES."""
        return (self.section, *self.uses)

    @property
    def help(self) -> str:
        doc = (self.module.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else self.name

    def inputs(self, cfg) -> list[str]:
        return list(self.module.inputs(cfg))

    def outputs(self, cfg) -> list[str]:
        return list(self.module.outputs(cfg))

    def run(self, cfg, rundir: "RunDir", force: bool = False) -> dict:
        return self.module.run(cfg, rundir, force=force) or {}


STAGES: list[Stage] = [Stage(importlib.import_module(f"tinystories.{m}")) for m in STAGE_MODULES]


def get_stage(name: str) -> Stage:
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise UserError(f"unknown stage {name!r}; stages: {', '.join(s.name for s in STAGES)}")


def config_sections() -> dict[str, type]:
    """Section name -> dataclass: `llm` plus every registered stage's own section."""
    out: dict[str, type] = {"llm": LLMConfig}
    for stage in STAGES:
        out[stage.section] = stage.Config
    return out


def load_run_config(path: str | Path | None = None, overrides: typing.Sequence[str] = (), base: dict | None = None, where: str | None = None) -> "Config":
    """A run's config with every registered stage's section (see pipeline.config.load_config)."""
    from tinystories.pipeline.config import load_config

    return load_config(path, overrides, base=base, sections=config_sections(), where=where)


def producer_of(rel: str, cfg) -> Stage | None:
    """The stage whose outputs include the run-dir path `rel` under this config."""
    for stage in STAGES:
        try:
            if rel in stage.outputs(cfg):
                return stage
        except AttributeError:  # a config without that stage's section (tests build partial ones)
            continue
    return None
