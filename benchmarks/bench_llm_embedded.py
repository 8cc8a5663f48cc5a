"""Generation speed of the embedded backend against bare llama-cpp-python, in the same run.

    .venv/bin/python benchmarks/bench_llm_embedded.py                       # smollm2-135m, 3 rounds
    .venv/bin/python benchmarks/bench_llm_embedded.py --model qwen2.5-coder-1.5b --rounds 2

Each round asks for a ~300-token story, once through EmbeddedBackend behind LLMClient (cache
off, so every call reaches llama.cpp) and once through a plain `Llama.create_chat_completion`
loop on the same GGUF with the same prompt, seed and sampler settings. Rounds alternate between
the two so that load from other processes hits both alike. Each round has its own story words.

Equal work: the backend starts every request from an empty KV cache, because reusing the KV of a
prompt prefix seen before changes the logits (measured: up to 0.32 on qwen2.5-coder-0.5b), so an
answer would depend on the request before it. The bare loop does the same (`reset()`), so the
ratio measures the layer's overhead. `--reuse-prefix` lets the bare loop keep llama-cpp-python's
prefix reuse instead, to show what that reproducibility costs.

Figure: generated tokens per second of wall time (prompt processing included, model loading
excluded). The embedded layer adds a thread hop, a lock and bookkeeping per request, so the ratio
should be >= 0.9. Last line: one JSON object.

    .venv/bin/python benchmarks/bench_llm_embedded.py --model qwen2.5-coder-1.5b --batch-sizes 4,8,16

`--batch-sizes` measures batching instead: the same `--requests` story prompts through LLMClient
with `llm.batch_size` 1 (single stream) and then each size given, in one run, each from a fresh
backend (model loading excluded). Figures per size: tokens/s and stories/hour (requests answered
per hour of wall time), the RSS after it (the KV cache grows with the batch) and how many answers
equal the single-stream ones (batched decoding may round differently, see README). The JSON keys
`embedded_single_tok_s`, `embedded_batched_tok_s` (the best size) and `embedded_batched_vs_single`
sum it up; the target is >= 3x. The load average before and after is printed too: a batched
step is compute-bound, so other jobs on the same cores lower the ratio (measured 1.3x at load 5).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from tinystories.llm import LLMConfig, Request, make_client
from tinystories.llm.embedded import SAMPLER, EmbeddedBackend, default_threads, import_llama_cpp, llama_seed

WORDS = [("jump", "ball", "happy"), ("run", "tree", "big"), ("swim", "fish", "blue"), ("sing", "bird", "little"), ("dig", "hole", "brave")]


def prompt(i: int) -> str:
    verb, noun, adj = WORDS[i % len(WORDS)]
    return (
        # The paper's story prompt, asking for the long end (5 paragraphs) so that most rounds run to max_tokens.
        "Write a long story (5 paragraphs) which only uses very simple words that a 3 year old child would likely understand. "
        f'The story should use the verb "{verb}", the noun "{noun}" and the adjective "{adj}". Remember to only use simple words!'
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="a model name from the table or a .gguf path")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=300)
    ap.add_argument("--threads", type=int, default=0, help="0 = all cores")
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--reuse-prefix", action="store_true", help="let the bare loop reuse the previous prompt's KV prefix (not reproducible)")
    ap.add_argument("--batch-sizes", default="", help="e.g. 4,8,16: compare llm.batch_size single-stream against these instead")
    ap.add_argument("--requests", type=int, default=16, help="with --batch-sizes: story requests per batch size")
    args = ap.parse_args()
    os.environ.setdefault("TINYSTORIES_NO_PROGRESS", "1")
    if args.batch_sizes:
        batched_comparison(args, [int(b) for b in args.batch_sizes.split(",")])
        return

    llama_cpp = import_llama_cpp()  # the same OpenMP settings for both sides

    cfg = LLMConfig(backend="embedded", model=args.model, n_ctx=args.n_ctx, n_threads=args.threads)
    backend = EmbeddedBackend(cfg)
    client = make_client(cfg, None, backend=backend)
    reference = llama_cpp.Llama(
        model_path=str(backend.model_path), n_ctx=args.n_ctx, n_threads=backend.n_threads, n_threads_batch=backend.n_threads, seed=0, verbose=False
    )
    settings = dict(max_tokens=args.max_tokens, temperature=0.8, top_p=0.95)

    def embedded_round(i: int) -> tuple[int, float, str]:
        request = Request(key=str(i), messages=({"role": "user", "content": prompt(i)},), seed=i, **settings)
        t0 = time.perf_counter()
        [response] = client.complete([request])
        elapsed = time.perf_counter() - t0
        if not response.ok:
            raise SystemExit(f"embedded backend failed: {response.error}")
        return response.completion_tokens, elapsed, response.text

    def reference_round(i: int) -> tuple[int, float, str]:
        t0 = time.perf_counter()
        if not args.reuse_prefix:
            reference.reset()
        out = reference.create_chat_completion(messages=[{"role": "user", "content": prompt(i)}], seed=llama_seed(i), **settings, **SAMPLER)
        elapsed = time.perf_counter() - t0
        return out["usage"]["completion_tokens"], elapsed, out["choices"][0]["message"]["content"]

    # Warm-up (loads the embedded model, faults in the weights for both); not timed.
    client.complete([Request(key="warm", messages=({"role": "user", "content": "Hi"},), max_tokens=4, seed=0)])
    reference.create_chat_completion(messages=[{"role": "user", "content": "Hi"}], max_tokens=4, seed=0)

    totals = {"embedded": [0, 0.0], "llamacpp": [0, 0.0]}
    same_text = 0
    for i in range(1, args.rounds + 1):
        # Alternate which side goes first so a burst of outside load does not favour one side.
        order = [("embedded", embedded_round), ("llamacpp", reference_round)]
        if i % 2 == 0:
            order.reverse()
        texts = {}
        for side, fn in order:
            tokens, elapsed, texts[side] = fn(i)
            totals[side][0] += tokens
            totals[side][1] += elapsed
            print(f"round {i} {side:<9} {tokens:4d} tokens in {elapsed:6.2f}s = {tokens / elapsed:6.1f} tok/s", file=sys.stderr)
        same_text += texts["embedded"] == texts["llamacpp"]

    emb = totals["embedded"][0] / totals["embedded"][1]
    ref = totals["llamacpp"][0] / totals["llamacpp"][1]
    reference.close()
    backend.close()
    print(
        json.dumps(
            {
                "model": args.model,
                "threads": backend.n_threads,
                "machine_threads": default_threads(),
                "rounds": args.rounds,
                "reference_reuses_prefix": args.reuse_prefix,
                "embedded_tokens": totals["embedded"][0],
                "llamacpp_tokens": totals["llamacpp"][0],
                "rounds_with_identical_text": same_text,
                "embedded_tok_s": round(emb, 2),
                "llamacpp_tok_s": round(ref, 2),
                "embedded_vs_llamacpp": round(emb / ref, 3),
            }
        )
    )


def rss_mib() -> tuple[float, float]:
    """(current, peak) resident memory of this process in MiB, from /proc (Linux)."""
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return round(int(fields["VmRSS"].split()[0]) / 1024, 1), round(int(fields["VmHWM"].split()[0]) / 1024, 1)


def batched_comparison(args, batch_sizes: list[int]) -> None:
    requests = [Request(key=str(i), messages=({"role": "user", "content": prompt(i)},), max_tokens=args.max_tokens, temperature=0.8, top_p=0.95, seed=i)
                for i in range(args.requests)]  # fmt: skip
    runs, texts = {}, {}
    load_before = os.getloadavg()  # batching is compute-bound: other jobs on the cores cut it far more than one stream
    for batch_size in [1, *batch_sizes]:
        # timeout_s: a batched request waits for the whole batch's steps, far longer than one alone.
        cfg = LLMConfig(backend="embedded", model=args.model, n_ctx=args.n_ctx, n_threads=args.threads, batch_size=batch_size, timeout_s=3600)
        backend = EmbeddedBackend(cfg)
        client = make_client(cfg, None, backend=backend)
        client.complete([Request(key="warm", messages=({"role": "user", "content": "Hi"},), max_tokens=4, seed=0)])  # loads the model; not timed
        t0 = time.perf_counter()
        responses = client.complete(requests)
        elapsed = time.perf_counter() - t0
        if not all(r.ok for r in responses):
            raise SystemExit(f"batch_size={batch_size}: {sum(not r.ok for r in responses)} requests failed")
        tokens = sum(r.completion_tokens for r in responses)
        rss, peak = rss_mib()
        texts[batch_size] = {r.key: r.text for r in responses}
        runs[batch_size] = {"tokens": tokens, "seconds": round(elapsed, 1), "tok_s": round(tokens / elapsed, 2),
                            "stories_per_hour": round(len(responses) * 3600 / elapsed, 1), "rss_mib": rss, "peak_rss_mib": peak,
                            "same_text_as_single": sum(texts[batch_size][k] == texts[1][k] for k in texts[1])}  # fmt: skip
        print(f"batch_size {batch_size:2d}: {tokens} tokens in {elapsed:6.1f}s = {tokens / elapsed:6.1f} tok/s, RSS {rss} MiB", file=sys.stderr)
        backend.close()
    best = max(batch_sizes, key=lambda b: runs[b]["tok_s"])
    single = runs[1]["tok_s"]
    print(json.dumps({
        "model": args.model, "threads": default_threads(), "requests": args.requests, "max_tokens": args.max_tokens,
        "runs": {str(b): r for b, r in runs.items()}, "best_batch_size": best,
        "embedded_single_tok_s": single, "embedded_batched_tok_s": runs[best]["tok_s"],
        "embedded_single_stories_per_hour": runs[1]["stories_per_hour"], "embedded_batched_stories_per_hour": runs[best]["stories_per_hour"],
        "embedded_batched_vs_single": round(runs[best]["tok_s"] / single, 2),
        "load_average_before": [round(x, 2) for x in load_before], "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }))  # fmt: skip


if __name__ == "__main__":
    main()
