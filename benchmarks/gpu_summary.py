"""Summarise benchmarks/gpu_check.sh's JSON lines: which parts passed, and the issue's targets.

    python3 benchmarks/gpu_summary.py gpu_check.jsonl

Reads the part records that benchmarks/gpu_part.py wrote, prints a short table on stderr and
one JSON line on stdout: {"check": "summary", "parts": {name: ok}, "failed": [...],
"targets": {...}, "figures": {...}}. Targets (issue "GPU truth"): at 33M, MFU against the
published bf16 dense peak >= 40% and the fast path >= 3x HF's eager GPTNeoForCausalLM; logits
parity within bf16 tolerance. A target reads null when its part did not produce the figure.
Exits 1 when a part failed (a missed target is a finding, not a failure of the check).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TARGET_MFU_PUBLISHED = 0.40
TARGET_SPEEDUP_VS_HF = 3.0
TARGET_SIZE = "33M"
TRAIN_FIGURES = (
    "train_tok_s_fast_bf16_{s}", "train_tok_s_fast_bf16_compile_{s}", "train_tok_s_hf_{s}", "train_speedup_vs_hf_{s}", "train_mfu_published_{s}",
    "train_mfu_published_bf16_{s}", "train_mfu_published_bf16_compile_{s}", "train_mfu_bf16_{s}", "train_mfu_bf16_compile_{s}",
    "batch_{s}", "hf_batch_{s}",
)


def load(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip().startswith("{")]


def at_least(value, target):
    return None if value is None else value >= target


def summarise(records: list[dict]) -> dict:
    parts = {r["part"]: bool(r.get("ok")) for r in records if "part" in r}
    results = {r["part"]: r.get("result") or {} for r in records if "part" in r}
    figures: dict = {}
    for part, res in results.items():
        if res.get("bench") == "train":
            figures["matmul_peak_gflops"] = res.get("matmul_peak_gflops")
            figures["published_peak_tflops"] = res.get("published_peak_tflops")
            sizes = {k[len("batch_") :] for k in res if k.startswith("batch_")}
            for size in sorted(sizes):
                for pattern in TRAIN_FIGURES:
                    key = pattern.format(s=size)
                    if key in res:
                        figures[key] = res[key]
    parity = results.get("parity") or {}
    figures.update({k: v for k, v in parity.items() if k.startswith("parity_") and ("max_abs" in k or "_rel_" in k)})
    sampler = results.get("sampler") or {}
    figures.update({k: v for k, v in sampler.items() if k.startswith(("sampler_", "hf_generate_tok_s_"))})
    e2e = results.get("e2e") or {}
    figures.update({f"e2e_{k}": e2e.get(k) for k in ("killed_at_checkpoint_step", "resumed_from_step", "pretrain_val_loss", "sft_val_loss", "completions", "wall_s") if k in e2e})
    targets = {
        f"mfu_published_{TARGET_SIZE}>={TARGET_MFU_PUBLISHED:.2f}": at_least(figures.get(f"train_mfu_published_{TARGET_SIZE}"), TARGET_MFU_PUBLISHED),
        f"speedup_vs_hf_eager_{TARGET_SIZE}>={TARGET_SPEEDUP_VS_HF:g}x": at_least(figures.get(f"train_speedup_vs_hf_{TARGET_SIZE}"), TARGET_SPEEDUP_VS_HF),
        "parity_within_bf16_tolerance": parity.get("pass") if parity else None,
    }
    failed = [name for name, ok in parts.items() if not ok]
    return {"check": "summary", "ok": bool(parts) and not failed, "parts": parts, "failed": failed, "targets": targets, "figures": figures}


def table(summary: dict) -> str:
    rows = [f"{'part':<12}{'ok':<6}"] + [f"{name:<12}{'yes' if ok else 'NO':<6}" for name, ok in summary["parts"].items()]
    rows += [f"target {name}: {'met' if met else ('not met' if met is False else 'no figure')}" for name, met in summary["targets"].items()]
    rows += [f"  {k} = {v}" for k, v in summary["figures"].items()]
    return "\n".join(rows)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.exit("usage: gpu_summary.py GPU_CHECK_JSONL")
    summary = summarise(load(Path(argv[0])))
    print(table(summary), file=sys.stderr, flush=True)
    print(json.dumps(summary), flush=True)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
