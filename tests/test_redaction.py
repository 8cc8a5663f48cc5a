"""The API key never reaches a file or the screen, whatever a server sends back.

A real `tinystories generate` runs through the CLI against a local server (tests/stub_openai.py)
that quotes the request back, Authorization header included: as a text/plain 200 (a proxy's
"not JSON" reply), as the body of an error status, inside an answer, or in a 401's message.
Then every file under the run dir (manifest, logs, failure records, cache) and stderr are
searched for the key.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from stub_openai import Fault, StubServer
from test_generate import run_dir  # noqa: F401  (the fixture: a run dir with a vocabulary)

from tinystories.cli import main
from tinystories.llm.redact import KEY_STANDIN, one_line, redact, remember_secret

# The variable the openai backend reads by default (llm.api_key_env): the test sets no other.
KEY_ENV = "OPENAI_API_KEY"


@pytest.fixture
def secret(monkeypatch) -> str:
    key = f"sk-redaction-{uuid.uuid4().hex}"
    monkeypatch.setenv(KEY_ENV, key)
    return key


def generate(run: Path, url: str, *sets: str) -> int:
    args = ["generate", "--run-dir", str(run)]
    for s in ("llm.backend=openai", f"llm.base_urls=[{url}]", "llm.model=stub-model", "llm.max_retries=1", "llm.backoff_s=0.01",
              "llm.max_attempts=2", "llm.timeout_s=5", "llm.concurrency=2", "generate.num_stories=3", *sets):  # fmt: skip
        args += ["--set", s]
    return main(args)


def assert_key_nowhere(run: Path, secret: str, stderr: str) -> list[Path]:
    """No file under the run dir and not stderr holds the key, nor the start of it (a message cut mid-key)."""
    start = secret[: len("sk-redaction-") + 8]
    files = [p for p in run.rglob("*") if p.is_file()]
    for path in files:
        data = path.read_bytes()
        assert secret.encode() not in data, f"the API key leaked into {path.relative_to(run)}"
        assert start.encode() not in data, f"the start of the API key leaked into {path.relative_to(run)}"
    assert secret not in stderr and start not in stderr, f"the API key leaked onto stderr: {stderr[-500:]}"
    return files


@pytest.mark.parametrize("status", [200, 503, 400], ids=["not-json-200", "retried-503", "refused-400"])
def test_a_server_echoing_the_request_headers_leaks_no_key(run_dir, secret, capfd, status):
    with StubServer() as stub:
        stub.faults.append(Fault("echo", status=status, times=10**6))
        code = generate(run_dir, stub.url)
        records = stub.completions()
    captured = capfd.readouterr()
    assert records, "the stage must have called the server"
    assert all(r.headers["authorization"] == f"Bearer {secret}" for r in records), "the key is sent to the server"
    assert code in (0, 2), f"generate ends normally or with its one-line error, not a crash (exit {code})"
    files = assert_key_nowhere(run_dir, secret, captured.err + captured.out)
    assert any(p.name == "manifest.json" for p in files), "the manifest was written and searched"
    log = run_dir / "logs" / "generate.log"
    assert log.exists() and log.stat().st_size > 0, "the stage log was written and searched"
    # The failure reasons still say what went wrong, with the key blanked out (once, not mangled).
    reported = "".join(p.read_text(errors="replace") for p in files if p.suffix in (".json", ".jsonl", ".log")) + captured.err
    assert f"Bearer {KEY_STANDIN} " in reported, "the echoed header is reported, blanked"
    assert f"{KEY_STANDIN} key>" not in reported, "blanking twice leaves the stand-in as it was"


def test_a_key_quoted_in_an_answer_or_a_refusal_leaks_no_key(run_dir, secret, capfd):
    with StubServer() as stub:
        stub.reply = lambda body: f"Once upon a time a server was told {secret} and said it."
        assert generate(run_dir, stub.url, "llm.max_attempts=1") in (0, 2)

    class Quoting(StubServer):
        def _misbehave(self, conn, record, fault):
            conn.send(401, json.dumps({"error": {"message": f"Incorrect API key provided: {secret}"}}).encode(), record=record)

    with Quoting() as refusing:
        refusing.faults.append(Fault("401", times=10**6))
        assert generate(run_dir, refusing.url, "generate.num_stories=5") == 2
    captured = capfd.readouterr()
    assert "refused the API key" in captured.err, "the 401 is reported"
    assert_key_nowhere(run_dir, secret, captured.err + captured.out)


def test_redaction_blanks_keys_before_cutting_and_names_html_pages():
    key = f"sk-cut-{uuid.uuid4().hex}"
    remember_secret(key)
    text = f"authorization: Bearer {key} and more"
    assert key not in redact(text) and KEY_STANDIN in redact(text), "a remembered key is blanked"
    assert "sk-cut" not in one_line(text, 30), "no part of a key survives the cut"
    assert redact("Bearer some-unknown-token") == f"Bearer {KEY_STANDIN}", "a bearer token is blanked even when unknown"
    assert redact(redact(text)) == redact(text), "blanking is idempotent"
    assert one_line("<html><head><title>502 Bad Gateway</title></head><body>x</body></html>") == "an HTML page (502 Bad Gateway)"
    remember_secret("ab")
    assert redact("ab cd") == "ab cd", "a string too short to be a key is not treated as one"
