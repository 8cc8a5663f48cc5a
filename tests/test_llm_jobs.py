"""Long `openai` jobs against tests/stub_openai.py: killed and resumed, and sent through the Batch API."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from stub_openai import Fault, StubServer
from test_llm_openai import NO_KEY_ENV, _no_key, chat, counts_by_text, llm_cfg, stub  # noqa: F401  (_no_key, stub: fixtures)

from tinystories.errors import UserError
from tinystories.llm import make_client
from tinystories.io.rundir import read_jsonl


# -- kill and resume ---------------------------------------------------------------------------------
JOB_SCRIPT = r'''
"""A stage-like LLM job: skips keys already in the output, appends answers as they arrive."""
import sys
from pathlib import Path

from tinystories.llm import LLMConfig, Request, make_client
from tinystories.io.rundir import JsonlWriter, read_jsonl

url, out_path, cache_dir, n = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
done = {rec["key"] for rec in read_jsonl(out_path)} if out_path.exists() else set()
cfg = LLMConfig(backend="openai", base_urls=[url], model="stub-model", concurrency=4, api_key_env="TINYSTORIES_TEST_UNSET_KEY")
client = make_client(cfg, cache_dir)
todo = (Request(key=f"s{i}", messages=({"role": "user", "content": f"story {i}"},), max_tokens=20) for i in range(n) if f"s{i}" not in done)
with JsonlWriter(out_path) as out:
    client.complete(todo, on_result=lambda r: out.write({"key": r.key, "text": r.text, "cached": r.cached, "error": r.error}), collect=False)
client.close()
'''


def _run_job(script: Path, url: str, out: Path, cache: Path, n: int) -> subprocess.Popen:
    env = {**os.environ, "TINYSTORIES_NO_PROGRESS": "1"}
    env.pop(NO_KEY_ENV, None)
    return subprocess.Popen([sys.executable, str(script), url, str(out), str(cache), str(n)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_killed_job_resumes_without_losing_or_repeating_answers(tmp_path):
    n = 40
    script = tmp_path / "job.py"
    script.write_text(JOB_SCRIPT)
    out, cache = tmp_path / "answers.jsonl", tmp_path / "cache"
    with StubServer(delay_s=0.2) as stub:  # 40 answers, 4 at a time: a 2 s job to kill halfway
        proc = _run_job(script, stub.url, out, cache, n)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and sum(1 for _ in read_jsonl(out)) >= n // 2:
                break
            time.sleep(0.005)
        t_kill = time.monotonic()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
        first = list(read_jsonl(out))
        first_keys = [r["key"] for r in first]
        assert n // 2 <= len(first_keys) < n and len(set(first_keys)) == len(first_keys)
        answered_before_kill = {r.text for r in stub.completions() if r.t_done is not None and r.t_done < t_kill - 0.5}

        rerun = _run_job(script, stub.url, out, cache, n)
        _, err = rerun.communicate(timeout=60)
        assert rerun.returncode == 0, err.decode()
        records = list(read_jsonl(out))
        keys = [r["key"] for r in records]
        assert len(keys) == n and set(keys) == {f"s{i}" for i in range(n)}  # none lost, none twice
        assert all(r["error"] is None and r["text"] for r in records)
        asked = counts_by_text(stub)
        for key in first_keys:  # skipped on resume: the server never saw them again
            assert asked[f"story {key[1:]}"] == 1, key
        for text in answered_before_kill:  # answered before the kill: in the output or the cache, never asked twice
            assert asked[text] == 1, text
        assert max(asked.values()) <= 2  # at most the requests in flight at the kill were asked again
        before = len(stub.completions())

        # The cache holds every answer: a fresh output (a stage redone) costs no request at all.
        fresh = tmp_path / "fresh.jsonl"
        third = _run_job(script, stub.url, fresh, cache, n)
        _, err = third.communicate(timeout=60)
        assert third.returncode == 0, err.decode()
        again = list(read_jsonl(fresh))
        assert len(again) == n and all(r["cached"] for r in again)
        assert len(stub.completions()) == before
        assert {r["key"]: r["text"] for r in again} == {r["key"]: r["text"] for r in records}


# -- Batch API ------------------------------------------------------------------------------------
def _posts(stub: StubServer, path: str) -> int:
    return sum(1 for r in stub.records if r.method == "POST" and r.path == path)


def test_batch_answers_land_in_the_cache_and_failures_go_live(stub, tmp_path):
    from tinystories.llm.batch import run_batch

    cfg = llm_cfg(stub, base_urls=stub.urls[:1], max_retries=1)
    stub.faults.append(Fault("500", match="poison", times=10**6))
    requests = [chat(str(i)) for i in range(5)] + [chat("dup", "prompt 0"), chat("bad", "poison")]
    summary = run_batch(cfg, requests, tmp_path / "cache", tmp_path / "batch.json", poll_s=0.01)
    assert summary["status"] == "completed" and summary["submitted"] == 6  # "dup" is the same request as "0"
    assert summary["answered"] == 5 and summary["failed"] == 1 and summary["failures"] == {"500: stub batch failure": 1}
    [upload] = [r for r in stub.records if r.path == "/v1/files"]
    assert b"poison" in stub.files[json.loads((tmp_path / "batch.json").read_text())["input_file_id"]]["bytes"]
    assert upload.method == "POST" and len(stub.completions()) == 0

    client = make_client(cfg, tmp_path / "cache")
    out = {r.key: r for r in client.complete(requests)}
    client.close()
    assert all(out[k].cached and out[k].ok for k in ["0", "1", "2", "3", "4", "dup"])
    assert out["0"].text == out["dup"].text == "reply to [prompt 0] seed=0 temperature=1.0"
    assert not out["bad"].ok  # the one the batch could not answer went live (and failed again)
    assert [r.text for r in stub.completions()] == ["poison", "poison"]


def test_batch_resumes_by_id_and_never_pays_twice(stub, tmp_path, monkeypatch):
    from tinystories.llm.batch import run_batch

    secret = f"sk-batch-{uuid.uuid4().hex}"
    monkeypatch.setenv("TS_BATCH_KEY", secret)
    cfg = llm_cfg(stub, base_urls=stub.urls[:1], api_key_env="TS_BATCH_KEY", max_retries=0)
    requests = [chat(str(i)) for i in range(4)]
    state = tmp_path / "batch.json"

    # Killed between upload and create: the rerun creates the batch from the uploaded file.
    stub.refuse_batches = 1
    with pytest.raises(UserError, match="rerun to resume"):
        run_batch(cfg, requests, tmp_path / "cache", state, poll_s=0.01)
    assert json.loads(state.read_text())["phase"] == "uploaded"
    submitted = run_batch(cfg, requests, tmp_path / "cache", state, wait=False)
    assert submitted["status"] == "submitted" and json.loads(state.read_text())["phase"] == "submitted"
    # Killed while waiting: the rerun polls the same batch.
    stub.batch_polls_until_done = 3
    still = run_batch(cfg, requests, tmp_path / "cache", state, poll_s=0.01, max_wait_s=0.0)
    assert still["status"] == "in_progress" and still["batch_id"] == submitted["batch_id"]
    done = run_batch(cfg, requests, tmp_path / "cache", state, poll_s=0.01)
    assert done["status"] == "completed" and done["batch_id"] == submitted["batch_id"] and done["answered"] == 4
    assert _posts(stub, "/v1/files") == 1 and len(stub.batches) == 1
    # Everything is cached now: no upload, no batch, no call.
    assert run_batch(cfg, requests, tmp_path / "cache", state)["status"] == "nothing to do"
    assert _posts(stub, "/v1/files") == 1 and len(stub.batches) == 1 and len(stub.completions()) == 0
    assert all(r.headers["authorization"] == f"Bearer {secret}" for r in stub.records)
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_requests_for_logprobs_are_left_to_the_live_loop(stub, tmp_path):
    from tinystories.llm.batch import run_batch

    cfg = llm_cfg(stub, base_urls=stub.urls[:1])
    requests = [chat("plain"), chat("scored", "score me", top_logprobs=2)]
    summary = run_batch(cfg, requests, tmp_path / "cache", tmp_path / "batch.json", poll_s=0.01)
    assert summary["submitted"] == 1, "only the plain request goes into the batch"
    out = {r.key: r for r in make_client(cfg, tmp_path / "cache").complete(requests)}
    assert out["plain"].cached and not out["scored"].cached, "the batch answered the plain one; the scored one went live"
    assert out["scored"].logprobs and len(out["scored"].logprobs) == out["scored"].completion_tokens
