"""Seconds per judged completion, expected against sampled scoring, same completions, same run.

    .venv/bin/python benchmarks/bench_judge.py                              # smollm2-135m, 4 completions
    .venv/bin/python benchmarks/bench_judge.py --model qwen2.5-coder-0.5b --completions 8 --max-tokens 300

Builds a tiny run dir by hand (eval/completions.jsonl with N short TinyStories-like continuations
of a base model, data/stories.jsonl) and runs `tinystories judge` on it twice, each time in a fresh
copy of that run dir (so the LLM cache cannot help) and in its own subprocess: once with
`judge.scoring=sampled`, once with `judge.scoring=expected`, both with the embedded backend,
`llm.model=<--model>`, `llm.mode=completion` and the same `judge.max_tokens` and temperature.
Only the main judgments are made: `judge.consistency_sample=0`, `judge.discrimination_sample=0`
(so `judge.originals=auto` reads no held-out file), `judge.reference=none` (no perplexity) and
`judge.contamination_n=0`. The order of the runs is `--order`; `expected` is the default reading
(every grade read right after the request, one request per completion) and `--order` may add
`expected-assessment` (`judge.assessment=true`: an assessment is sampled first, then each grade
line is one request).

Figure: wall seconds of the whole `tinystories judge` subprocess (Python start-up and one model
load included per run, the same for both) divided by the main rows in eval/judgments.jsonl (ok
or failed alike; the ok count is shown too). `judge_expected_vs_sampled_speedup` =
sampled s/completion / expected s/completion: > 1 means expected scoring is faster. The backend
requests each run made come from the stage's `llm` stats in manifest.json where present.
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BEGINNINGS = [
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park.",
    "Tom had a big red ball. One day, he went to the garden to play with his dog, Max.",
    "There was a small bird who lived in a tall tree. The bird wanted to fly to the sea.",
    "Sam and his mom went to the store. Sam saw a shiny toy car on the shelf.",
    "A little cat named Kitty was very hungry. She looked for food in the kitchen.",
    "Ben liked to dig in the sand. One sunny day, he found something hard under the sand.",
    "Mia had a new blue hat. She wanted to show it to her friend Anna.",
    "The sun was hot and the frog was thirsty. He hopped to the pond to find some water.",
]
CONTINUATIONS = [
    " One day, she saw a big dog. The dog was sad because it lost its ball. Lily helped the dog find the ball under a tree. The dog was happy and they played together all day.",
    " Max ran fast and got the ball. Tom laughed and threw it again. Then it started to rain, so they went inside and had warm milk. Tom hugged Max and said, \"You are my best friend.\"",
    " It flapped its wings and flew over the hills. It was tired, so it rested on a boat. A kind man gave it some bread. At last, the bird saw the blue sea and sang a happy song.",
    " He asked his mom, \"Can I have it?\" Mom said, \"You can have it if you help me carry the bags.\" Sam helped his mom, and she bought him the car. He played with it all the way home.",
    " She found a fish on the table, but Mom said no. Kitty waited and waited. Then Mom gave her a small bowl of milk. Kitty drank it all and purred.",
    " He dug and dug, and he found a little box. Inside the box was a shiny shell. Ben gave the shell to his sister, and she smiled. They kept it on the window.",
    " But the wind came and took the hat away. Mia ran after it. Anna caught the hat and gave it back. Mia said, \"Thank you!\" and they both wore the hat in turns.",
    " The water was cool and nice. He drank a lot and felt better. Then he met a duck, and they swam together. The frog was glad he came to the pond.",
]


def make_run(root: Path, n: int) -> Path:
    run = root / "template"
    (run / "eval").mkdir(parents=True)
    (run / "data").mkdir(parents=True)
    recs = []
    for i in range(n):
        j = i % len(BEGINNINGS)
        recs.append(
            {
                "model": "pretrain/1M", "kind": "base", "task": "continue", "prompt_id": f"b{i}", "sample_id": 0,
                "prompt": BEGINNINGS[j], "text": CONTINUATIONS[j], "prompt_tokens": 20, "completion_tokens": 50, "seed": 1,
            }
        )
    (run / "eval" / "completions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    stories = [{"id": f"s{i}", "text": b + c} for i, (b, c) in enumerate(zip(BEGINNINGS, CONTINUATIONS))]
    (run / "data" / "stories.jsonl").write_text("".join(json.dumps(s) + "\n" for s in stories))
    return run


def judge_once(template: Path, root: Path, scoring: str, args) -> dict:
    run = root / scoring
    shutil.copytree(template, run)  # fresh: no judgments, no LLM cache
    assessment = scoring == "expected-assessment"
    scoring = "expected" if assessment else scoring
    cmd = [
        sys.executable, "-c", "import sys; from tinystories.cli import main; sys.exit(main())",
        "judge", "--run-dir", str(run),
        "--set", "llm.backend=embedded", "--set", f"llm.model={args.model}", "--set", "llm.mode=completion",
        "--set", f"judge.scoring={scoring}", "--set", f"judge.max_tokens={args.max_tokens}", "--set", f"judge.assessment={str(assessment).lower()}",
        "--set", "judge.consistency_sample=0", "--set", "judge.discrimination_sample=0",
        "--set", "judge.originals=auto", "--set", "judge.reference=none", "--set", "judge.contamination_n=0",
    ]
    env = dict(os.environ, TINYSTORIES_NO_PROGRESS="1")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"judge ({scoring}) exited {proc.returncode}")
    rows = [json.loads(line) for line in (run / "eval" / "judgments.jsonl").read_text().splitlines() if line.strip()]
    main_rows = [r for r in rows if r.get("role") == "main"]
    out = {"wall_s": round(wall, 2), "judged": len(main_rows), "ok": sum(bool(r.get("ok")) for r in main_rows)}
    out["s_per_judged"] = round(wall / len(main_rows), 3) if main_rows else None
    manifest = run / "manifest.json"
    if manifest.is_file():
        rec = json.loads(manifest.read_text()).get("stages", {}).get("judge", {})
        llm = find_llm_stats(rec)
        if llm:
            out["backend_calls"] = llm.get("backend_calls")
            out["requests"] = llm.get("requests")
            out["completion_tokens"] = llm.get("completion_tokens")
            out["backend_s"] = round(llm.get("backend_seconds") or 0.0, 2)
        scoring_used = find_key(rec, "scoring")
        if scoring_used:
            out["scoring_used"] = scoring_used
    return out


def find_llm_stats(obj):
    """The stage result's `llm` stats, wherever the manifest record nests them."""
    if isinstance(obj, dict):
        if isinstance(obj.get("llm"), dict) and "backend_calls" in obj["llm"]:
            return obj["llm"]
        for v in obj.values():
            found = find_llm_stats(v)
            if found:
                return found
    return None


def find_key(obj, key):
    if isinstance(obj, dict):
        if isinstance(obj.get(key), str):
            return obj[key]
        for v in obj.values():
            found = find_key(v, key)
            if found:
                return found
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="a model name from the table or a .gguf path")
    ap.add_argument("--completions", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=400, help="judge.max_tokens for both runs (the judge's default)")
    ap.add_argument("--order", default="sampled,expected", help="which scoring runs first")
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_judge_") as tmp:
        root = Path(tmp)
        template = make_run(root, args.completions)
        for scoring in args.order.split(","):
            results[scoring] = judge_once(template, root, scoring, args)
            print(f"{scoring:>8}: {json.dumps(results[scoring])}", flush=True)
    s, e = results["sampled"]["s_per_judged"], results["expected"]["s_per_judged"]
    speedup = round(s / e, 3) if s and e else None
    print(f"sampled {s} s/completion, expected {e} s/completion: expected is {speedup}x as fast (wall, one model load per run)")
    print(
        json.dumps(
            {
                "bench": "judge", "model": args.model, "completions": args.completions, "max_tokens": args.max_tokens,
                **results,
                "sampled_s_per_judged": s, "expected_s_per_judged": e,
                "judge_expected_vs_sampled_speedup": speedup,
            }
        )
    )


if __name__ == "__main__":
    main()
