"""Generated tokens/s of the batched sampler vs GPTNeoForCausalLM.generate one sequence at a time.

    .venv/bin/python benchmarks/bench_sampler.py [--sizes 1M 8M] [--prompts 64] [--new-tokens 128] [--device cpu]
    python3 benchmarks/bench_sampler.py --device cuda --sizes 8M 33M

Random weights (speed does not depend on them). Both sides sample with top_p 0.95,
temperature 1.0 and generate exactly --new-tokens tokens per sequence (no early stop), so they
do the same work. Also measured, for the record: `generate` on the same left-padded batch, to
show what our own loop buys over batching through `generate`. Target: sampler >= 5x the
one-at-a-time reference. The models run in fp32 on every device, as the complete stage runs
them. The last line is one JSON object ("bench": "sampler", per size sampler_tok_s_<size>,
hf_generate_tok_s_<size>, hf_generate_batched_tok_s_<size>, sampler_speedup_vs_hf_<size>, and
the device, GPU and library versions).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))


def model_config(size: str):
    """The preset from tinystories.train.model when it exists, else the paper's shapes."""
    from transformers import GPTNeoConfig

    try:
        from tinystories.train.model import hf_config, resolve_shape

        return hf_config(resolve_shape(size), vocab_size=10000, eos_token_id=0), "tinystories.train.model preset"
    except ImportError:  # model.py absent: the paper's shapes below
        pass
    hidden = {"1M": 64, "3M": 128, "8M": 256, "28M": 512, "33M": 768}[size]
    layers = 4 if size == "33M" else 8
    cfg = GPTNeoConfig(
        vocab_size=10000,
        hidden_size=hidden,
        num_layers=layers,
        num_heads=16,
        attention_types=[[["global", "local"], layers // 2]],
        window_size=256,
        max_position_embeddings=2048,
        bos_token_id=0,
        eos_token_id=0,
    )
    return cfg, "paper shapes (tinystories.train.model not available)"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", nargs="+", default=["1M", "8M"])
    ap.add_argument("--prompts", type=int, default=64, help="prompts for the batched sampler (one batch)")
    ap.add_argument("--reference-prompts", type=int, default=6, help="prompts for the slow one-at-a-time reference")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    args = ap.parse_args()

    import torch
    import transformers
    from transformers import GPTNeoForCausalLM

    from tinystories.eval.sampler import generate

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit(f"--device {args.device}: no CUDA device visible")
    result: dict[str, float | str] = {"bench": "sampler", "device": str(device), "torch": torch.__version__, "transformers": transformers.__version__}
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(1, 10000, (int(torch.randint(12, 40, (1,), generator=g)),), generator=g).tolist() for _ in range(args.prompts)]
    n = args.new_tokens

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for size in args.sizes:
        cfg, source = model_config(size)
        torch.manual_seed(0)
        model = GPTNeoForCausalLM(cfg).to(device).eval()
        params = sum(p.numel() for p in model.parameters())
        print(f"[{size}] {params / 1e6:.2f}M parameters ({source}), device {device}, {n} new tokens per sequence")

        # Warm up both paths once (allocator, kernels).
        generate(model, prompts[:2], 4, [0, 1], eos_token_id=None, temperature=1.0, top_p=0.95, batch_size=2)
        model.generate(torch.tensor([prompts[0]], device=device), max_new_tokens=4, min_new_tokens=4, do_sample=True, top_p=0.95, temperature=1.0, top_k=0, pad_token_id=0, eos_token_id=None)

        sync()
        t0 = time.perf_counter()
        gens = generate(model, prompts, n, list(range(len(prompts))), eos_token_id=None, temperature=1.0, top_p=0.95, batch_size=args.batch_size)
        sync()
        dt = time.perf_counter() - t0
        produced = sum(len(x.tokens) for x in gens)
        assert produced == n * len(prompts), "the sampler stopped early"
        ours = produced / dt
        print(f"[{size}] sampler: {len(prompts)} sequences x {n} tokens, batch {args.batch_size}: {dt:.2f}s, {ours:.1f} tok/s")

        torch.manual_seed(0)
        sync()
        t0 = time.perf_counter()
        produced = 0
        for p in prompts[: args.reference_prompts]:
            out = model.generate(torch.tensor([p], device=device), attention_mask=torch.ones((1, len(p)), dtype=torch.long, device=device), max_new_tokens=n, min_new_tokens=n, do_sample=True, top_p=0.95, temperature=1.0, top_k=0, pad_token_id=0, eos_token_id=None)
            produced += out.shape[1] - len(p)
        sync()
        dt = time.perf_counter() - t0
        ref = produced / dt
        print(f"[{size}] HF generate, one sequence at a time: {args.reference_prompts} x {n} tokens: {dt:.2f}s, {ref:.1f} tok/s")

        # For the record: generate() on the same left-padded batch.
        width = max(len(p) for p in prompts)
        ids = torch.zeros((len(prompts), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, p in enumerate(prompts):
            ids[r, width - len(p) :] = torch.tensor(p)
            mask[r, width - len(p) :] = 1
        sync()
        t0 = time.perf_counter()
        out = model.generate(ids.to(device), attention_mask=mask.to(device), max_new_tokens=n, min_new_tokens=n, do_sample=True, top_p=0.95, temperature=1.0, top_k=0, pad_token_id=0, eos_token_id=None)
        sync()
        dt = time.perf_counter() - t0
        batched = (out.shape[1] - width) * len(prompts) / dt
        print(f"[{size}] HF generate, same batch left-padded: {dt:.2f}s, {batched:.1f} tok/s")

        result[f"sampler_tok_s_{size}"] = round(ours, 1)
        result[f"hf_generate_tok_s_{size}"] = round(ref, 1)
        result[f"hf_generate_batched_tok_s_{size}"] = round(batched, 1)
        result[f"sampler_speedup_vs_hf_{size}"] = round(ours / ref, 2)
    result["threads"] = torch.get_num_threads()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
