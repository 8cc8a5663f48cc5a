"""The stage executor: skip what is current, refuse unfinished inputs, keep the manifest.

    execute(stage, cfg, rundir, force=False, allow_unfinished=False)

A stage runs only when its config sections, its inputs or its outputs changed since the
manifest's last `done` record (or when `force` asks). It sees a view of the config holding
only the sections it declares (its own and USES), so its config hash covers everything it
can read. Whatever it raises, its record ends `failed` or `interrupted`, never `running`.
"""

from __future__ import annotations

import errno
import logging
import os
import time
import traceback
from importlib import metadata

from tinystories.errors import UserError
from tinystories.io.rundir import RunDir, now_iso, sha256_path
from tinystories.pipeline.ids import derive_seed
from tinystories.pipeline import registry
from tinystories.pipeline.registry import Stage, producer_of

_PACKAGES = ("tinystories", "torch", "transformers", "tokenizers", "accelerate", "llama_cpp_python", "openai", "datasketch")

log = logging.getLogger("tinystories")


def package_versions() -> dict[str, str]:
    out = {}
    for pkg in _PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


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


def why_stale(stage: Stage, cfg, rundir: RunDir) -> str | None:
    """Why a `done` stage would rerun now, from the manifest alone (no input is re-hashed):
    its config sections changed, an output is gone, or an input's producer has since
    written something else (or is no longer done)."""
    rec = rundir.stage_record(stage.name) or {}
    view = cfg.view(stage.sections)
    if rec.get("config_hash") != view.hash(view.section_names):
        return "config changed"
    if any(not rundir.path(rel).exists() for rel in stage.outputs(cfg)):
        return "an output is missing"
    for rel, digest in (rec.get("inputs") or {}).items():
        producer = producer_of(rel, cfg)
        if producer is None:
            continue
        prec = rundir.stage_record(producer.name) or {}
        if prec.get("status") != "done":
            return f"{producer.name} is {prec.get('status', 'not run')}"
        if (prec.get("outputs") or {}).get(rel) != digest:
            return f"{producer.name} was rerun"
    return None


def check_single_writer(stage: Stage, cfg) -> None:
    """Refuse a config under which another stage writes one of this stage's outputs too
    (generate and import both writing data/stories.jsonl): they would overwrite each other."""
    mine = set(stage.outputs(cfg))
    for other in registry.STAGES:  # looked up at call time: tests install toy pipelines
        if other.name == stage.name:
            continue
        try:
            shared = mine & set(other.outputs(cfg))
        except AttributeError:  # a partial config without that stage's section
            continue
        if shared:
            raise UserError(
                f"{stage.name}: under this config stage {other.name} also writes {', '.join(sorted(shared))}; "
                f"configure only one of them (e.g. --set generate.num_stories=0 to import, or leave import_.path empty to generate)"
            )


def check_inputs(stage: Stage, cfg, rundir: RunDir, allow_unfinished: bool) -> list[str]:
    """Refuse a missing input, or one whose producing stage is not done (unless allowed).

    Returns the inputs used although their producer was not done, for the manifest."""
    unfinished = []
    for rel in stage.inputs(cfg):
        producer = producer_of(rel, cfg)
        finish = f"`tinystories {producer.name} --run-dir {rundir.root}`" if producer else None
        if not rundir.path(rel).exists():
            hint = f"run {finish} first" if finish else "create it first"
            raise UserError(f"{stage.name}: missing input {rundir.path(rel)}; {hint}")
        if producer is None or producer.name == stage.name:
            continue
        rec = rundir.stage_record(producer.name)
        status = rec.get("status") if rec else None
        # No record at all: the file was put there by hand (or by an older run dir); trust it.
        if rec is None or status == "done":
            continue
        if not allow_unfinished:
            raise UserError(
                f"{stage.name}: input {rel} comes from stage {producer.name}, which is {status}, not done; "
                f"finish it with {finish}, or pass --allow-unfinished to use it as it is"
            )
        unfinished.append(rel)
    return unfinished


def _disk_error(exc: OSError) -> UserError | None:
    """A full disk or a read-only run dir is the user's to fix: one line, not a traceback."""
    where = exc.filename or "the run directory"
    if exc.errno == errno.ENOSPC:
        return UserError(f"{where}: no space left on the device; free some space and rerun the same command (the stage resumes)")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return UserError(f"{where}: cannot write here ({exc.strerror}); make the run dir writable or use another --run-dir")
    return None


def _record_end(rundir: RunDir, name: str, record: dict) -> None:
    """Write the stage's final record; if even that fails (a full disk), say so once."""
    try:
        rundir.update_stage(name, record)
    except OSError as exc:
        log.error("could not record stage %s as %s in %s: %s", name, record["status"], rundir.manifest_path, exc)


def execute(stage: Stage, cfg, rundir: RunDir, force: bool = False, allow_unfinished: bool = False) -> dict:
    """Run one stage unless it is current; record everything in the manifest."""
    check_single_writer(stage, cfg)
    rundir.ensure()
    unfinished = check_inputs(stage, cfg, rundir, allow_unfinished)
    view = cfg.view(stage.sections)
    # Hashed once: the skip check and the record both need them, and inputs can be multi-GB.
    config_hash = view.hash(view.section_names)
    inputs = {rel: sha256_path(rundir.path(rel)) for rel in stage.inputs(cfg)}
    if not force and not unfinished and is_current(stage, cfg, rundir, config_hash, inputs):
        rec = rundir.stage_record(stage.name)
        return {"status": "skipped", "metrics": rec.get("metrics", {})}

    record = {
        "status": "running",
        "config_hash": config_hash,
        "inputs": inputs,
        "seed": derive_seed(cfg.seed, stage.name),
        "versions": package_versions(),
        "started_at": now_iso(),
        "pid": os.getpid(),
    }
    if unfinished:
        record["allow_unfinished"] = unfinished
    main = is_main_process()
    if main:
        rundir.update_stage(stage.name, record)

    handler = _open_stage_log(rundir, stage.name, main)
    log.info("stage %s started (config %s)", stage.name, config_hash[:12])
    t0 = time.time()
    try:
        metrics = stage.run(view, rundir, force=force)
        missing = [rel for rel in stage.outputs(cfg) if not rundir.path(rel).exists()]
        if missing:
            raise RuntimeError(f"stage {stage.name} finished without writing {', '.join(missing)}")
        outputs = {rel: sha256_path(rundir.path(rel)) for rel in stage.outputs(cfg)}
    except BaseException as exc:
        user_error = _disk_error(exc) if isinstance(exc, OSError) else None
        shown = user_error or exc
        record.update(
            status="interrupted" if isinstance(exc, KeyboardInterrupt) else "failed",
            error=str(shown).splitlines()[0][:500] if str(shown) else type(exc).__name__,
            finished_at=now_iso(),
            wall_s=round(time.time() - t0, 3),
        )
        if getattr(exc, "metrics", None):  # a stage stopped by an llm spend cap says what it spent (llm/spend.py)
            record["metrics"] = exc.metrics
        if user_error is not None:
            log.info("stage %s failed:\n%s", stage.name, traceback.format_exc())  # the log file only
        elif not isinstance(exc, (UserError, KeyboardInterrupt)):
            log.error("stage %s failed:\n%s", stage.name, traceback.format_exc())
        if main:
            _record_end(rundir, stage.name, record)
        _close_stage_log(handler)
        if user_error is not None:
            raise user_error from None
        raise
    _close_stage_log(handler)
    record.update(status="done", outputs=outputs, metrics=metrics, finished_at=now_iso(), wall_s=round(time.time() - t0, 3))
    if main:
        rundir.update_stage(stage.name, record)
    return {"status": "done", "metrics": metrics, "wall_s": record["wall_s"]}


def _open_stage_log(rundir: RunDir, name: str, main: bool) -> logging.Handler:
    log.setLevel(logging.INFO)
    log_name = f"logs/{name}.log" if main else f"logs/{name}.rank{os.environ.get('RANK')}.log"
    handler = logging.FileHandler(rundir.path(log_name), encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)
    return handler


def _close_stage_log(handler: logging.Handler) -> None:
    log.removeHandler(handler)
    handler.close()
