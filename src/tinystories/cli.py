"""The `tinystories` command: one subcommand per stage, plus run, status and llm.

    tinystories STAGE --run-dir runs/NAME [--config configs/X.yaml] [--set section.key=value ...]
    tinystories run --config configs/quickstart.yaml --run-dir runs/quickstart
    tinystories status --run-dir runs/quickstart
    tinystories llm "Write one sentence about a cat."
"""

from __future__ import annotations

import argparse
import contextlib
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
    from tinystories.pipeline.options import options_help
    from tinystories.pipeline.registry import STAGES

    parser = argparse.ArgumentParser(prog="tinystories", description="TinyStories end to end: data, pretraining, instruct tuning, evaluation.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for stage in STAGES:
        p = sub.add_parser(stage.name, help=stage.help, description=stage.help, epilog=options_help(stage.section, stage.Config),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        _add_config_args(p)
        p.add_argument("--force", action="store_true", help="redo the stage even if its config and inputs are unchanged")
        p.add_argument("--allow-unfinished", action="store_true", help="use inputs whose producing stage is not done (recorded in the manifest)")
    p = sub.add_parser("run", help="run every stage in order, skipping those already current")
    _add_config_args(p)
    p.add_argument("--allow-unfinished", action="store_true", help="use inputs whose producing stage is not done (recorded in the manifest)")
    names = [s.name for s in STAGES]
    p.add_argument("--from", dest="start", choices=names or None, help="first stage to run")
    p.add_argument("--until", dest="stop", choices=names or None, help="last stage to run")
    p.add_argument("--force", action="append", default=[], metavar="STAGE", help="redo this stage (repeatable)")
    p = sub.add_parser("status", help="show each stage's state in a run directory")
    p.add_argument("--run-dir", required=True, type=Path)
    p = sub.add_parser("plan", help="before running: requests, tokens, dollars, hours and disk per stage of a config")
    _add_config_args(p, run_dir_required=False)
    p.add_argument("--train-flops", type=float, default=0.0, metavar="FLOP/S", help="achieved training FLOP/s of your hardware for training hours (e.g. 3e14); default: the 2-core CPU figures, or the run dir's measured speed")
    p = sub.add_parser("llm", help="send one prompt through the configured LLM backend (a quick backend check)")
    p.add_argument("prompt", help="the prompt text")
    _add_config_args(p, run_dir_required=False)
    p.add_argument("--system", default=None, help="optional system message (chat mode)")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--seed", type=int, default=0)
    _add_tryout_parsers(sub)
    _add_export_parser(sub)
    _add_compare_parser(sub)
    return parser


def _add_compare_parser(sub) -> None:
    p = sub.add_parser("compare", help="compare runs: bits per byte and judge grades against model size and training tokens (markdown + charts)")
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="run directories, e.g. runs/small runs/large")
    p.add_argument("--out", type=Path, default=Path("compare"), help="where to write compare.md and its charts (default: compare/ here)")


def _add_export_parser(sub) -> None:
    p = sub.add_parser("export", help="copy a finished model into a clean directory with its model card (and upload it to the Hugging Face Hub)")
    p.add_argument("--run-dir", required=True, type=Path, help="the run directory, e.g. runs/quickstart")
    p.add_argument("--model", required=True, metavar="pretrain/SIZE|sft/SIZE", help="the checkpoint to export, e.g. sft/8M")
    p.add_argument("--out", required=True, type=Path, help="the directory to write (new, empty or a previous export)")
    p.add_argument("--license", default="mit", help="the license the model card declares (a Hub license id; default mit)")
    p.add_argument("--push-to-hub", metavar="OWNER/NAME", default=None, help="then upload the directory to this Hub model repo (token from HF_TOKEN)")
    p.add_argument("--private", action="store_true", help="create the Hub repo as private")


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (cuda when available) | cpu | cuda | cuda:N")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature; 0 = greedy (default 1.0, as in evaluation)")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling share (default 0.95, as in evaluation)")
    p.add_argument("--seed", type=int, default=0, help="with the prompt, fixes each completion (default 0)")
    p.add_argument("--max-tokens", type=int, default=200, help="longest completion in tokens (default 200)")


def _add_tryout_parsers(sub) -> None:
    p = sub.add_parser("sample", help="complete a beginning or follow an instruction with trained models, side by side")
    p.add_argument("text", nargs="?", default=None, help='a story beginning, e.g. "Once upon a time"')
    p.add_argument("--run-dir", required=True, type=Path, help="the run directory, e.g. runs/quickstart")
    p.add_argument("--model", dest="models", action="append", default=[], metavar="pretrain/SIZE|sft/SIZE", help="a model of the run (repeatable; default: every trained one)")
    p.add_argument("--instruct", default=None, metavar="INSTRUCTION", help='an instruction instead, e.g. "Words: dog, ball, happy" (sft models get the instruction format)')
    p.add_argument("--file", type=Path, default=None, help="a text file of prompts: one beginning per line, or `instruct: <instruction>`")
    p.add_argument("--jsonl", action="store_true", help="print one JSON line per completion instead of the table")
    _add_sampling_args(p)
    p = sub.add_parser("serve", help="a local web page to try the run's models side by side (and grade them with the judge)")
    _add_config_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--device", default="auto", help="auto (cuda when available) | cpu | cuda | cuda:N")


def resolve_config(args):
    from tinystories.io.layout import CONFIG
    from tinystories.pipeline.registry import load_run_config

    if args.config is not None:
        return load_run_config(args.config, args.overrides, where="--config")
    if args.run_dir is not None and (args.run_dir / CONFIG).exists():
        return load_run_config(args.run_dir / CONFIG, args.overrides, where="run dir config")
    return load_run_config(None, args.overrides)


def _write_config(cfg, run_dir: Path) -> None:
    from tinystories.io.rundir import RunDir, write_text

    RunDir(run_dir).ensure()
    write_text(run_dir / "config.yaml", cfg.to_yaml())


def cmd_stage(args) -> int:
    from tinystories.io.rundir import RunDir
    from tinystories.pipeline.executor import execute, is_main_process
    from tinystories.pipeline.registry import get_stage

    rundir = RunDir(args.run_dir)
    rundir.check_usable()
    stage = get_stage(args.command)
    cfg = resolve_config(args)
    with _one_writer(rundir, f"tinystories {stage.name}"):
        with _config_kept_on_user_error(cfg, args.run_dir, write=is_main_process()):
            result = execute(stage, cfg, rundir, force=args.force, allow_unfinished=args.allow_unfinished)
    _print_result(stage.name, result)
    return 0


@contextlib.contextmanager
def _config_kept_on_user_error(cfg, run_dir: Path, write: bool):
    """Write the resolved config before any work; a command refused for bad input puts the
    previous one back, so a typo in a --set never changes the run."""
    from tinystories.io.layout import CONFIG
    from tinystories.io.rundir import write_text

    path = run_dir / CONFIG
    previous = path.read_bytes() if path.is_file() else None
    if write:
        _write_config(cfg, run_dir)
    try:
        yield
    except UserError:
        if write:
            if previous is None:
                path.unlink(missing_ok=True)
            else:
                write_text(path, previous.decode("utf-8"))
        raise


def _one_writer(rundir, command: str):
    """The run dir's writer lock; under torchrun/accelerate only rank 0 takes it (every rank runs the stage)."""
    from tinystories.pipeline.executor import is_main_process

    return rundir.writer_lock(command) if is_main_process() else contextlib.nullcontext()


def _print_result(name: str, result: dict) -> None:
    """One readable line per stage: what happened, how long, and its headline figures."""
    wall = f" in {result['wall_s']:.1f} s" if result.get("wall_s") is not None else ""
    headline = _headline(result.get("metrics") or {}, limit=6)
    print(f"{name}: {result['status']}{wall}" + (f"  {headline}" if headline else ""))


def cmd_run(args) -> int:
    from tinystories.io.rundir import RunDir

    rundir = RunDir(args.run_dir)
    rundir.check_usable()
    cfg = resolve_config(args)
    with _one_writer(rundir, "tinystories run"):
        return _run_stages(args, cfg, rundir)


def _run_stages(args, cfg, rundir) -> int:
    from tinystories.pipeline.executor import execute
    from tinystories.pipeline.registry import STAGES

    if not STAGES:
        raise UserError("no stages are installed yet")
    _write_config(cfg, args.run_dir)
    names = [s.name for s in STAGES]
    for forced in args.force:
        if forced not in names:
            raise UserError(f"--force {forced}: unknown stage; stages: {', '.join(names)}")
    start = names.index(args.start) if args.start else 0
    stop = names.index(args.stop) if args.stop else len(names) - 1
    if start > stop:
        raise UserError(f"--from {args.start} comes after --until {args.stop}")
    for stage in STAGES[start : stop + 1]:
        force = stage.name in args.force
        result = execute(stage, cfg, rundir, force=force, allow_unfinished=args.allow_unfinished)
        _print_result(stage.name, result)
    return 0


def cmd_status(args) -> int:
    from tinystories.io.layout import CONFIG
    from tinystories.io.rundir import RunDir
    from tinystories.pipeline.executor import why_stale
    from tinystories.pipeline.registry import STAGES, load_run_config

    rundir = RunDir(args.run_dir)
    if not rundir.root.is_dir():
        raise UserError(f"--run-dir {rundir.root}: no such run directory")
    records = rundir.manifest()["stages"]
    cfg = load_run_config(rundir.path(CONFIG), where="run dir config") if rundir.path(CONFIG).is_file() else None
    writer = rundir.writer_active()
    known = {s.name for s in STAGES}
    print(f"{'stage':<16}{'status':<13}{'wall_s':>10}  {'finished':<26}metrics")
    for stage in [*STAGES, *(n for n in records if n not in known)]:
        name = stage if isinstance(stage, str) else stage.name
        rec = records.get(name, {})
        status = rec.get("status", "-")
        note = ""
        if status == "running" and not writer:
            status, note = "killed", "the process died mid-stage; rerun the same command to resume"
        elif status == "done" and cfg is not None and not isinstance(stage, str):
            reason = why_stale(stage, cfg, rundir)
            if reason:
                status, note = "stale", f"{reason}; `tinystories run` reruns it"
        wall = rec.get("wall_s")
        print(f"{name:<16}{status:<13}{(f'{wall:.1f}' if wall is not None else '-'):>10}  {rec.get('finished_at', ''):<26}{_headline(rec.get('metrics') or {})}")
        if status == "failed" and rec.get("error"):
            print(f"{'':<16}error: {rec['error']}")
        if note:
            print(f"{'':<16}{note}")
    return 0


def _headline(metrics: dict, limit: int = 4) -> str:
    """The first few scalar metrics of a stage, `key=value` (one level of nesting flattened:
    pretrain's per-size figures read `1M.val_loss=...`), for a one-line summary."""
    flat: list[tuple[str, object]] = []
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat += [(f"{key}.{k}", v) for k, v in value.items()]
        else:
            flat.append((key, value))
    shown = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in flat if isinstance(v, (int, float, str)) and not isinstance(v, bool)]
    return "  ".join(shown[:limit])


def cmd_plan(args) -> int:
    from tinystories.io.rundir import RunDir
    from tinystories.pipeline.plan import make_plan, render

    rundir = RunDir(args.run_dir) if args.run_dir is not None and args.run_dir.is_dir() else None
    print(render(make_plan(resolve_config(args), rundir, train_flops=args.train_flops)))
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


def cmd_export(args) -> int:
    from tinystories.io.rundir import RunDir
    from tinystories.publish.export import publish

    out, url = publish(RunDir(args.run_dir), args.model, args.out, license=args.license, repo_id=args.push_to_hub, private=args.private)
    print(f"export: {args.model} -> {out}" + (f", uploaded to {url}" if url else ""))
    return 0


def cmd_compare(args) -> int:
    from tinystories.eval.compare import compare_runs

    path = compare_runs(args.runs, args.out)
    print(f"compare: {len(args.runs)} runs -> {path}")
    return 0


def cmd_tryout(args) -> int:
    if args.command == "sample":
        from tinystories.tryout.terminal import run_sample

        return run_sample(args)
    from tinystories.tryout.serve import run_server

    return run_server(args.run_dir, resolve_config(args), host=args.host, port=args.port, device=args.device)


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
        if args.command == "plan":
            return cmd_plan(args)
        if args.command in ("sample", "serve"):
            return cmd_tryout(args)
        if args.command == "export":
            return cmd_export(args)
        if args.command == "compare":
            return cmd_compare(args)
        return cmd_stage(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # A path fault no check foresaw (a directory where a file should be, a full disk):
        # one line naming the path, never a traceback.
        where = exc.filename or "a file"
        print(f"error: {where}: {exc.strerror or exc}; fix that path (or free disk space) and rerun the same command", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 130


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
