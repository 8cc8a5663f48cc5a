"""Overhead of the LLM client: the openai backend through LLMClient vs a bare httpx loop.

    .venv/bin/python benchmarks/bench_llm_client.py [--requests 2000] [--concurrency 64] [--rounds 2]

Both drive the same stub server (tests/stub_openai.py, in its own process, answering at once)
at the same concurrency, so the difference is what our layer costs per request: the openai
client's request building and response parsing, cache-key hashing, rate-limit bookkeeping,
validation and stats. The bare loop is the ceiling: httpx.AsyncClient posting the same JSON
and decoding the reply. Rounds alternate between the two and the best of each is kept (the
machine is shared). Target: client_vs_httpx >= 0.5.

Last line: {"client_req_s": ..., "httpx_req_s": ..., "client_vs_httpx": ..., "client_cpu_ms_per_req": ..., "httpx_cpu_ms_per_req": ...}
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def start_stub() -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "stub_openai.py")], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().split()
    if len(line) != 2 or line[0] != "PORT":
        proc.kill()
        raise SystemExit(f"stub server did not start: {line}")
    return proc, f"http://127.0.0.1:{line[1]}/v1"


def bench_client(url: str, n: int, concurrency: int, tag: str) -> tuple[float, float]:
    from tinystories.llm import LLMConfig, Request, make_client

    cfg = LLMConfig(backend="openai", base_urls=[url], model="stub-model", concurrency=concurrency, api_key_env="TINYSTORIES_BENCH_NO_KEY")
    client = make_client(cfg)  # no cache: every request goes over the wire
    requests = [Request(key=str(i), messages=({"role": "user", "content": f"{tag} story {i}"},), max_tokens=64) for i in range(n)]
    t0, c0 = time.perf_counter(), time.process_time()
    out = client.complete(requests, collect=True, description="bench")
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    client.close()
    bad = [r for r in out if not r.ok]
    if len(out) != n or bad:
        raise SystemExit(f"client: {len(out)} answers, {len(bad)} failed: {bad[:1]}")
    return n / wall, 1000 * cpu / n


def bench_httpx(url: str, n: int, concurrency: int, tag: str, module: str = "httpx") -> tuple[float, float]:
    httpx = importlib.import_module(module)

    async def run() -> tuple[float, float]:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as http:
            todo = iter(range(n))
            done = 0

            async def worker() -> None:
                nonlocal done
                for i in todo:
                    body = {"model": "stub-model", "messages": [{"role": "user", "content": f"{tag} story {i}"}], "max_tokens": 64,
                            "temperature": 1.0, "top_p": 1.0, "seed": 0}
                    r = await http.post("/chat/completions", json=body, headers={"Authorization": "Bearer x"})
                    r.raise_for_status()
                    if r.json()["choices"][0]["message"]["content"]:
                        done += 1

            t0, c0 = time.perf_counter(), time.process_time()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            if done != n:
                raise SystemExit(f"httpx: {done} of {n} answered")
            return n / wall, 1000 * cpu / n

    return asyncio.run(run())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("TINYSTORIES_NO_PROGRESS", "1")  # a bar on a benchmark's stderr is noise
    sys.path.insert(0, str(ROOT / "src"))

    stub, url = start_stub()
    try:
        bench_httpx(url, 200, args.concurrency, "warmup")
        if importlib.util.find_spec("httpx2"):
            bench_httpx(url, 200, args.concurrency, "warmup2", "httpx2")
        bench_client(url, 200, args.concurrency, "warmup")
        # httpx2 is the fork the openai client itself runs on (newer openai versions); when it is
        # installed, a bare loop on it is shown too, as the ceiling for the same transport.
        modules = ["httpx"] + (["httpx2"] if importlib.util.find_spec("httpx2") else [])
        client_runs, bare_runs = [], {m: [] for m in modules}
        for r in range(args.rounds):
            for m in modules:
                bare_runs[m].append(bench_httpx(url, args.requests, args.concurrency, f"{m}{r}", m))
                print(f"round {r + 1}: bare {m} {bare_runs[m][-1][0]:.0f} req/s ({bare_runs[m][-1][1]:.2f} ms CPU/req)", flush=True)
            client_runs.append(bench_client(url, args.requests, args.concurrency, f"c{r}"))
            print(f"round {r + 1}: LLMClient+openai {client_runs[-1][0]:.0f} req/s ({client_runs[-1][1]:.2f} ms CPU/req)", flush=True)
    finally:
        stub.terminate()
        stub.wait(10)
    client_req_s, httpx_req_s = max(r[0] for r in client_runs), max(r[0] for r in bare_runs["httpx"])
    # CPU per request in this process (the stub runs in another) hardly depends on how busy the
    # machine is, so it is the steadier figure when other jobs share the cores.
    result = {"client_req_s": round(client_req_s, 1), "httpx_req_s": round(httpx_req_s, 1),
              "client_vs_httpx": round(client_req_s / httpx_req_s, 3),
              "client_cpu_ms_per_req": round(min(r[1] for r in client_runs), 3),
              "httpx_cpu_ms_per_req": round(min(r[1] for r in bare_runs["httpx"]), 3)}
    if "httpx2" in bare_runs:
        httpx2_req_s = max(r[0] for r in bare_runs["httpx2"])
        result.update(httpx2_req_s=round(httpx2_req_s, 1), client_vs_httpx2=round(client_req_s / httpx2_req_s, 3),
                      httpx2_cpu_ms_per_req=round(min(r[1] for r in bare_runs["httpx2"]), 3))
    print(f"{args.requests} requests at concurrency {args.concurrency}, best of {args.rounds} rounds")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
