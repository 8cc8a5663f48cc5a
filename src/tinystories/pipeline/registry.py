"""The stage registry and the executor that both the CLI and `tinystories run` use.

A stage is a module with `NAME`, `SECTION`, `USES` (other config sections that change its
output), a `Config` dataclass, `inputs(cfg)`, `outputs(cfg)` (run-dir-relative paths) and
`run(cfg, rundir) -> dict` (its metrics). Only stages that really work are listed here.
Stage modules keep their heavy imports (torch, llama_cpp) inside functions so that
`tinystories --help` and config loading stay fast.
"""

from __future__ import annotations

import importlib
import logging
import os
import time
import traceback
from dataclasses import dataclass
from importlib import metadata
from types import ModuleType

from tinystories.errors import UserError
from tinystories.io.rundir import RunDir, now_iso, sha256_path

# Pipeline order. `tinystories run` walks this list.
STAGE_MODULES: list[str] = [
    "data.vocab", "data.generate", "data.import_stories", "train.tokenizer", "train.prepare", "train.pretrain",
    "data.instruct_data", "train.sft", "eval.complete", "eval.judge", "eval.report",
]

_PACKAGES = ("tinystories", "torch", "transformers", "tokenizers", "accelerate", "llama_cpp_python", "openai", "datasketch")


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
    def help(self) -> str:
        doc = (self.module.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else self.name

    def inputs(self, cfg) -> list[str]:
        return list(self.module.inputs(cfg))

    def outputs(self, cfg) -> list[str]:
        return list(self.module.outputs(cfg))

    def run(self, cfg, rundir: RunDir, force: bool = False) -> dict:
        return self.module.run(cfg, rundir, force=force) or {}


STAGES: list[Stage] = [Stage(importlib.import_module(f"tinystories.{m}")) for m in STAGE_MODULES]


def get_stage(name: str) -> Stage:
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise UserError(f"unknown stage {name!r}; stages: {', '.join(s.name for s in STAGES)}")


def package_versions() -> dict[str, str]:
    out = {}
    for pkg in _PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def _producer_of(rel: str, cfg) -> str | None:
    for stage in STAGES:
        try:
            if rel in stage.outputs(cfg):
                return stage.name
        except AttributeError:  # a config without that stage's section (tests build partial ones)
            continue
    return None


def is_main_process() -> bool:
    """Under torchrun / accelerate launch every rank runs the stage; only rank 0 keeps the books."""
    return int(os.environ.get("RANK", "0")) == 0


def is_current(stage: Stage, cfg, rundir: RunDir, config_hash: str, inputs: dict[str, str]) -> bool:
    """True when the manifest says the stage finished with this config hash and these input hashes."""
    rec = rundir.stage_record(stage.name)
    if not rec or rec.get("status") != "done":
        return False
    if rec.get("config_hash") != config_hash:
        return False
    if any(not rundir.path(rel).exists() for rel in stage.outputs(cfg)):
        return False
    return inputs == rec.get("inputs")


def execute(stage: Stage, cfg, rundir: RunDir, force: bool = False) -> dict:
    """Run one stage unless it is current; record everything in the manifest."""
    from tinystories.pipeline.config import derive_seed

    rundir.ensure()
    for rel in stage.inputs(cfg):
        if not rundir.path(rel).exists():
            producer = _producer_of(rel, cfg)
            hint = f"run `tinystories {producer} --run-dir {rundir.root}` first" if producer else "create it first"
            raise UserError(f"{stage.name}: missing input {rundir.path(rel)}; {hint}")
    # Hashed once: the skip check and the record both need them, and inputs can be multi-GB.
    config_hash = cfg.hash([stage.section, *stage.uses])
    inputs = {rel: sha256_path(rundir.path(rel)) for rel in stage.inputs(cfg)}
    if not force and is_current(stage, cfg, rundir, config_hash, inputs):
        rec = rundir.stage_record(stage.name)
        return {"status": "skipped", "metrics": rec.get("metrics", {})}

    record = {
        "status": "running",
        "config_hash": config_hash,
        "inputs": inputs,
        "seed": derive_seed(cfg.seed, stage.name),
        "versions": package_versions(),
        "started_at": now_iso(),
    }
    main = is_main_process()
    if main:
        rundir.update_stage(stage.name, record)

    logger = logging.getLogger("tinystories")
    logger.setLevel(logging.INFO)
    log_name = f"logs/{stage.name}.log" if main else f"logs/{stage.name}.rank{os.environ.get('RANK')}.log"
    handler = logging.FileHandler(rundir.path(log_name), encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.info("stage %s started (config %s)", stage.name, config_hash[:12])
    t0 = time.time()
    try:
        # A stage that resumes its own partial work must know that --force asked it to start over.
        metrics = stage.run(cfg, rundir, force=force)
    except BaseException as exc:
        record.update(
            status="interrupted" if isinstance(exc, KeyboardInterrupt) else "failed",
            error=str(exc).splitlines()[0][:500] if str(exc) else type(exc).__name__,
            finished_at=now_iso(),
            wall_s=round(time.time() - t0, 3),
        )
        if not isinstance(exc, (UserError, KeyboardInterrupt)):
            logger.error("stage %s failed:\n%s", stage.name, traceback.format_exc())
        if main:
            rundir.update_stage(stage.name, record)
        raise
    finally:
        logger.removeHandler(handler)
        handler.close()
    missing = [rel for rel in stage.outputs(cfg) if not rundir.path(rel).exists()]
    if missing:
        raise RuntimeError(f"stage {stage.name} finished without writing {', '.join(missing)}")
    record.update(
        status="done",
        outputs={rel: sha256_path(rundir.path(rel)) for rel in stage.outputs(cfg)},
        metrics=metrics,
        finished_at=now_iso(),
        wall_s=round(time.time() - t0, 3),
    )
    if main:
        rundir.update_stage(stage.name, record)
    return {"status": "done", "metrics": metrics}
