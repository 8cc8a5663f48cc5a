"""Training throughput of the fast GPT-Neo vs transformers' GPTNeoForCausalLM, and MFU.

    .venv/bin/python benchmarks/bench_train.py                  # CPU: 1M, 8M, 33M at context 512, batch 8
    python3 benchmarks/bench_train.py --device cuda --sizes 33M # GPU: bf16, GPU-filling batch, compile on and off

For each size, one full training step (forward, loss, backward, fused AdamW step) is timed
after warmup steps, for
- fast: tinystories.train.model.FastGPTNeo in bf16 autocast, eager and under torch.compile
  (`--compile on|off|both`), and fp32 with --fp32;
- hf: transformers GPTNeoForCausalLM (eager attention, the only kind it has without
  flash-attn), fp32 and bf16 autocast on CPU, bf16 autocast on GPU (its faster one there),
on the same random batch, in the same run. The bf16 matmul peak is measured in the same run
too (random data; best GEMM rate over square sizes 1024..4096 on CPU, 4096 and 8192 timed with
CUDA events on GPU), and

    MFU = achieved FLOP/s / peak,  achieved FLOP/s = tokens/s * flops_per_token,
    flops_per_token = 6 * N_matmul + 3 * sum over layers of 4 * d * keys(layer)

with N_matmul = layers * (4 d^2 + 2 d f) + V d (attention projections, MLP and the tied LM
head; embedding lookups are not matmuls) and keys = mean keys a query attends to (causal:
(T+1)/2, local: capped by the window): tinystories.train.model.train_flops_per_token.
On a GPU MFU is given twice: against the measured matmul peak and against the GPU's published
bf16 dense peak (PUBLISHED_BF16_DENSE_TFLOPS below, or --published-peak-tflops).

Batch sizes on cuda (sequences of `--context` tokens; `--batch-size` overrides): 8M 256,
28M 128, 33M 128 (65k-131k tokens a step: the GEMMs are then tens of thousands of rows tall).
HF's eager attention keeps fp32 B*H*T*T score tensors for backward, so on an out-of-memory
error the HF reference (or the fast path) is retried at half the batch; the batch each side
ran at is in the result (tokens/s stay comparable per token).

The last line is one JSON object: train_tok_s_fast_<cfg>_<size>, train_mfu_<cfg>_<size>,
train_mfu_published_<cfg>_<size>, train_speedup_vs_hf_<cfg>_<size> for cfg in bf16,
bf16_compile (fp32), the best of them as train_tok_s_fast_<size>, train_mfu_<size>,
train_speedup_vs_hf_<size>, plus train_tok_s_hf_<size>, batch_<size>, hf_batch_<size>,
(on cuda) the peak GPU memory of each configuration (fast_mem_gib_<cfg>_<size>,
hf_mem_gib_bf16_<size>), matmul_peak_gflops, published_peak_tflops, the GPU and library versions. With
--progress-json the result so far is also printed after every timed configuration (marked
"partial": true), so a caller that has to kill a slow compile still has the other figures.
CPU figures are noisy when other processes share the cores; the load average is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import torch  # noqa: E402

from tinystories.train.model import FastGPTNeo, hf_config, param_groups, resolve_shape, train_flops_per_token  # noqa: E402

# Published dense (no sparsity) bf16 Tensor Core peaks, by torch.cuda.get_device_name().
# Source: NVIDIA H200 Tensor Core GPU datasheet (2024): H200 SXM "BF16 Tensor Core 1,979 TFLOPS"
# quoted with 2:4 sparsity, i.e. 989 TFLOP/s dense; H200 NVL 1,671 -> 835. The H100 SXM
# datasheet gives the same 1,979 / 989 as the H200 SXM (same chip, same clocks).
PUBLISHED_BF16_DENSE_TFLOPS = {
    "NVIDIA H200": 989.0,
    "NVIDIA H200 NVL": 835.5,
    "NVIDIA H100 80GB HBM3": 989.0,
}
DEFAULT_SIZES = {"cpu": "1M,8M,33M", "cuda": "8M,28M,33M"}
DEFAULT_BATCH = {"cpu": {"*": 8}, "cuda": {"8M": 256, "28M": 128, "33M": 128, "*": 128}}


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def matmul_peak_cpu(sizes=(1024, 2048, 3072, 4096)) -> float:
    """Best bf16 GEMM GFLOP/s over square sizes, timed with the host clock."""
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, dtype=torch.bfloat16)
        b = torch.randn(n, n, dtype=torch.bfloat16)
        a @ b
        reps = min(200, max(2, int(2e10 / (2 * n**3))))
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        dt = time.perf_counter() - t
        best = max(best, 2 * n**3 * reps / dt / 1e9)
    return best


def matmul_peak_cuda(sizes=(4096, 8192), warmup_s: float = 0.5, rounds: int = 5, reps: int = 10) -> float:
    """Best bf16 GEMM GFLOP/s over square sizes on random data, timed with CUDA events: the
    clocks ramp up during `warmup_s` of products first, then the best of `rounds` rounds of
    `reps` back-to-back products (each round two events, so launch gaps are amortised)."""
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, dtype=torch.bfloat16, device="cuda")
        b = torch.randn(n, n, dtype=torch.bfloat16, device="cuda")
        out = torch.empty(n, n, dtype=torch.bfloat16, device="cuda")
        t_end = time.perf_counter() + warmup_s
        while time.perf_counter() < t_end:
            torch.matmul(a, b, out=out)
            torch.cuda.synchronize()
        for _ in range(rounds):
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(reps):
                torch.matmul(a, b, out=out)
            stop.record()
            stop.synchronize()
            best = max(best, 2 * n**3 * reps / (start.elapsed_time(stop) / 1e3) / 1e9)
        del a, b, out
    return best


def time_training(step_fn, device: str, warmup: int, steps: int, max_seconds: float) -> float:
    """Seconds per step. On CPU the fastest timed step: on a shared machine other processes only
    ever slow a step down, so the minimum is closest to the machine's own speed. On a GPU (a
    machine of its own) the median, the honest figure for a steady state."""
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
    return statistics.median(times) if device == "cuda" else min(times)


def make_step(module, opt, x, bf16: bool, device: str, hf: bool):
    autocast = (lambda: torch.autocast(device, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext

    def step():
        with autocast():
            loss = module(x, labels=x).loss if hf else module(x, labels=x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def free_memory(device: str) -> None:
    import gc

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def timed_config(build, args, vocab: int, batch: int, bf16: bool, hf: bool, label: str) -> dict:
    """Time one configuration: `build()` -> (module to call, optimizer). On CUDA out of memory
    the batch is halved and the configuration retried; any other failure is reported."""
    device = args.device
    while True:
        module = opt = None
        try:
            torch.manual_seed(0)
            x = torch.randint(0, vocab, (batch, args.context), device=device)
            module, opt = build()
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            dt = time_training(make_step(module, opt, x, bf16, device, hf), device, args.warmup, args.steps, args.max_seconds)
            tok_s = batch * args.context / dt
            out = {"tok_s": tok_s, "batch": batch}
            if device == "cuda":  # how much of the GPU the batch takes
                out["mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
            print(f"  {label}: {tok_s:11.0f} tok/s ({dt * 1e3:.1f} ms/step, batch {batch}, {time.perf_counter() - t0:.0f} s incl. warmup{', %.1f GiB' % out['mem_gib'] if 'mem_gib' in out else ''})", flush=True)
            return out
        except Exception as exc:  # noqa: BLE001 - report and go on (e.g. no compiler)
            if device == "cuda" and is_oom(exc) and batch > 1:
                print(f"  {label}: out of memory at batch {batch}; retrying at {batch // 2}", flush=True)
                batch //= 2
                continue
            message = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
            print(f"  {label}: failed ({message})", flush=True)
            return {"error": message, "batch": batch}
        finally:
            del module, opt
            free_memory(device)


def fast_configs(args) -> list[tuple[str, bool, bool]]:
    """(key, bf16, compiled), eager first and compiled last: compiling is what may run out of
    time, and the eager figures are in by then."""
    out = []
    if args.compile in ("off", "both"):
        out.append(("bf16", True, False))
    if args.fp32:
        out.append(("fp32", False, False))
    if args.compile in ("on", "both"):
        out.append(("bf16_compile", True, True))
    return out


def bench_size(name: str, args, vocab: int, result: dict, emit) -> None:
    """Time every fast configuration and the HF reference for one size; add the figures to `result`."""
    from transformers import GPTNeoForCausalLM

    device = args.device
    shape = resolve_shape(name)
    batch = args.batch.get(name, args.batch.get("*", 8))
    flops = train_flops_per_token(shape, vocab, args.context)
    result[f"batch_{name}"] = batch
    result[f"flops_per_token_{name}"] = round(flops)

    def build_fast(compiled: bool):
        def build():
            model = FastGPTNeo(shape, vocab).to(device)
            opt = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-4, fused=True)
            return (torch.compile(model) if compiled else model), opt

        return build

    def build_hf():
        hf = GPTNeoForCausalLM(hf_config(shape, vocab)).to(device).train()
        result["hf_attn_implementation"] = getattr(hf.config, "_attn_implementation", None)
        return hf, torch.optim.AdamW(hf.parameters(), lr=1e-4, fused=True)

    configs = fast_configs(args)
    eager = [c for c in configs if not c[2]]
    compiled = [c for c in configs if c[2]]
    for key, bf16, comp in eager:
        record_fast(result, name, key, timed_config(build_fast(comp), args, vocab, batch, bf16, False, f"fast {name} {key}"), flops, args)
        emit(result)

    best_hf = None
    for dtype in ["bf16"] if device == "cuda" else ["fp32", "bf16"]:
        r = timed_config(build_hf, args, vocab, batch, dtype == "bf16", True, f"hf   {name} {dtype}")
        if "mem_gib" in r:
            result[f"hf_mem_gib_{dtype}_{name}"] = r["mem_gib"]
        if "tok_s" in r and (best_hf is None or r["tok_s"] > best_hf[0]):
            best_hf = (r["tok_s"], dtype, r["batch"])
        elif "error" in r:
            result[f"error_hf_{dtype}_{name}"] = r["error"]
    if best_hf is not None:
        result[f"train_tok_s_hf_{name}"], result[f"hf_config_{name}"], result[f"hf_batch_{name}"] = round(best_hf[0], 1), best_hf[1], best_hf[2]
    add_ratios(result, name)
    emit(result)

    for key, bf16, comp in compiled:
        record_fast(result, name, key, timed_config(build_fast(comp), args, vocab, batch, bf16, False, f"fast {name} {key}"), flops, args)
        add_ratios(result, name)
        emit(result)


def record_fast(result: dict, name: str, key: str, r: dict, flops: float, args) -> None:
    if "error" in r:
        result[f"error_fast_{key}_{name}"] = r["error"]
        return
    achieved = r["tok_s"] * flops
    result[f"train_tok_s_fast_{key}_{name}"] = round(r["tok_s"], 1)
    result[f"fast_batch_{key}_{name}"] = r["batch"]
    if "mem_gib" in r:
        result[f"fast_mem_gib_{key}_{name}"] = r["mem_gib"]
    result[f"train_mfu_{key}_{name}"] = round(achieved / (args.peak_gflops * 1e9), 4)
    if args.published_tflops:
        result[f"train_mfu_published_{key}_{name}"] = round(achieved / (args.published_tflops * 1e12), 4)
    best = result.get(f"train_tok_s_fast_{name}")
    if best is None or r["tok_s"] > best:
        result[f"train_tok_s_fast_{name}"] = round(r["tok_s"], 1)
        result[f"fast_config_{name}"] = key.replace("_compile", "+compile")
        result[f"train_mfu_{name}"] = result[f"train_mfu_{key}_{name}"]
        if args.published_tflops:
            result[f"train_mfu_published_{name}"] = result[f"train_mfu_published_{key}_{name}"]


def add_ratios(result: dict, name: str) -> None:
    """Speed-ups over the HF reference, per fast configuration and for the best one."""
    hf = result.get(f"train_tok_s_hf_{name}")
    if not hf:
        return
    prefix, suffix = "train_tok_s_fast_", f"_{name}"
    for key in [k for k in result if k.startswith(prefix) and k.endswith(suffix)]:
        cfg = key[len(prefix) : -len(suffix)]
        ratio_key = f"train_speedup_vs_hf_{cfg}_{name}" if cfg else f"train_speedup_vs_hf_{name}"
        result[ratio_key] = round(result[key] / hf, 3)


def parse_batch(spec: str | None, device: str) -> dict[str, int]:
    """'128' (every size) or '8M=256,33M=128' (per size, others keep the default)."""
    batch = dict(DEFAULT_BATCH[device])
    if not spec:
        return batch
    if "=" in spec:
        batch.update({k.strip(): int(v) for k, v in (item.split("=") for item in spec.split(",") if item)})
        return batch
    return {"*": int(spec)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--sizes", default=None, help=f"comma-separated presets (default: {DEFAULT_SIZES['cpu']} on cpu, {DEFAULT_SIZES['cuda']} on cuda)")
    p.add_argument("--context", type=int, default=512)
    p.add_argument("--vocab", type=int, default=10000)
    p.add_argument("--batch-size", "--batch", dest="batch", default=None, help="sequences per step: '128' for every size or '8M=256,33M=128' (default: 8 on CPU; see the docstring on cuda)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 2 on CPU, 5 on cuda; compiling happens in the first)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 4 on CPU, 20 on cuda)")
    p.add_argument("--max-seconds", type=float, default=None, help="stop timing a config after this long (at least 2 steps)")
    p.add_argument("--compile", choices=["on", "off", "both"], default="both", help="time the fast path under torch.compile (on), eagerly (off) or both (default); compiling takes ~20-30 s per size on CPU")
    p.add_argument("--no-compile", dest="compile", action="store_const", const="off", help="same as --compile off")
    p.add_argument("--fp32", action="store_true", help="also time the fast path in fp32")
    p.add_argument("--published-peak-tflops", type=float, default=None, help="the GPU's published bf16 dense peak (default: looked up by GPU name)")
    p.add_argument("--progress-json", action="store_true", help="also print the result so far after every timed configuration")
    args = p.parse_args(argv)
    cuda = args.device == "cuda"
    args.sizes = [s for s in (args.sizes or DEFAULT_SIZES[args.device]).split(",") if s]
    args.batch = parse_batch(args.batch, args.device)
    args.warmup = args.warmup if args.warmup is not None else (5 if cuda else 2)
    args.steps = args.steps if args.steps is not None else (20 if cuda else 4)
    args.max_seconds = args.max_seconds if args.max_seconds is not None else (30.0 if cuda else 25.0)
    return args


def device_info(device: str, published: float | None) -> dict:
    import transformers

    info = {"bench": "train", "device": device, "torch": torch.__version__, "transformers": transformers.__version__}
    if device == "cuda":
        name = torch.cuda.get_device_name()
        known = published_peak(name)
        info["gpu"] = name
        info["published_peak_tflops"] = published if published is not None else known
        info["published_peak_source"] = "--published-peak-tflops" if published is not None else ("vendor datasheet, bf16 dense" if known else "unknown GPU: pass --published-peak-tflops")
    return info


def published_peak(gpu_name: str) -> float | None:
    """The table's entry for the longest name `gpu_name` starts with ('NVIDIA H200 NVL' is not an SXM H200)."""
    matches = [key for key in PUBLISHED_BF16_DENSE_TFLOPS if gpu_name.startswith(key)]
    return PUBLISHED_BF16_DENSE_TFLOPS[max(matches, key=len)] if matches else None


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device visible")
    cuda = args.device == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"device {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}, load average {load:.2f}", flush=True)
    t0 = time.perf_counter()
    result = device_info(args.device, args.published_peak_tflops)
    args.published_tflops = result.get("published_peak_tflops")
    args.peak_gflops = matmul_peak_cuda() if cuda else matmul_peak_cpu()
    print(f"bf16 matmul peak {args.peak_gflops:.0f} GFLOP/s" + (f" (published {args.published_tflops} TFLOP/s)" if args.published_tflops else ""), flush=True)
    result.update(matmul_peak_gflops=round(args.peak_gflops, 1), context=args.context, load_average_start=round(load, 2))

    def emit(partial: dict) -> None:
        if args.progress_json:
            print(json.dumps({**partial, "partial": True}), flush=True)

    for name in args.sizes:
        bench_size(name, args, args.vocab, result, emit)
        fast, hf = result.get(f"train_tok_s_fast_{name}"), result.get(f"train_tok_s_hf_{name}")
        mfu = result.get(f"train_mfu_{name}")
        published = result.get(f"train_mfu_published_{name}")
        print(
            f"{name}: fast {fast} tok/s [{result.get(f'fast_config_{name}')}], hf {hf} tok/s, "
            f"speedup {result.get(f'train_speedup_vs_hf_{name}')}x, MFU {mfu} of measured peak" + (f", {published} of published" if published is not None else ""),
            flush=True,
        )
    result["load_average_end"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
