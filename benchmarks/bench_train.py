"""Training throughput of the fast GPT-Neo vs transformers' GPTNeoForCausalLM, and MFU.

    .venv/bin/python benchmarks/bench_train.py                  # CPU: 1M, 8M, 33M at context 512, batch 8
    .venv/bin/python benchmarks/bench_train.py --device cuda    # GPU: bf16, GPU-filling batch

For each size, one full training step (forward, loss, backward, fused AdamW step) is timed
after warmup steps, for
- fast: tinystories.train.model.FastGPTNeo, the best of its configurations (bf16 autocast eager and
  under torch.compile; fp32 with --fp32), and
- hf: transformers GPTNeoForCausalLM (eager attention, the only kind it has), best of fp32
  and bf16 autocast,
on the same random batch, in the same run. The bf16 matmul peak is measured in the same run
too (best GEMM GFLOP/s over square sizes 1024..4096 on CPU, up to 8192 on GPU), and

    MFU = achieved FLOP/s / peak,  achieved FLOP/s = tokens/s * flops_per_token,
    flops_per_token = 6 * N_matmul + 3 * sum over layers of 4 * d * keys(layer)

with N_matmul = layers * (4 d^2 + 2 d f) + V d (attention projections, MLP and the tied LM
head; embedding lookups are not matmuls) and keys = mean keys a query attends to (causal:
(T+1)/2, local: capped by the window): tinystories.train.model.train_flops_per_token.

The last line is one JSON object: train_tok_s_fast_<size>, train_tok_s_hf_<size>,
train_speedup_vs_hf_<size>, train_mfu_<size>, matmul_peak_gflops (and the configs chosen).
CPU figures are noisy when other processes share the cores; the load average is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import torch  # noqa: E402

from tinystories.train.model import FastGPTNeo, hf_config, param_groups, resolve_shape, train_flops_per_token  # noqa: E402


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device: str, sizes) -> float:
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, dtype=torch.bfloat16, device=device)
        b = torch.randn(n, n, dtype=torch.bfloat16, device=device)
        a @ b
        sync(device)
        reps = max(2, int((2e11 if device == "cuda" else 2e10) / (2 * n**3)))
        reps = min(reps, 200)
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync(device)
        dt = time.perf_counter() - t
        best = max(best, 2 * n**3 * reps / dt / 1e9)
    return best


def time_training(model, step_fn, device: str, warmup: int, steps: int, max_seconds: float) -> float:
    """Seconds per step: the fastest timed step. On a shared machine other processes only ever
    slow a step down, so the minimum is the figure closest to the machine's own speed."""
    for _ in range(warmup):
        step_fn()
    sync(device)
    times = []
    t_end = time.perf_counter() + max_seconds
    for i in range(steps):
        t = time.perf_counter()
        step_fn()
        sync(device)
        times.append(time.perf_counter() - t)
        if time.perf_counter() > t_end and i >= 1:
            break
    return min(times)


def make_step(module, opt, x, bf16: bool, device: str, hf: bool):
    autocast = (lambda: torch.autocast(device, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext

    def step():
        with autocast():
            loss = module(x, labels=x).loss if hf else module(x, labels=x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def bench_size(name: str, args, vocab: int) -> dict:
    from transformers import GPTNeoForCausalLM

    device = args.device
    shape = resolve_shape(name)
    batch = args.batch.get(name, args.batch.get("*", 8))
    x = torch.randint(0, vocab, (batch, args.context), device=device)
    tokens = batch * args.context
    out: dict = {"batch": batch}

    # fp32 never beat bf16 autocast for the fast path on this CPU (AVX512-BF16), so it is
    # only timed on request; compiled bf16 is (compiling costs ~20-30 s per size on 2 cores).
    fast_cfgs = [("bf16", False)] + ([("fp32", False)] if args.fp32 else []) + ([] if args.no_compile else [("bf16", True)])
    best = None
    for dtype, compiled in fast_cfgs:
        torch.manual_seed(0)
        model = FastGPTNeo(shape, vocab).to(device)
        opt = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-4, fused=True)
        module = torch.compile(model) if compiled else model
        t0 = time.perf_counter()
        try:
            dt = time_training(model, make_step(module, opt, x, dtype == "bf16", device, hf=False), device, args.warmup, args.steps, args.max_seconds)
        except Exception as exc:  # noqa: BLE001 - e.g. no compiler: report and go on
            print(f"  fast {name} {dtype} compile={compiled}: failed ({str(exc).splitlines()[0][:120]})", flush=True)
            continue
        tok_s = tokens / dt
        print(f"  fast {name} {dtype} compile={compiled}: {tok_s:9.0f} tok/s ({dt:.3f} s/step, {time.perf_counter() - t0:.0f} s incl. warmup)", flush=True)
        if best is None or tok_s > best[0]:
            best = (tok_s, f"{dtype}{'+compile' if compiled else ''}")
        del model, opt, module
    out["fast_tok_s"], out["fast_config"] = best

    best_hf = None
    for dtype in (["bf16"] if device == "cuda" else ["fp32", "bf16"]):
        torch.manual_seed(0)
        hf = GPTNeoForCausalLM(hf_config(shape, vocab)).to(device).train()
        opt = torch.optim.AdamW(hf.parameters(), lr=1e-4, fused=True)
        t0 = time.perf_counter()
        dt = time_training(hf, make_step(hf, opt, x, dtype == "bf16", device, hf=True), device, args.warmup, args.steps, args.max_seconds)
        tok_s = tokens / dt
        print(f"  hf   {name} {dtype}: {tok_s:9.0f} tok/s ({dt:.3f} s/step, {time.perf_counter() - t0:.0f} s incl. warmup)", flush=True)
        if best_hf is None or tok_s > best_hf[0]:
            best_hf = (tok_s, dtype)
        del hf, opt
    out["hf_tok_s"], out["hf_config"] = best_hf
    out["flops_per_token"] = train_flops_per_token(shape, vocab, args.context)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--sizes", default="1M,8M,33M")
    p.add_argument("--context", type=int, default=512)
    p.add_argument("--vocab", type=int, default=10000)
    p.add_argument("--batch", default=None, help="per size, e.g. '8' or '8M=256,33M=128' (default: 8 on CPU, GPU-filling on cuda)")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--max-seconds", type=float, default=None, help="stop timing a config after this long (at least 2 steps)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile'd fast path (compiling takes ~20-30 s per size on CPU)")
    p.add_argument("--fp32", action="store_true", help="also time the fast path in fp32")
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device visible")
    cuda = args.device == "cuda"
    if args.sizes == "1M,8M,33M" and cuda:
        args.sizes = "8M,33M"
    sizes = [s for s in args.sizes.split(",") if s]
    default_batch = {"8M": 256, "33M": 128, "*": 128} if cuda else {"*": 8}
    if args.batch:
        if "=" in args.batch:
            args.batch = {k: int(v) for k, v in (item.split("=") for item in args.batch.split(","))}
        else:
            args.batch = {"*": int(args.batch)}
    else:
        args.batch = default_batch
    args.warmup = args.warmup if args.warmup is not None else (5 if cuda else 2)
    args.steps = args.steps if args.steps is not None else (20 if cuda else 4)
    args.max_seconds = args.max_seconds if args.max_seconds is not None else (30.0 if cuda else 25.0)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"device {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}, load average {load:.2f}", flush=True)
    t0 = time.perf_counter()
    peak = matmul_peak(args.device, (1024, 2048, 4096, 8192) if cuda else (1024, 2048, 3072, 4096))
    print(f"bf16 matmul peak {peak:.0f} GFLOP/s", flush=True)
    result: dict = {"matmul_peak_gflops": round(peak, 1)}
    for name in sizes:
        r = bench_size(name, args, args.vocab)
        fast, hf = r["fast_tok_s"], r["hf_tok_s"]
        mfu = fast * r["flops_per_token"] / (peak * 1e9)
        print(f"{name}: fast {fast:.0f} tok/s [{r['fast_config']}], hf {hf:.0f} tok/s [{r['hf_config']}], speedup {fast / hf:.2f}x, MFU {mfu:.1%}", flush=True)
        result[f"train_tok_s_fast_{name}"] = round(fast, 1)
        result[f"train_tok_s_hf_{name}"] = round(hf, 1)
        result[f"train_speedup_vs_hf_{name}"] = round(fast / hf, 3)
        result[f"train_mfu_{name}"] = round(mfu, 4)
        result[f"fast_config_{name}"] = r["fast_config"]
        result[f"batch_{name}"] = r["batch"]
    result["device"] = args.device
    result["context"] = args.context
    result["load_average_start"] = round(load, 2)
    result["load_average_end"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
