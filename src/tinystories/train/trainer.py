"""The training loop shared by pretraining and SFT: resumable, data-parallel, logged.

    from tinystories.train.trainer import train
    metrics = train(model, args, seed, out_dir, train_source, val_source, token_bytes=..., ...)

A caller provides the model (tinystories.train.model.FastGPTNeo), the resolved settings
(tinystories.train.args.TrainArgs.resolved) and two batch sources:
- `train_source.batch(step, micro, rank, world) -> (input_ids, labels)`, LongTensors [B, T],
  labels in Hugging Face convention (same length as input_ids, -100 = not trained, shifted
  inside the loss). It must be a pure function of its arguments: resuming at step N then needs
  no saved iterator, on any number of ranks (pretrain samples windows from a generator seeded
  by (seed, rank, step, micro); SFT can index a shuffled list the same way).
- `val_source.batch(i) -> (input_ids, labels)` for i in range(eval_batches): the same batches
  at every evaluation so the validation curve compares like with like.

`token_bytes[id]` is the UTF-8 length of each token (tinystories.train.bpe.token_byte_lengths):
bits per byte divide the loss by the bytes of exactly the tokens it was computed on.

The steps: `setup` (accelerator, resume, optimizer) -> `fit` (optimizer steps, logging) with
`validate` and `checkpoint` on their intervals. Runs under accelerate's `Accelerator`, so
`torchrun`/`accelerate launch` over N processes trains data-parallel unchanged: only the main
process writes files and logs, and gradients sync only on the last micro-step of an
accumulation (the others run under `no_sync`, since an all-reduce per micro-step would just
repeat the same communication grad_accum times).

Files in `out_dir` (a Hugging Face save_pretrained directory once the first checkpoint lands):
config.json, model.safetensors, tokenizer files, train_state.pt (optimizer, scheduler, step,
RNG states, data position, tokens seen, settings), metrics.jsonl (one record per logged step,
every row with the same keys), tb/ (TensorBoard: `train/...` and `val/...` scalars, and
`samples/N` text at each validation pass); see training_log.py for both logs and
checkpoint_files.py for how a checkpoint is written. A rerun resumes
from the last checkpoint (metrics past it are cut so the curve has no duplicate steps); a
finished run is not trained again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import time
from pathlib import Path
from typing import Protocol

from tinystories.errors import UserError
from tinystories.train.args import TRAJECTORY_FIELDS, TrainArgs
from tinystories.train.checkpoint_files import load_state, load_weights, recover_checkpoint, write_checkpoint
from tinystories.train.hardware import autocast_context, bf16_supported, choose_dtype, has_accelerator, make_optimizer
from tinystories.train.training_log import TextSamples, TrainingLog, metrics_row

log = logging.getLogger("tinystories.train.trainer")

class TrainSource(Protocol):
    def batch(self, step: int, micro: int, rank: int, world: int): ...


class ValSource(Protocol):
    def batch(self, i: int): ...


# --- the arithmetic of a step --------------------------------------------------------------------


def lr_at(step: int, s: TrainArgs) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warmup, then cosine or constant."""
    if s.warmup_steps > 0 and step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    if s.schedule == "constant":
        return s.lr
    span = max(1, s.max_steps - s.warmup_steps)
    progress = min(1.0, (step - s.warmup_steps) / span)
    return s.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (s.lr - s.min_lr)


def loss_divisor(supervised_tokens_all_ranks: float, world: int) -> float:
    """What a rank divides its summed loss by so every supervised token of the step, on
    whichever rank, weighs the same: data-parallel backward averages the ranks' gradients
    (divides by `world`), so dividing by N / world gives sum-over-all-tokens / N. Per-rank
    means would instead weigh a token on a rank with few supervised tokens (SFT masks) more."""
    return supervised_tokens_all_ranks / world


def bits_per_byte(nats: float, nbytes: float) -> float:
    """Summed cross-entropy in nats over text of `nbytes` UTF-8 bytes, in bits per byte."""
    return nats / nbytes / math.log(2) if nbytes else float("nan")


# --- resume checks -------------------------------------------------------------------------------


def check_resume(state: dict, settings: dict, shape_dict: dict, out_dir: Path, stage: str) -> None:
    """UserError unless the checkpoint in `out_dir` has this shape and trajectory settings."""
    if state.get("shape") != shape_dict:
        raise UserError(
            f"{out_dir}: holds a checkpoint of another shape ({_fmt(state.get('shape'))}) than requested ({_fmt(shape_dict)}); "
            f"use --force {stage} to start over or another --run-dir"
        )
    saved = state.get("settings", {})
    changed = [k for k in (*TRAJECTORY_FIELDS, "seed") if k in saved and saved[k] != settings[k]]
    if changed:
        what = ", ".join(f"{k} {saved[k]!r} -> {settings[k]!r}" for k in changed)
        raise UserError(f"{out_dir}: checkpoint was trained with other settings ({what}); use --force {stage} to start over or another --run-dir")


def _fmt(d) -> str:
    if not isinstance(d, dict):
        return repr(d)
    return ", ".join(f"{k}={v}" for k, v in d.items())


# --- the run ---------------------------------------------------------------------------------------


def train(
    model,
    args: TrainArgs,
    seed: int,
    out_dir: str | Path,
    train_source: TrainSource,
    val_source: ValSource | None,
    *,
    token_bytes: list[int] | None = None,
    tokenizer_dir: str | Path | None = None,
    eos_token_id: int | None = None,
    description: str = "train",
    stage: str = "pretrain",
    extra: dict | None = None,
) -> dict:
    """Train `model` (a FastGPTNeo) to args.max_steps, resuming from out_dir if it holds a
    checkpoint; return the final metrics."""
    export = {"tokenizer_dir": tokenizer_dir, "eos_token_id": eos_token_id, "extra": dict(extra or {})}
    run = TrainingRun(model, args, seed, Path(out_dir), description, stage, token_bytes, export)
    finished = run.setup(train_source)
    if finished is not None:
        return finished
    try:
        return run.fit(train_source, val_source)
    finally:
        run.close()


class TrainingRun:
    """The state one `train` call shares between its steps: accelerator, model, optimizer,
    counters and log writers."""

    def __init__(self, model, args: TrainArgs, seed: int, out_dir: Path, description: str, stage: str, token_bytes, export: dict):
        self.raw_model, self.args, self.seed, self.out_dir = model, args, seed, out_dir
        self.description, self.stage = description, stage
        self.token_bytes = token_bytes  # a list until first use, then a tensor on the device
        self.export = export  # tokenizer_dir, eos_token_id and extra info for every checkpoint
        self.settings = {**dataclasses.asdict(args), "seed": seed}  # what train_state.pt records
        self.step = self.tokens_seen = 0
        self.train_time = 0.0
        self.logs: TrainingLog | None = None  # the main process's metrics.jsonl and tb/
        self.text_samples: TextSamples | None = None

    # -- setup ------------------------------------------------------------------------------------

    def setup(self, train_source) -> dict | None:
        """Accelerator, resume state, optimizer and logs; the saved final metrics (skipped=True)
        instead when the checkpoint in out_dir already finished."""
        import numpy as np
        import torch
        from accelerate import Accelerator

        a = self.args
        self.acc = acc = Accelerator(cpu=not has_accelerator())
        self.device = acc.device
        self.rank, self.world, self.is_main = acc.process_index, acc.num_processes, acc.is_main_process
        self.dtype = choose_dtype(a.dtype, bf16_supported(self.device))
        self.shape_dict = self.raw_model.shape.to_dict()
        if self.is_main:
            recover_checkpoint(self.out_dir)
        acc.wait_for_everyone()
        state = load_state(self.out_dir)
        if state is not None:
            check_resume(state, self.settings, self.shape_dict, self.out_dir, self.stage)
            if state.get("finished") and state["step"] >= a.max_steps:
                log.info("%s: already finished at step %d; skipping", self.out_dir, state["step"])
                return dict(state.get("final_metrics", {}), skipped=True)

        torch.manual_seed(self.seed)
        random.seed(self.seed)
        np.random.seed(self.seed)
        if state is not None:
            load_weights(self.raw_model, self.out_dir)
            self.step, self.tokens_seen, self.train_time = state["step"], state["tokens_seen"], state.get("train_time_s", 0.0)
        self.start_step = self.step
        self.raw_model.to(self.device)
        self.opt = make_optimizer(self.raw_model, a, self.device.type)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda step: lr_at(step, a) / a.lr if a.lr else 0.0)
        if state is not None:
            self.opt.load_state_dict(state["optimizer"])
            self.sched.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["rng"]["torch"])
            np.random.set_state(state["rng"]["numpy"])
            random.setstate(state["rng"]["python"])
        fwd = compile_model(self.raw_model, self.dtype, self.device, train_source, self.rank, self.world) if a.compile else self.raw_model
        # The scheduler is stepped by us once per optimizer step, not prepared: accelerate's
        # wrapper would step it once per process.
        self.fwd_model, self.opt = acc.prepare(fwd, self.opt)
        self.autocast = autocast_context(self.dtype, self.device.type)
        self._open_logs()
        return None

    def _open_logs(self) -> None:
        if not self.is_main:
            return
        self.logs = TrainingLog(self.out_dir, self.start_step)
        if self.args.eval_samples and self.export["tokenizer_dir"] is not None:
            self.text_samples = TextSamples(self.export["tokenizer_dir"], self.export["eos_token_id"], self.args.eval_samples)
        log.info(
            "%s: %d process(es), device %s, dtype %s, compile %s, start at step %d",
            self.description, self.world, self.device, self.dtype, self.args.compile, self.start_step,
        )

    def close(self) -> None:
        if self.logs is not None:
            self.logs.close()

    # -- counting -----------------------------------------------------------------------------------

    def _token_bytes_table(self):
        import torch

        if self.token_bytes is None:
            return None
        if not isinstance(self.token_bytes, torch.Tensor):
            self.token_bytes = torch.tensor(self.token_bytes, dtype=torch.float64, device=self.device)
        return self.token_bytes

    def _counted(self, y) -> tuple:
        """(supervised targets, their UTF-8 bytes) of a label batch, as float64 tensors on the device."""
        import torch

        targets = y[:, 1:]
        mask = targets != -100
        table = self._token_bytes_table()
        nbytes = table[targets[mask]].sum() if table is not None else torch.zeros((), dtype=torch.float64, device=self.device)
        return mask.sum().double(), nbytes

    def _all_ranks(self, values):
        """Sum a float64 tensor over the processes (itself with one process)."""
        return self.acc.reduce(values, reduction="sum") if self.world > 1 else values

    # -- fit ----------------------------------------------------------------------------------------

    def fit(self, train_source, val_source) -> dict:
        """Optimizer steps to args.max_steps, logging, validating and checkpointing on their
        intervals; the final checkpoint and metrics."""
        from tinystories.progress import progress_bar

        a = self.args
        debug_dir = os.environ.get("TINYSTORIES_DEBUG_DIR")
        self.fwd_model.train()
        self.last_train = self.last_train_bpb = self.last_val = self.last_val_bpb = float("nan")
        self.window_t, self.window_tokens, self.tok_s = time.perf_counter(), 0, 0.0
        with progress_bar(self.description, total=a.max_steps, unit="step") if self.is_main else contextlib.nullcontext() as bar:
            if bar is not None:
                bar.set(self.start_step)
            while self.step < a.max_steps:
                loss, nbytes, grad_norm, lr = self.train_step(train_source)
                if debug_dir:
                    _debug_dump(debug_dir, self.rank, self.world, self.step, self.raw_model)
                self.log_step(loss, nbytes, grad_norm, lr, val_source)
                if bar is not None:
                    bar.advance(1, **self.bar_counters())
                if self.step < a.max_steps and a.checkpoint_interval > 0 and self.step % a.checkpoint_interval == 0:
                    self.checkpoint(finished=False)
                    self.window_t = time.perf_counter()  # checkpoint time is not training throughput
        final = {
            "train_loss": round(self.last_train, 6),
            "val_loss": round(self.last_val, 6),
            "val_bpb": round(self.last_val_bpb, 6),
            "tokens_seen": self.tokens_seen,
            "tokens_per_s": round(self.tokens_seen / self.train_time, 1) if self.train_time else 0.0,
            "steps": self.step,
            "train_time_s": round(self.train_time, 2),
            "dtype": self.dtype,
            "world_size": self.world,
        }
        if self.start_step < a.max_steps:
            self.checkpoint(finished=True, final_metrics=final)
        return final

    def bar_counters(self) -> dict[str, str]:
        """The progress bar's live counters: train loss and throughput, and the last
        validation loss and bits per byte once there was a validation pass."""
        counters = {"loss": f"{self.last_train:.3f}"}
        if not math.isnan(self.last_val):
            counters["val_loss"] = f"{self.last_val:.3f}"
            counters["val_bpb"] = f"{self.last_val_bpb:.3f}"
        counters["tok_s"] = f"{self.tok_s:.0f}"
        return counters

    def train_step(self, train_source) -> tuple:
        """One optimizer step over grad_accum micro-batches: (this rank's share of the step's
        mean loss, bytes of the step's supervised tokens on all ranks, grad norm, lr)."""
        import torch

        a, acc = self.args, self.acc
        t0 = time.perf_counter()
        batches = [train_source.batch(self.step, m, self.rank, self.world) for m in range(a.grad_accum)]
        batches = [(x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)) for x, y in batches]
        # Supervised tokens and bytes of the whole step on every rank, and the inputs processed
        # (padding included: it costs compute). Normalising by the step's total makes every
        # trained token weigh the same however labels are masked across micro-batches and ranks.
        counts = torch.zeros(3, dtype=torch.float64, device=self.device)
        for x, y in batches:
            n, nbytes = self._counted(y)
            counts += torch.stack([n, nbytes, torch.tensor(float(x.numel()), dtype=torch.float64, device=self.device)])
        n_tokens, n_bytes, n_inputs = self._all_ranks(counts).tolist()
        if n_tokens == 0:
            raise UserError(f"{self.description}: step {self.step} has no trained tokens (every label is -100); check the data")
        divisor = loss_divisor(n_tokens, self.world)
        loss_acc = 0.0
        for m, (x, y) in enumerate(batches):
            sync = m == a.grad_accum - 1
            with (contextlib.nullcontext() if sync or self.world == 1 else acc.no_sync(self.fwd_model)):
                with self.autocast():
                    loss = self.fwd_model(x, labels=y, reduction="sum") / divisor
                acc.backward(loss)
            loss_acc += loss.item() / self.world
        # The clip computes the global norm the log reports; grad_clip 0 (no clipping) still
        # measures it, with a bound no norm reaches.
        grad_norm = acc.clip_grad_norm_(self.fwd_model.parameters(), a.grad_clip if a.grad_clip > 0 else math.inf)
        lr = self.sched.get_last_lr()[0]
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens_seen += int(n_inputs)
        self.window_tokens += int(n_inputs)
        self.train_time += time.perf_counter() - t0
        self.last_step_tokens = n_tokens
        return loss_acc, n_bytes, grad_norm, lr

    def log_step(self, loss_share: float, nbytes: float, grad_norm, lr: float, val_source) -> None:
        """A metrics.jsonl / TensorBoard record on log steps, with validation on eval steps."""
        import torch

        a, step = self.args, self.step
        do_eval = step == a.max_steps or (a.eval_interval > 0 and step % a.eval_interval == 0)
        if not (do_eval or step % max(1, a.log_interval) == 0):
            self.last_train = loss_share * self.world  # for the progress bar: this rank's estimate of the mean
            return
        self.last_train = self._all_ranks(torch.tensor([loss_share], dtype=torch.float64, device=self.device)).item()
        self.last_train_bpb = bits_per_byte(self.last_train * self.last_step_tokens, nbytes)
        now = time.perf_counter()
        self.tok_s = self.window_tokens / max(1e-9, now - self.window_t)
        self.window_t, self.window_tokens = now, 0
        val = {}
        if do_eval:
            self.last_val, self.last_val_bpb = self.validate(val_source)
            val = {"val_loss": round(self.last_val, 6), "val_bpb": round(self.last_val_bpb, 6)}
        rec = metrics_row(
            step=step,
            train_loss=round(self.last_train, 6),
            train_bpb=round(self.last_train_bpb, 6),
            lr=lr,
            tokens=self.tokens_seen,
            tok_s=round(self.tok_s, 1),
            grad_norm=round(float(grad_norm), 4),
            time_s=round(self.train_time, 2),
            **val,
        )
        if self.is_main:
            self.logs.write(rec)
            if do_eval and self.text_samples is not None:
                self.logs.samples(self.samples(), step)
            log.info("%s step %d %s", self.description, step, json.dumps(rec))
        if do_eval:
            self.window_t = time.perf_counter()  # evaluation and sampling time is not training throughput

    def samples(self) -> list[str]:
        """The text samples of this step (main process only: no other rank waits on them)."""
        self.raw_model.eval()
        with self.autocast():
            texts = self.text_samples.generate(self.raw_model, self.device)
        self.raw_model.train()
        return texts

    # -- validate -----------------------------------------------------------------------------------

    def validate(self, val_source) -> tuple[float, float]:
        """(nats per supervised token, bits per UTF-8 byte of those tokens) over the validation
        batches, every rank taking its share; NaN without validation data."""
        import torch

        if val_source is None or self.args.eval_batches <= 0:
            return float("nan"), float("nan")
        self.fwd_model.eval()
        total = torch.zeros(3, dtype=torch.float64, device=self.device)  # nats, tokens, bytes
        with torch.no_grad(), self.autocast():
            for i in range(self.rank, self.args.eval_batches, self.world):
                x, y = val_source.batch(i)
                x, y = x.to(self.device), y.to(self.device)
                n, nbytes = self._counted(y)
                total += torch.stack([self.raw_model(x, labels=y, reduction="sum").double(), n, nbytes])
        self.fwd_model.train()
        nats, tokens, nbytes = self._all_ranks(total).tolist()
        return nats / max(tokens, 1.0), bits_per_byte(nats, nbytes)

    # -- checkpoint ---------------------------------------------------------------------------------

    def checkpoint(self, finished: bool, final_metrics: dict | None = None) -> None:
        """train_state.pt and the HF export of the current step, written by the main process."""
        import numpy as np
        import torch

        if self.is_main:
            state = {
                "step": self.step,
                "tokens_seen": self.tokens_seen,
                "train_time_s": self.train_time,
                "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(),
                "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
                # The data position: sources are pure functions of (step, micro, rank), so the
                # step is the position; seed and world size make it reproducible.
                "data": {"next_step": self.step, "seed": self.seed, "world_size": self.world, "micro_batches_per_step": self.args.grad_accum},
                "shape": self.shape_dict,
                "settings": self.settings,
                "finished": finished,
                "final_metrics": final_metrics or {},
            }
            extra = dict(self.export["extra"], step=self.step, dtype=self.dtype)
            write_checkpoint(self.raw_model, self.out_dir, state, self.export["tokenizer_dir"], self.export["eos_token_id"], extra)
        self.acc.wait_for_everyone()


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


def compile_model(model, dtype: str, device, train_source, rank: int, world: int):
    """torch.compile the model and prove it with one forward/backward on a real batch shape;
    fall back to eager (with a warning) when the compiler is missing or fails."""
    import torch

    try:
        compiled = torch.compile(model)
        x, y = train_source.batch(0, 0, rank, world)
        with autocast_context(dtype, device.type)():
            # Same call signature as the training loop, so the graph compiled here is reused.
            loss = compiled(x.to(device), labels=y.to(device), reduction="sum") / max(1, int((y[:, 1:] != -100).sum()))
        loss.backward()
        model.zero_grad(set_to_none=True)
        return compiled
    except Exception as exc:  # noqa: BLE001 - any compiler failure means: run eager
        log.warning("torch.compile failed (%s); training eagerly", str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
        model.zero_grad(set_to_none=True)
        return model
