"""The `tinystories` command: one subcommand per stage, plus run, status and llm.

    tinystories STAGE --run-dir runs/NAME [--config configs/X.yaml] [--set section.key=value ...]
    tinystories run --config configs/quickstart.yaml --run-dir runs/quickstart
    tinystories status --run-dir runs/quickstart
    tinystories llm "Write one sentence about a cat."
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from tinystories.errors import UserError


def _add_config_args(p: argparse.ArgumentParser, run_dir_required: bool = True) -> None:
    p.add_argument("--run-dir", required=run_dir_required, type=Path, help="the run directory, e.g. runs/quickstart")
    p.add_argument("--config", type=Path, help="YAML config (default: the run dir's config.yaml, else built-in defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override one option (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    from tinystories.pipeline.registry import STAGES

    parser = argparse.ArgumentParser(prog="tinystories", description="TinyStories end to end: data, pretraining, instruct tuning, evaluation.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for stage in STAGES:
        p = sub.add_parser(stage.name, help=stage.help, description=stage.help)
        _add_config_args(p)
        p.add_argument("--force", action="store_true", help="redo the stage even if its config and inputs are unchanged")
    p = sub.add_parser("run", help="run every stage in order, skipping those already current")
    _add_config_args(p)
    names = [s.name for s in STAGES]
    p.add_argument("--from", dest="start", choices=names or None, help="first stage to run")
    p.add_argument("--until", dest="stop", choices=names or None, help="last stage to run")
    p.add_argument("--force", action="append", default=[], metavar="STAGE", help="redo this stage (repeatable)")
    p = sub.add_parser("status", help="show each stage's state in a run directory")
    p.add_argument("--run-dir", required=True, type=Path)
    p = sub.add_parser("llm", help="send one prompt through the configured LLM backend (a quick backend check)")
    p.add_argument("prompt", help="the prompt text")
    _add_config_args(p, run_dir_required=False)
    p.add_argument("--system", default=None, help="optional system message (chat mode)")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--seed", type=int, default=0)
    return parser


def resolve_config(args):
    from tinystories.pipeline.config import load_config

    config_path = args.config
    if config_path is None and args.run_dir is not None and (args.run_dir / "config.yaml").exists():
        config_path = args.run_dir / "config.yaml"
    return load_config(config_path, args.overrides)


def _write_config(cfg, run_dir: Path) -> None:
    from tinystories.io.rundir import RunDir, write_text

    RunDir(run_dir).ensure()
    write_text(run_dir / "config.yaml", cfg.to_yaml())


def cmd_stage(args) -> int:
    from tinystories.io.rundir import RunDir
    from tinystories.pipeline.registry import execute, get_stage

    cfg = resolve_config(args)
    _write_config(cfg, args.run_dir)
    stage = get_stage(args.command)
    result = execute(stage, cfg, RunDir(args.run_dir), force=args.force)
    _print_result(stage.name, result)
    return 0


def _print_result(name: str, result: dict) -> None:
    metrics = json.dumps(result.get("metrics", {}), default=str)
    if len(metrics) > 400:
        metrics = metrics[:400] + "…"
    print(f"{name}: {result['status']} {metrics}")


def cmd_run(args) -> int:
    from tinystories.io.rundir import RunDir
    from tinystories.pipeline.registry import STAGES, execute

    if not STAGES:
        raise UserError("no stages are installed yet")
    cfg = resolve_config(args)
    _write_config(cfg, args.run_dir)
    names = [s.name for s in STAGES]
    for forced in args.force:
        if forced not in names:
            raise UserError(f"--force {forced}: unknown stage; stages: {', '.join(names)}")
    start = names.index(args.start) if args.start else 0
    stop = names.index(args.stop) if args.stop else len(names) - 1
    if start > stop:
        raise UserError(f"--from {args.start} comes after --until {args.stop}")
    rundir = RunDir(args.run_dir)
    for stage in STAGES[start : stop + 1]:
        force = stage.name in args.force
        result = execute(stage, cfg, rundir, force=force)
        _print_result(stage.name, result)
    return 0


def cmd_status(args) -> int:
    from tinystories.io.rundir import RunDir
    from tinystories.pipeline.registry import STAGES

    rundir = RunDir(args.run_dir)
    if not rundir.root.exists():
        raise UserError(f"--run-dir {rundir.root}: no such run directory")
    stages = rundir.manifest()["stages"]
    names = [s.name for s in STAGES] + [n for n in stages if n not in {s.name for s in STAGES}]
    print(f"{'stage':<16}{'status':<13}{'wall_s':>10}  finished")
    for name in names:
        rec = stages.get(name, {})
        wall = rec.get("wall_s")
        print(f"{name:<16}{rec.get('status', '-'):<13}{(f'{wall:.1f}' if wall is not None else '-'):>10}  {rec.get('finished_at', '')}")
        if rec.get("status") == "failed" and rec.get("error"):
            print(f"{'':<16}error: {rec['error']}")
    return 0


def cmd_llm(args) -> int:
    from tinystories.llm import Request, make_client

    cfg = resolve_config(args)
    cache_dir = args.run_dir / "cache" / "llm" if args.run_dir else None
    client = make_client(cfg.llm, cache_dir)
    if cfg.llm.mode == "chat":
        messages = ([{"role": "system", "content": args.system}] if args.system else []) + [{"role": "user", "content": args.prompt}]
        request = Request(key="cli", messages=tuple(messages), max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed)
    else:
        request = Request(key="cli", prompt=args.prompt, max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed)
    t0 = time.monotonic()
    [response] = client.complete([request], description="llm")
    wall = time.monotonic() - t0
    client.close()
    if not response.ok:
        raise UserError(f"llm: {cfg.llm.backend} backend gave no usable answer ({response.error})")
    print(response.text)
    tok_s = response.completion_tokens / response.latency_s if response.latency_s else 0.0
    print(
        f"\n[{response.backend} {response.model}] prompt {response.prompt_tokens} tok, completion {response.completion_tokens} tok, "
        f"latency {response.latency_s:.2f}s ({tok_s:.1f} tok/s), wall {wall:.2f}s, finish {response.finish_reason}"
        + (", from cache" if response.cached else ""),
        file=sys.stderr,
    )
    return 0


class _CurrentStderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at emit time (tests and wrappers swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def _show_warnings_on_stderr() -> None:
    """Stages log to logs/STAGE.log; warnings (skipped pairs, retries given up) also belong on screen."""
    logger = logging.getLogger("tinystories")
    if not any(isinstance(h, _CurrentStderrHandler) for h in logger.handlers):
        handler = _CurrentStderrHandler()
        handler.setLevel(logging.WARNING)
        handler.setFormatter(logging.Formatter("warning: %(message)s"))
        logger.addHandler(handler)


def main(argv: list[str] | None = None) -> int:
    # Our stages draw their own progress bars; transformers' per-load "Loading weights" bars
    # (milliseconds for these models) would interleave with them. Read when transformers is imported.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    _show_warnings_on_stderr()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        if args.command == "run":
            return cmd_run(args)
        if args.command == "status":
            return cmd_status(args)
        if args.command == "llm":
            return cmd_llm(args)
        return cmd_stage(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 130


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
