"""A tiny end-to-end run on one device: tokenizer -> prepare -> pretrain (killed, resumed) -> sft -> complete.

    python3 benchmarks/gpu_e2e.py --device cuda
    .venv/bin/python benchmarks/gpu_e2e.py --device cpu          # what tests/test_gpu_check.py runs

Needs no LLM and nothing the GPU machine lacks: the stories are made from templates by a seeded
generator and written straight to data/tinystories_dataset.txt (the file `generate`/`import`
write; those stages need wordfreq and datasketch), and the instruction pairs straight to
data/instruction_dataset.jsonl (the file `instruct-data` writes with an LLM). Every stage
after that is the real `tinystories` command in a subprocess, as a user runs it.

The training stages have no device option: the trainer takes the GPU when one is visible, so
`--device cpu` hides CUDA from the subprocesses (CUDA_VISIBLE_DEVICES=""), and `--device cuda`
requires one and checks that the trainer's log names a cuda device. `complete` gets
complete.device.

The resume check: the first `pretrain` is SIGKILLed as soon as its first checkpoint
(train_state.pt) lands, well before max_steps; the rerun of the same command must pick up from
that checkpoint (its log says "start at step N", N > 0), finish at max_steps, and leave
metrics.jsonl with every logged step once, in order.

Prints one JSON line ({"check": "e2e", "ok": ..., per-stage rc and wall_s, the kill and resume
steps, losses, completions written, "failures": [...]}); exits 1 when something failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import typing
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

EOS = "<|endoftext|>"
MARKER = ".gpu_e2e"  # written into run dirs this script made, so a rerun may wipe them
SIZE = "e2e"
# Per device: (hidden_size, num_layers, num_heads, context, batch_size, max_steps,
# checkpoint_interval). On a GPU the model is bigger so that the steps after the first
# checkpoint take seconds, time enough to kill the run in the middle.
DEFAULTS = {
    "cpu": dict(hidden=32, layers=2, heads=2, context=64, batch=8, max_steps=60, checkpoint_interval=10),
    "cuda": dict(hidden=256, layers=4, heads=8, context=128, batch=32, max_steps=400, checkpoint_interval=50),
}

NAMES = ["Tom", "Lily", "Ben", "Mia", "Sam", "Anna", "Max", "Sue", "Tim", "Lucy"]
ANIMALS = ["cat", "dog", "bird", "bunny", "duck", "frog", "bear", "fish"]
THINGS = ["ball", "kite", "boat", "hat", "box", "cake", "book", "toy", "car", "drum"]
PLACES = ["park", "garden", "beach", "forest", "house", "school", "farm", "lake"]
ADJECTIVES = ["red", "big", "small", "happy", "shiny", "soft", "funny", "blue"]
VERBS = [("play", "played"), ("jump", "jumped"), ("run", "ran"), ("sing", "sang"), ("dance", "danced")]


def make_story(rng: random.Random) -> tuple[str, list[str]]:
    """One short story in the TinyStories register and the words it was built around."""
    name, friend = rng.sample(NAMES, 2)
    animal, thing, place = rng.choice(ANIMALS), rng.choice(THINGS), rng.choice(PLACES)
    adj, adj2 = rng.sample(ADJECTIVES, 2)
    verb, past = rng.choice(VERBS)
    sentences = [
        f"Once upon a time, there was a {adj} {animal} named {name}.",
        f"{name} liked to {verb} in the {place} with a {adj2} {thing}.",
        f"One day, {name} met {friend} near the {place}.",
        f'"Look at my {thing}!" said {name}. "Do you want to {verb} with me?"',
        f"{friend} smiled and said, \"Yes, I do!\"",
        f"They {past} all day and they were very happy.",
    ]
    if rng.random() < 0.5:
        sentences.insert(3, f"The {thing} was {adj2} and {rng.choice(ADJECTIVES)}.")
    return " ".join(sentences), [thing, verb, adj2]


def write_data(run: Path, n_stories: int, seed: int) -> None:
    """data/tinystories_dataset.txt and data/instruction_dataset.jsonl, as generate and instruct-data write them."""
    rng = random.Random(seed)
    data = run / "data"
    data.mkdir(parents=True, exist_ok=True)
    with open(data / "tinystories_dataset.txt", "w", encoding="utf-8") as txt, open(data / "instruction_dataset.jsonl", "w", encoding="utf-8") as pairs:
        for i in range(n_stories):
            story, words = make_story(rng)
            txt.write(story + "\n" + EOS + "\n")
            pairs.write(json.dumps({"id": f"e{i:07d}", "instruction": f"Words: {', '.join(words)}\nFeatures: Dialogue", "story": story}) + "\n")


def section(config_cls: type, options: dict, where: str) -> dict:
    """`options` laid out as `config_cls` wants them: a key the class has goes at the top, a key
    of one of its nested dataclass fields (e.g. pretrain.train.max_steps) under that field, so the
    script follows the config layout whichever of the two it is."""
    hints = typing.get_type_hints(config_cls)
    top = {f.name for f in dataclasses.fields(config_cls)}
    nested = {f.name: {g.name for g in dataclasses.fields(hints[f.name])} for f in dataclasses.fields(config_cls) if dataclasses.is_dataclass(hints.get(f.name))}
    out: dict = {}
    for key, value in options.items():
        if key in top:
            out[key] = value
            continue
        owner = next((name for name, keys in nested.items() if key in keys), None)
        if owner is None:
            raise SystemExit(f"gpu_e2e: {where}.{key} is no option of {config_cls.__module__}.Config any more; update benchmarks/gpu_e2e.py")
        out.setdefault(owner, {})[key] = value
    return out


def write_config(run: Path, args) -> Path:
    import yaml

    from tinystories.eval import complete
    from tinystories.train import prepare, pretrain, sft, tokenizer

    shape = {"hidden_size": args.hidden, "num_layers": args.layers, "num_heads": args.heads, "window_size": max(2, args.context // 4), "max_position": 256}
    config = {
        "seed": 11,
        "tokenizer": section(tokenizer.Config, {"vocab_size": 600, "min_frequency": 2}, "tokenizer"),
        "prepare": section(prepare.Config, {"val_fraction": 0.1}, "prepare"),
        "pretrain": section(
            pretrain.Config,
            {
                "sizes": [SIZE], "shapes": {SIZE: shape}, "context": args.context, "batch_size": args.batch,
                "max_steps": args.max_steps, "warmup_steps": 5, "lr": 3e-3, "min_lr": 3e-4,
                "eval_interval": args.max_steps // 2, "eval_batches": 2, "checkpoint_interval": args.checkpoint_interval,
                "log_interval": 5, "dtype": "auto", "compile": False,
            },
            "pretrain",
        ),
        "sft": section(
            sft.Config,
            {
                "epochs": 1.0, "max_steps": args.sft_steps, "batch_size": 8, "context": 192, "lr": 1e-3, "min_lr": 1e-4,
                "eval_interval": args.sft_steps, "checkpoint_interval": 0, "log_interval": 5, "dtype": "auto",
                "val_fraction": 0.1, "samples": 1, "sample_tokens": 16,
            },
            "sft",
        ),
        "complete": section(
            complete.Config,
            {"samples": 1, "max_new_tokens": 24, "batch_size": 8, "device": args.device, "max_beginnings": 2, "max_instructions": 2},
            "complete",
        ),
    }
    path = run / "e2e.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


class Runner:
    """Runs `tinystories STAGE` in a subprocess with this device's environment; keeps the record."""

    def __init__(self, run: Path, config: Path, device: str, timeout: float):
        self.run, self.config, self.timeout = run, config, timeout
        env = dict(os.environ, TINYSTORIES_NO_PROGRESS="1", PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), *filter(None, [env.get("PYTHONPATH")])])
        if device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""
        self.env = env
        self.stages: dict[str, dict] = {}
        self.failures: list[str] = []

    def command(self, stage: str) -> list[str]:
        return [sys.executable, "-m", "tinystories.cli", stage, "--run-dir", str(self.run), "--config", str(self.config)]

    def log_tail(self, stage: str) -> str:
        log = self.run / "logs" / f"{stage}.log"
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines() if log.exists() else []
        return " | ".join(lines[-3:])[-600:]

    def stage(self, stage: str, key: str | None = None) -> bool:
        """Run a stage to its end; record rc and wall time under `key` (default: the stage name)."""
        key = key or stage
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(self.command(stage), env=self.env, capture_output=True, text=True, timeout=self.timeout)
            rc, out = proc.returncode, (proc.stdout + proc.stderr)
        except subprocess.TimeoutExpired as exc:
            rc, out = "timeout", str(exc.stdout or "") + str(exc.stderr or "")
        self.stages[key] = {"rc": rc, "wall_s": round(time.perf_counter() - t0, 2)}
        if rc != 0:
            tail = out.strip().splitlines()[-3:] if out.strip() else [self.log_tail(stage)]
            self.failures.append(f"{key}: rc {rc}: {' | '.join(tail)[-600:]}")
        return rc == 0

    def kill_after_checkpoint(self, stage: str, state_file: Path, key: str) -> int | None:
        """Start the stage, SIGKILL it the moment `state_file` exists; the checkpoint's step."""
        state_file.unlink(missing_ok=True)
        t0 = time.perf_counter()
        # Output to a file, not a pipe: nobody reads it while we poll, and a full pipe would stall the run.
        with tempfile.TemporaryFile("w+", encoding="utf-8") as out_file:
            # Same process group as this script: a caller that stops us stops the run too.
            proc = subprocess.Popen(self.command(stage), env=self.env, stdout=out_file, stderr=subprocess.STDOUT, text=True)
            deadline = t0 + self.timeout
            while not state_file.exists() and proc.poll() is None and time.perf_counter() < deadline:
                time.sleep(0.01)
            killed = proc.poll() is None
            if killed:
                proc.send_signal(signal.SIGKILL)  # no chance to clean up, as after a power cut
            proc.wait()
            out_file.seek(0)
            out = out_file.read()
        self.stages[key] = {"rc": proc.returncode, "wall_s": round(time.perf_counter() - t0, 2), "killed": killed}
        if not killed:
            self.failures.append(f"{key}: ended (rc {proc.returncode}) before it could be killed after a checkpoint: {' | '.join(out.strip().splitlines()[-3:])[-600:]}")
            return None
        if not state_file.exists():
            self.failures.append(f"{key}: no checkpoint within {self.timeout:.0f} s; {self.log_tail(stage)}")
            return None
        return checkpoint_step(state_file.parent)


def checkpoint_step(out_dir: Path) -> int | None:
    info = out_dir / "tinystories.json"
    return json.loads(info.read_text(encoding="utf-8")).get("step") if info.exists() else None


def trainer_start(log: Path) -> tuple[str | None, int | None]:
    """(device, start step) from the trainer's last 'device X, ..., start at step N' log line."""
    text = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
    starts = re.findall(r"device (\S+?),.*?start at step (\d+)", text)
    if not starts:
        return None, None
    device, step = starts[-1]
    return device, int(step)


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def check_pretrain(run: Path, args, killed_step: int | None, result: dict, failures: list[str]) -> None:
    out = run / "pretrain" / SIZE
    device, start = trainer_start(run / "logs" / "pretrain.log")
    steps = [r["step"] for r in read_jsonl(out / "metrics.jsonl")]
    result.update(pretrain_device=device, resumed_from_step=start, pretrain_final_step=checkpoint_step(out), pretrain_logged_steps=len(steps))
    if killed_step is not None and not 0 < killed_step < args.max_steps:
        failures.append(f"pretrain: killed at checkpoint step {killed_step}, not strictly inside 0..{args.max_steps}")
    if start is None:
        failures.append("pretrain: the trainer's log has no 'start at step N' line; update trainer_start() in benchmarks/gpu_e2e.py")
    elif killed_step is not None and start < killed_step:
        failures.append(f"pretrain: the rerun started at step {start}, before the checkpoint at step {killed_step}: it did not resume")
    if checkpoint_step(out) != args.max_steps:
        failures.append(f"pretrain: final checkpoint at step {checkpoint_step(out)}, expected {args.max_steps}")
    if steps != sorted(set(steps)) or not steps or steps[-1] != args.max_steps:
        failures.append(f"pretrain: metrics.jsonl steps are not each logged step once in order up to {args.max_steps}: {steps}")
    final = read_jsonl(out / "metrics.jsonl")[-1:] or [{}]
    result["pretrain_val_loss"] = final[0].get("val_loss")
    check_device("pretrain", device, args.device, failures)


def check_device(stage: str, seen: str | None, wanted: str, failures: list[str]) -> None:
    if seen is not None and not seen.startswith(wanted):
        failures.append(f"{stage}: ran on {seen}, not {wanted}")


def check_sft_and_complete(run: Path, args, result: dict, failures: list[str]) -> None:
    out = run / "sft" / SIZE
    device, _ = trainer_start(run / "logs" / "sft.log")
    records = read_jsonl(out / "metrics.jsonl")
    result.update(sft_device=device, sft_steps=checkpoint_step(out), sft_val_loss=(records[-1:] or [{}])[0].get("val_loss"))
    if not (out / "model.safetensors").exists():
        failures.append(f"sft: no {out / 'model.safetensors'}")
    check_device("sft", device, args.device, failures)
    rows = read_jsonl(run / "eval" / "completions.jsonl")
    models = sorted({r.get("model") for r in rows})
    result.update(completions=len(rows), completion_models=models, completion_tokens=sum(int(r.get("completion_tokens") or 0) for r in rows))
    if not any(str(m).startswith("pretrain/") for m in models) or not any(str(m).startswith("sft/") for m in models):
        failures.append(f"complete: expected completions of pretrain/{SIZE} and sft/{SIZE}, got models {models}")


def prepare_run_dir(path: str | None) -> Path:
    if path is None:
        run = Path(tempfile.mkdtemp(prefix="gpu_e2e_")) / "run"
    else:
        run = Path(path)
        if run.exists() and any(run.iterdir()):
            if not (run / MARKER).exists():
                raise SystemExit(f"--run-dir {run}: exists and was not made by this script; name a new directory")
            shutil.rmtree(run)
    run.mkdir(parents=True, exist_ok=True)
    (run / MARKER).write_text("made by benchmarks/gpu_e2e.py; safe to delete\n", encoding="utf-8")
    return run


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    p.add_argument("--run-dir", default=None, help="where to build the run (default: a new temp dir, removed unless --keep)")
    p.add_argument("--keep", action="store_true", help="keep the run dir")
    p.add_argument("--stories", type=int, default=300)
    p.add_argument("--sft-steps", type=int, default=10)
    p.add_argument("--stage-timeout", type=float, default=180.0, help="seconds any one stage may take")
    for key in DEFAULTS["cpu"]:
        p.add_argument(f"--{key.replace('_', '-')}", dest=key, type=int, default=None, help=f"default {DEFAULTS['cpu'][key]} on cpu, {DEFAULTS['cuda'][key]} on cuda")
    args = p.parse_args(argv)
    for key, value in DEFAULTS[args.device].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    result: dict = {"check": "e2e", "device": args.device}
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print(json.dumps({**result, "ok": False, "failures": ["--device cuda: no CUDA device visible"]}))
            return 1
    t0 = time.perf_counter()
    run = prepare_run_dir(args.run_dir)
    write_data(run, args.stories, seed=5)
    runner = Runner(run, write_config(run, args), args.device, args.stage_timeout)
    failures = runner.failures
    ok = runner.stage("tokenizer") and runner.stage("prepare")
    if ok:
        killed = runner.kill_after_checkpoint("pretrain", run / "pretrain" / SIZE / "train_state.pt", "pretrain_killed")
        result["killed_at_checkpoint_step"] = killed
        if runner.stage("pretrain", "pretrain_resumed"):
            check_pretrain(run, args, killed, result, failures)
            if runner.stage("sft") and runner.stage("complete"):
                check_sft_and_complete(run, args, result, failures)
    result.update(stages=runner.stages, ok=not failures, failures=failures, wall_s=round(time.perf_counter() - t0, 1))
    if args.keep or args.run_dir:
        result["run_dir"] = str(run)
    else:
        shutil.rmtree(run.parent, ignore_errors=True)
    print(json.dumps(result))
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
