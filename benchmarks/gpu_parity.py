"""Logits parity on a device: tinystories' FastGPTNeo vs transformers' GPTNeoForCausalLM.

    python3 benchmarks/gpu_parity.py --device cuda                      # presets 8M and 33M, context 512
    .venv/bin/python benchmarks/gpu_parity.py --device cpu --sizes tiny --context 40

The CPU test (tests/test_model.py) proves the two compute the same function on CPU; this runs
the same comparison through the device's own kernels (fused SDPA attention, cuBLAS) at the
real sizes. Both models get the same weights (the fast module's, exported by
to_hf_state_dict), the same random batch, and run:
- fp32 (TF32 off, so fp32 means fp32): fast vs HF, elementwise |a - b| <= atol + rtol * |b|
  with atol = rtol = FP32_TOL;
- bf16 autocast: each side against the fp32 HF logits as reference, by the relative error
  ||out - ref|| / ||ref||. One bf16 product lands between 1e-3 and 1e-2; through a stack of
  layers more (measured on CPU: 33M gives 1.9e-2 fast and 2.4e-2 HF), so the yardstick is HF's
  own bf16 error: the fast path passes when its error is at most BF16_VS_HF_FACTOR times HF's
  (it may round differently, not worse) and under BF16_REL_CAP, which any real bug (a wrong
  mask, a missing bias) exceeds by far. The max abs difference fast bf16 vs HF bf16 is reported.
NaN or inf never passes. Weights: GPT-Neo's init (std 0.02) plus a perturbation of every
parameter (norm gains and biases too, which the init leaves at 1 and 0), so every parameter
matters while the unscaled attention scores stay in the range a trained model has.

Prints one JSON line: per size parity_<check>_<size> figures, the tolerances, "pass"; exits 1
when a check fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import torch  # noqa: E402

from tinystories.train.model import FastGPTNeo, Shape, hf_config, resolve_shape, to_hf_state_dict  # noqa: E402

FP32_TOL = 1e-4
BF16_REL_CAP = 5e-2
BF16_VS_HF_FACTOR = 2.0
# A shape for quick CPU runs: global and local layers, a window shorter than the context.
TINY = Shape(hidden_size=32, num_layers=3, num_heads=4, window_size=5, max_position=64)


def build_pair(shape: Shape, vocab: int, device: str, seed: int = 0):
    """(fast, hf) in eval mode on `device`, holding the same perturbed weights."""
    from transformers import GPTNeoForCausalLM

    torch.manual_seed(seed)
    fast = FastGPTNeo(shape, vocab)
    with torch.no_grad():
        for p in fast.parameters():
            p.add_(torch.randn_like(p) * (0.02 if p.ndim >= 2 else 0.1))
    hf = GPTNeoForCausalLM(hf_config(shape, vocab))
    missing, unexpected = hf.load_state_dict(to_hf_state_dict(fast), strict=False)
    missing = [m for m in missing if m != "lm_head.weight"]
    assert not missing and not unexpected, f"weight export mismatch: missing {missing}, unexpected {unexpected}"
    hf.tie_weights()
    return fast.to(device).eval(), hf.to(device).eval()


def logits(model, x, bf16: bool, hf: bool):
    ctx = torch.autocast(x.device.type, dtype=torch.bfloat16) if bf16 else torch.autocast(x.device.type, enabled=False)
    with torch.no_grad(), ctx:
        out = model(x).logits if hf else model(x)
    return out.float()


def rel_err(out, ref) -> float:
    return ((out - ref).norm() / ref.norm().clamp(min=1e-30)).item()


def check_size(name: str, shape: Shape, args) -> dict:
    fast, hf = build_pair(shape, args.vocab, args.device)
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, args.vocab, (args.batch, args.context), generator=gen).to(args.device)
    ref = logits(hf, x, bf16=False, hf=True)
    ours = logits(fast, x, bf16=False, hf=False)
    fast_bf16 = logits(fast, x, bf16=True, hf=False)
    hf_bf16 = logits(hf, x, bf16=True, hf=True)
    finite = all(bool(torch.isfinite(t).all()) for t in (ref, ours, fast_bf16, hf_bf16))
    fp32_excess = ((ours - ref).abs() - (FP32_TOL + FP32_TOL * ref.abs())).max().item()
    r = {
        f"parity_fp32_max_abs_{name}": (ours - ref).abs().max().item(),
        f"parity_fp32_rel_{name}": rel_err(ours, ref),
        f"parity_bf16_rel_fast_{name}": rel_err(fast_bf16, ref),
        f"parity_bf16_rel_hf_{name}": rel_err(hf_bf16, ref),
        f"parity_bf16_max_abs_fast_vs_hf_{name}": (fast_bf16 - hf_bf16).abs().max().item(),
        f"parity_bf16_max_abs_fast_vs_fp32_{name}": (fast_bf16 - ref).abs().max().item(),
        f"logits_abs_max_{name}": ref.abs().max().item(),
    }
    r[f"parity_fp32_pass_{name}"] = finite and fp32_excess <= 0
    r[f"parity_bf16_pass_{name}"] = finite and r[f"parity_bf16_rel_fast_{name}"] <= min(BF16_REL_CAP, max(BF16_VS_HF_FACTOR * r[f"parity_bf16_rel_hf_{name}"], 1e-3))
    r[f"finite_{name}"] = finite
    del fast, hf
    return r


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cpu, cuda or cuda:N")
    p.add_argument("--sizes", default="8M,33M", help="comma-separated presets, or 'tiny' (a 3-layer 32-wide shape for quick CPU runs)")
    p.add_argument("--context", type=int, default=512)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--vocab", type=int, default=10000)
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(json.dumps({"check": "parity", "device": args.device, "pass": False, "error": "no CUDA device visible"}))
        return 1
    # TF32 would make the "fp32" comparison a 10-bit-mantissa one.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    t0 = time.perf_counter()
    result: dict = {"check": "parity", "device": args.device, "context": args.context, "batch": args.batch, "vocab": args.vocab}
    if args.device.startswith("cuda"):
        result["gpu"] = torch.cuda.get_device_name()
    result.update(fp32_tol=FP32_TOL, bf16_rel_cap=BF16_REL_CAP, bf16_vs_hf_factor=BF16_VS_HF_FACTOR)
    for name in [s for s in args.sizes.split(",") if s]:
        shape = TINY if name == "tiny" else resolve_shape(name)
        if args.context > shape.max_position:
            raise SystemExit(f"--context {args.context}: longer than size {name}'s position table ({shape.max_position}); lower --context")
        result.update(check_size(name, shape, args))
    result["pass"] = all(v for k, v in result.items() if k.startswith("parity_") and "_pass_" in k)
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps({k: (round(v, 8) if isinstance(v, float) else v) for k, v in result.items()}))
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
