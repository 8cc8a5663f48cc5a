"""The training loop shared by pretraining and SFT: resumable, data-parallel, logged.

    from tinystories.train.trainer import TrainSettings, train
    metrics = train(model, settings, out_dir, train_source, val_source, tokenizer_dir=..., ...)

A caller provides the model (tinystories.train.model.FastGPTNeo), the settings, and two batch sources:
- `train_source.batch(step, micro, rank, world) -> (input_ids, labels)`, LongTensors [B, T],
  labels in Hugging Face convention (same length as input_ids, -100 = not trained, shifted
  inside the loss). It must be a pure function of its arguments: resuming at step N then needs
  no saved iterator, on any number of ranks (pretrain samples windows from a generator seeded
  by (seed, rank, step, micro); SFT can index a shuffled list the same way).
- `val_source.batch(i) -> (input_ids, labels)` for i in range(eval_batches): the same batches
  at every evaluation so the validation curve compares like with like.

Runs under accelerate's `Accelerator`, so `torchrun`/`accelerate launch` over N processes
trains data-parallel unchanged: only the main process writes files and logs, and gradients
sync only on the last micro-step of an accumulation (the others run under `no_sync`, since an
all-reduce per micro-step would just repeat the same communication grad_accum times).

Files in `out_dir` (a Hugging Face save_pretrained directory once the first checkpoint lands):
config.json, model.safetensors, tokenizer files, train_state.pt (optimizer, scheduler, step,
RNG states, data position, tokens seen, settings), metrics.jsonl (one record per logged step),
tb/ (TensorBoard). A checkpoint is first written whole into a sibling temp dir with a
completion marker and then moved in with train_state.pt last; a kill during the move is
rolled forward on the next start. A rerun resumes from the last checkpoint (metrics past it
are cut so the curve has no duplicate steps); a finished run is not trained again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tinystories.errors import UserError
from tinystories.io.rundir import JsonlWriter, read_jsonl, write_text

log = logging.getLogger("tinystories.train.trainer")

STATE_FILE = "train_state.pt"
METRICS_FILE = "metrics.jsonl"
COMPLETE_MARKER = ".complete"
# Settings that change the optimisation trajectory: a checkpoint made with other values is
# not resumed silently (the other fields, e.g. eval_interval or compile, may change freely).
TRAJECTORY_FIELDS = ("max_steps", "batch_size", "grad_accum", "lr", "min_lr", "warmup_steps", "schedule", "weight_decay", "grad_clip", "dtype", "seed", "context")


@dataclass
class TrainSettings:
    max_steps: int = 1000  # optimizer steps
    batch_size: int = 8  # sequences per micro-batch per process
    grad_accum: int = 1  # micro-batches per optimizer step
    context: int = 512  # sequence length of a batch (recorded; sources produce it)
    lr: float = 1e-3  # peak learning rate
    min_lr: float = 1e-4  # final learning rate of the cosine schedule
    warmup_steps: int = 100  # linear warmup from 0
    schedule: str = "cosine"  # cosine | constant (after warmup)
    weight_decay: float = 0.1  # AdamW decay on matmul weights (not norms, biases, embeddings)
    grad_clip: float = 1.0  # max global gradient norm (0 = off)
    eval_interval: int = 100  # steps between validation passes (0 = only at the end)
    eval_batches: int = 20  # validation batches per pass
    checkpoint_interval: int = 200  # steps between checkpoints (0 = only at the end)
    log_interval: int = 10  # steps between metrics.jsonl records (the final step is always logged)
    dtype: str = "auto"  # bf16 | fp32 | auto (bf16 where the hardware supports it)
    compile: bool = False  # torch.compile the model (falls back to eager if compiling fails)
    seed: int = 0  # model init and data sampling seed

    def trajectory(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in TRAJECTORY_FIELDS}


class TrainSource(Protocol):
    def batch(self, step: int, micro: int, rank: int, world: int): ...


class ValSource(Protocol):
    def batch(self, i: int): ...


def lr_at(step: int, s: TrainSettings) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warmup, then cosine or constant."""
    if s.warmup_steps > 0 and step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    if s.schedule == "constant":
        return s.lr
    span = max(1, s.max_steps - s.warmup_steps)
    progress = min(1.0, (step - s.warmup_steps) / span)
    return s.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (s.lr - s.min_lr)


def bf16_supported(device) -> bool:
    import torch

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        # Without native bf16 (AVX512-BF16/AMX) the casts cost more than the GEMMs save.
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def resolve_dtype(dtype: str, device) -> str:
    if dtype == "auto":
        return "bf16" if bf16_supported(device) else "fp32"
    return dtype


# --- checkpoint files --------------------------------------------------------------------------


def _tmp_dir(out_dir: Path) -> Path:
    return out_dir.parent / f".{out_dir.name}.ckpt-tmp"


def discard_checkpoint(out_dir: Path) -> None:
    """Remove a run's directory and any half-moved checkpoint (for --force)."""
    shutil.rmtree(_tmp_dir(out_dir), ignore_errors=True)
    shutil.rmtree(out_dir, ignore_errors=True)


def recover_checkpoint(out_dir: Path) -> None:
    """Finish or discard a checkpoint write interrupted by a kill."""
    tmp = _tmp_dir(out_dir)
    if not tmp.exists():
        return
    if (tmp / COMPLETE_MARKER).exists():
        _move_in(tmp, out_dir)
    else:
        shutil.rmtree(tmp, ignore_errors=True)


def _move_in(tmp: Path, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    names = sorted(p.name for p in tmp.iterdir() if p.name not in (COMPLETE_MARKER, STATE_FILE))
    # train_state.pt goes last: while it still names the previous step, a kill here is rolled
    # forward from the temp dir (which keeps its marker until every file is in place).
    for name in [*names, STATE_FILE]:
        src = tmp / name
        if src.exists():
            os.replace(src, out_dir / name)
    shutil.rmtree(tmp, ignore_errors=True)


def write_checkpoint(model, out_dir: Path, state: dict, tokenizer_dir, eos_token_id, extra: dict) -> None:
    import torch

    from tinystories.train.model import save_hf

    tmp = _tmp_dir(out_dir)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_hf(model, tmp, tokenizer_dir=tokenizer_dir, eos_token_id=eos_token_id, extra=extra)
    torch.save(state, tmp / STATE_FILE)
    for p in tmp.iterdir():
        with open(p, "rb") as fh:
            os.fsync(fh.fileno())
    with open(tmp / COMPLETE_MARKER, "w") as fh:
        fh.write(str(state["step"]))
        fh.flush()
        os.fsync(fh.fileno())
    _move_in(tmp, out_dir)


def load_state(out_dir: Path) -> dict | None:
    import torch

    path = out_dir / STATE_FILE
    if not path.exists():
        return None
    # weights_only=False: the state holds numpy/python RNG states, written by us.
    return torch.load(path, map_location="cpu", weights_only=False)


def truncate_metrics(path: Path, last_step: int) -> None:
    """Drop records past the checkpoint step so a resumed curve has no duplicate steps."""
    if not path.exists():
        return
    keep = [r for r in read_jsonl(path) if r.get("step", 0) <= last_step]
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in keep))


def check_resume(state: dict, settings: TrainSettings, shape_dict: dict, out_dir: Path, stage: str) -> None:
    if state.get("shape") != shape_dict:
        raise UserError(
            f"{out_dir}: holds a checkpoint of another shape ({_fmt(state.get('shape'))}) than requested ({_fmt(shape_dict)}); "
            f"use --force {stage} to start over or another --run-dir"
        )
    saved = state.get("settings", {})
    changed = [k for k in TRAJECTORY_FIELDS if k in saved and saved[k] != getattr(settings, k)]
    if changed:
        what = ", ".join(f"{k} {saved[k]!r} -> {getattr(settings, k)!r}" for k in changed)
        raise UserError(f"{out_dir}: checkpoint was trained with other settings ({what}); use --force {stage} to start over or another --run-dir")


def _fmt(d) -> str:
    if not isinstance(d, dict):
        return repr(d)
    return ", ".join(f"{k}={v}" for k, v in d.items())


# --- the loop ----------------------------------------------------------------------------------


def train(
    model,
    settings: TrainSettings,
    out_dir: str | Path,
    train_source: TrainSource,
    val_source: ValSource | None,
    *,
    tokenizer_dir: str | Path | None = None,
    eos_token_id: int | None = None,
    bytes_per_token: tuple[float, float] = (0.0, 0.0),
    description: str = "train",
    stage: str = "pretrain",
    extra: dict | None = None,
) -> dict:
    """Train `model` (a FastGPTNeo) to settings.max_steps, resuming from out_dir if it holds a
    checkpoint; return the final metrics. `bytes_per_token` = (train, val) UTF-8 bytes per token
    of the data, for bits per byte."""
    import numpy as np
    import torch
    from accelerate import Accelerator

    from tinystories.progress import progress_bar

    out_dir = Path(out_dir)
    s = settings
    acc = Accelerator(cpu=not _has_accelerator())
    device = acc.device
    rank, world = acc.process_index, acc.num_processes
    is_main = acc.is_main_process
    dtype = resolve_dtype(s.dtype, device)
    shape_dict = model.shape.to_dict()

    if is_main:
        recover_checkpoint(out_dir)
    acc.wait_for_everyone()
    state = load_state(out_dir)
    if state is not None:
        check_resume(state, s, shape_dict, out_dir, stage)
        if state.get("finished") and state["step"] >= s.max_steps:
            log.info("%s: already finished at step %d; skipping", out_dir, state["step"])
            return dict(state.get("final_metrics", {}), skipped=True)

    torch.manual_seed(s.seed)
    random.seed(s.seed)
    np.random.seed(s.seed)
    start_step, tokens_seen, train_time = 0, 0, 0.0
    if state is not None:
        from safetensors.torch import load_file

        from tinystories.train.model import from_hf_state_dict

        sd = load_file(str(out_dir / "model.safetensors"))
        sd.setdefault("lm_head.weight", sd["transformer.wte.weight"])
        model.load_state_dict(from_hf_state_dict(sd, model.shape.num_layers), strict=True)
        start_step, tokens_seen, train_time = state["step"], state["tokens_seen"], state.get("train_time_s", 0.0)
    model.to(device)

    from tinystories.train.model import param_groups

    fused = device.type in ("cuda", "cpu")
    try:
        opt = torch.optim.AdamW(param_groups(model, s.weight_decay), lr=s.lr, betas=(0.9, 0.95), eps=1e-8, fused=fused)
    except (RuntimeError, TypeError):
        opt = torch.optim.AdamW(param_groups(model, s.weight_decay), lr=s.lr, betas=(0.9, 0.95), eps=1e-8, foreach=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_at(step, s) / s.lr if s.lr else 0.0)
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])

    raw_model = model
    fwd_model = compile_model(model, s, dtype, device, train_source, rank, world) if s.compile else model
    # The scheduler is stepped by us once per optimizer step, not prepared: accelerate's
    # wrapper would step it once per process.
    fwd_model, opt = acc.prepare(fwd_model, opt)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if dtype == "bf16" else contextlib.nullcontext

    bpt_train, bpt_val = bytes_per_token
    writer = tb = None
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        truncate_metrics(out_dir / METRICS_FILE, start_step)
        if start_step == 0:
            # Events of a run killed before its first checkpoint would duplicate steps.
            shutil.rmtree(out_dir / "tb", ignore_errors=True)
        writer = JsonlWriter(out_dir / METRICS_FILE, sync_every=10)
        from torch.utils.tensorboard import SummaryWriter

        # purge_step drops TensorBoard events past the checkpoint, like truncate_metrics.
        tb = SummaryWriter(str(out_dir / "tb"), purge_step=start_step + 1 if start_step else None)
    if is_main:
        log.info("%s: %d process(es), device %s, dtype %s, compile %s, start at step %d", description, world, device, dtype, s.compile, start_step)

    def to_bpb(nats: float, bpt: float) -> float:
        return nats / bpt / math.log(2) if bpt else float("nan")

    def evaluate() -> float:
        if val_source is None or s.eval_batches <= 0:
            return float("nan")
        fwd_model.eval()
        total = torch.zeros(2, dtype=torch.float64, device=device)
        with torch.no_grad(), autocast():
            for i in range(rank, s.eval_batches, world):
                x, y = val_source.batch(i)
                x, y = x.to(device), y.to(device)
                loss_sum = raw_model(x, labels=y, reduction="sum")
                total[0] += loss_sum.double()
                total[1] += (y[:, 1:] != -100).sum()
        fwd_model.train()
        total = acc.reduce(total, reduction="sum") if world > 1 else total
        return (total[0] / total[1].clamp(min=1)).item()

    def save(step: int, finished: bool, final_metrics: dict | None = None) -> None:
        if is_main:
            st = {
                "step": step,
                "tokens_seen": tokens_seen,
                "train_time_s": train_time,
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
                # The data position: sources are pure functions of (step, micro, rank), so the
                # step is the position; seed and world size make it reproducible.
                "data": {"next_step": step, "seed": s.seed, "world_size": world, "micro_batches_per_step": s.grad_accum},
                "shape": shape_dict,
                "settings": dataclasses.asdict(s),
                "finished": finished,
                "final_metrics": final_metrics or {},
            }
            write_checkpoint(raw_model, out_dir, st, tokenizer_dir, eos_token_id, dict(extra or {}, step=step, dtype=dtype))
        acc.wait_for_everyone()

    debug_dir = os.environ.get("TINYSTORIES_DEBUG_DIR")
    fwd_model.train()
    step = start_step
    last_train, last_val = float("nan"), float("nan")
    window_t, window_tokens = time.perf_counter(), 0
    tok_s = 0.0
    with progress_bar(description, total=s.max_steps, unit="step") if is_main else contextlib.nullcontext() as bar:
        if bar is not None:
            bar.set(start_step)
        while step < s.max_steps:
            t0 = time.perf_counter()
            batches = [train_source.batch(step, m, rank, world) for m in range(s.grad_accum)]
            # Normalise by the tokens of the whole accumulation so every trained token weighs
            # the same however labels are masked across micro-batches (matters for SFT).
            n_tokens = sum(int((y[:, 1:] != -100).sum()) for _, y in batches)
            if n_tokens == 0:
                raise UserError(f"{description}: step {step} has no trained tokens (every label is -100); check the data")
            loss_acc = 0.0
            for m, (x, y) in enumerate(batches):
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                sync = m == s.grad_accum - 1
                with (contextlib.nullcontext() if sync or world == 1 else acc.no_sync(fwd_model)):
                    with autocast():
                        loss = fwd_model(x, labels=y, reduction="sum") / n_tokens
                    acc.backward(loss)
                loss_acc += loss.item()
            grad_norm = acc.clip_grad_norm_(fwd_model.parameters(), s.grad_clip) if s.grad_clip > 0 else None
            lr = sched.get_last_lr()[0]
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            # Input tokens processed (padding included: it costs compute); exact for fixed-length
            # pretraining windows, rank 0's count times the world for variable-length SFT batches.
            step_tokens = sum(int(x.numel()) for x, _ in batches) * world
            tokens_seen += step_tokens
            dt = time.perf_counter() - t0
            train_time += dt
            window_tokens += step_tokens
            last_train = loss_acc

            if debug_dir:
                _debug_dump(debug_dir, rank, world, step, raw_model)

            do_eval = step == s.max_steps or (s.eval_interval > 0 and step % s.eval_interval == 0)
            do_log = do_eval or step == s.max_steps or step % max(1, s.log_interval) == 0
            if do_log:
                if world > 1:
                    t = torch.tensor([last_train], dtype=torch.float64, device=device)
                    last_train = (acc.reduce(t, reduction="sum") / world).item()
                now = time.perf_counter()
                tok_s = window_tokens / max(1e-9, now - window_t)
                window_t, window_tokens = now, 0
                rec = {
                    "step": step,
                    "train_loss": round(last_train, 6),
                    "train_bpb": round(to_bpb(last_train, bpt_train), 6),
                    "lr": lr,
                    "tokens": tokens_seen,
                    "tok_s": round(tok_s, 1),
                    "grad_norm": round(float(grad_norm), 4) if grad_norm is not None else None,
                    "time_s": round(train_time, 2),
                }
                if do_eval:
                    last_val = evaluate()
                    rec["val_loss"] = round(last_val, 6)
                    rec["val_bpb"] = round(to_bpb(last_val, bpt_val), 6)
                    # Evaluation time is not training throughput.
                    window_t = time.perf_counter()
                if is_main:
                    writer.write(rec)
                    for k in ("train_loss", "train_bpb", "lr", "tok_s", "val_loss", "val_bpb"):
                        if k in rec and rec[k] is not None and not (isinstance(rec[k], float) and math.isnan(rec[k])):
                            tb.add_scalar(k, rec[k], step)
                    log.info("%s step %d %s", description, step, json.dumps(rec))
            if bar is not None:
                bar.advance(1, loss=f"{last_train:.3f}", tok_s=f"{tok_s:.0f}")
            if step < s.max_steps and s.checkpoint_interval > 0 and step % s.checkpoint_interval == 0:
                save(step, finished=False)
                window_t = time.perf_counter()  # checkpoint time is not training throughput

    final = {
        "train_loss": round(last_train, 6),
        "val_loss": round(last_val, 6),
        "val_bpb": round(to_bpb(last_val, bpt_val), 6),
        "tokens_seen": tokens_seen,
        "tokens_per_s": round(tokens_seen / train_time, 1) if train_time else 0.0,
        "steps": step,
        "train_time_s": round(train_time, 2),
        "dtype": dtype,
        "world_size": world,
    }
    if start_step < s.max_steps:
        save(step, finished=True, final_metrics=final)
    if is_main:
        writer.close()
        tb.close()
    return final


def _has_accelerator() -> bool:
    import torch

    return torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())


def process_state():
    """accelerate's process state. On a CPU-only machine accelerate only treats a torchrun/mpirun
    launch as multi-process (gloo) when asked for cpu=True, so ask for it exactly then."""
    from accelerate import PartialState

    return PartialState(cpu=not _has_accelerator())


def _debug_dump(debug_dir: str, rank: int, world: int, step: int, model) -> None:
    """Per-rank proof for the distributed test: steps taken and a checksum of the weights."""
    import hashlib

    import torch

    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in sorted(model.state_dict().items()):
            h.update(name.encode())
            h.update(p.detach().to(torch.float32).cpu().contiguous().numpy().tobytes())
    path = Path(debug_dir) / f"rank{rank}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"rank": rank, "world": world, "step": step, "weights_sha256": h.hexdigest(), "pid": os.getpid()}))
    os.replace(tmp, path)


def compile_model(model, s: TrainSettings, dtype: str, device, train_source, rank: int, world: int):
    """torch.compile the model and prove it with one forward/backward on a real batch shape;
    fall back to eager (with a warning) when the compiler is missing or fails."""
    import torch

    try:
        compiled = torch.compile(model)
        x, y = train_source.batch(0, 0, rank, world)
        ctx = torch.autocast(device.type, dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext()
        with ctx:
            # Same call signature as the training loop, so the graph compiled here is reused.
            loss = compiled(x.to(device), labels=y.to(device), reduction="sum") / max(1, int((y[:, 1:] != -100).sum()))
        loss.backward()
        model.zero_grad(set_to_none=True)
        return compiled
    except Exception as exc:  # noqa: BLE001 - any compiler failure means: run eager
        log.warning("torch.compile failed (%s); training eagerly", str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
        model.zero_grad(set_to_none=True)
        return model
