"""A real OpenAI-compatible HTTP server on 127.0.0.1 for tests and benchmarks.

It speaks enough of the API for the `openai` backend (/v1/chat/completions, /v1/completions,
/v1/models, and /v1/files + /v1/batches for the Batch API), token log-probabilities included,
and can be told to misbehave in every way FAULT_KINDS lists: 429 with or without Retry-After,
5xx, 4xx, HTML pages, an error object or no usable choice in a 200, truncated JSON, null
content, a hang past the client's timeout, a dropped connection, a text/plain 200 that echoes
the request headers (the key with them). It records every request with its arrival time, so
tests can check what really went over the wire (rate limits, retries, the Authorization header).

Why a hand-written asyncio HTTP/1.1 server rather than a web framework: a test needs to drop
a connection mid-request or send a body that is not JSON, which frameworks make hard, and
the benchmark needs a server cheap enough not to be the bottleneck.

In a test:

    with StubServer(ports=2) as stub:
        stub.faults.append(Fault("429", times=1, retry_after="1"))
        ... stub.urls ...; stub.records

As a separate process (the benchmark): `python tests/stub_openai.py [--delay S]` prints
`PORT <n>` on its first line of stdout, then serves until killed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
import uuid
from dataclasses import dataclass

from stub_faults import BODY_FAULTS, CONNECTION_FAULTS, FAULT_KINDS, HTML_PAGE, STATUS_FAULTS, Fault, FaultCycle, chat_logprobs, completion_logprobs

__all__ = ["BODY_FAULTS", "CONNECTION_FAULTS", "FAULT_KINDS", "STATUS_FAULTS", "Fault", "FaultCycle", "Record", "StubServer", "prompt_text", "reply_text"]

REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 429: "Too Many Requests",
           500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}  # fmt: skip

@dataclass
class Record:
    """One request as the stub saw it."""

    method: str
    path: str
    port: int
    headers: dict  # lower-case names
    body: dict | None
    text: str  # the prompt text (chat: the messages' contents joined by newlines)
    t_arrival: float  # time.monotonic() when the whole request had arrived
    outcome: str = "pending"  # "ok" or the fault kind
    t_done: float | None = None  # when the answer was written (None: never answered)


def prompt_text(body: dict | None) -> str:
    if not isinstance(body, dict):
        return ""
    if "messages" in body:
        return "\n".join(str(m.get("content", "")) for m in body.get("messages") or [] if isinstance(m, dict))
    prompt = body.get("prompt", "")
    return prompt if isinstance(prompt, str) else json.dumps(prompt)


def reply_text(body: dict) -> str:
    """The stub's deterministic answer: it echoes what it got, so tests can check parameters arrived."""
    return f"reply to [{prompt_text(body)}] seed={body.get('seed')} temperature={body.get('temperature')}"


class StubServer:
    def __init__(self, ports: int = 1, delay_s: float = 0.0, hang_s: float = 30.0, model: str = "stub-model"):
        self.n_ports = ports
        self.delay_s = delay_s  # every answer waits this long (a slow model)
        self.hang_s = hang_s
        self.model = model
        self.faults: list[Fault | FaultCycle] = []
        self.records: list[Record] = []
        self.ports: list[int] = []
        self.files: dict[str, dict] = {}  # Batch API: file id -> {"bytes": ..., "purpose": ...}
        self.batches: dict[str, dict] = {}
        self.batch_polls_until_done = 1  # a batch reports in_progress this many times before it completes
        self.refuse_batches = 0  # answer this many batch creations with 503 (a kill between upload and create)
        self.reply = reply_text  # body -> answer text; tests swap in their own writer
        self.logprobs = True  # answer requests for token log-probabilities; False: ignore them, as some servers do
        self._loop: asyncio.AbstractEventLoop | None = None
        self._servers: list[asyncio.base_events.Server] = []
        self._thread: threading.Thread | None = None
        self._transports: set = set()
        self._lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{p}/v1" for p in self.ports]

    @property
    def url(self) -> str:
        return self.urls[0]

    async def serve(self, port: int = 0) -> None:
        """Listen on `n_ports` ports (the first on `port`) in the running loop."""
        self._loop = asyncio.get_running_loop()
        for i in range(self.n_ports):
            srv = await self._loop.create_server(lambda: _Connection(self), "127.0.0.1", port if i == 0 else 0)
            self._servers.append(srv)
            self.ports.append(srv.sockets[0].getsockname()[1])

    def start(self) -> "StubServer":
        """Serve from a background thread (for tests in the same process)."""
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self.serve())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._shutdown())
            loop.close()

        self._thread = threading.Thread(target=run, name="stub-openai", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("stub server did not start")
        return self

    async def _shutdown(self) -> None:
        for srv in self._servers:
            srv.close()
        for transport in list(self._transports):
            transport.abort()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> "StubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- what tests look at ------------------------------------------------------------------
    def completions(self) -> list[Record]:
        """Records of completion calls (chat or plain), in arrival order."""
        with self._lock:
            return [r for r in self.records if r.path.endswith("/completions")]

    def reset(self) -> None:
        with self._lock:
            self.records.clear()
        self.faults.clear()

    # -- serving -----------------------------------------------------------------------------
    def _fault_for(self, text: str) -> Fault | None:
        for fault in self.faults:
            hit = fault.pick(text)
            if hit is not None:
                return hit
        return None

    def handle(self, conn: "_Connection", method: str, target: str, headers: dict, raw: bytes) -> None:
        body = None
        if raw and "json" in headers.get("content-type", ""):
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
        path = target.split("?", 1)[0]
        record = Record(method, path, conn.port, headers, body, prompt_text(body), time.monotonic())
        with self._lock:
            self.records.append(record)
        if path.endswith("/completions") and method == "POST":
            fault = self._fault_for(record.text)
            if fault is not None:
                record.outcome = fault.kind
                self._misbehave(conn, record, fault)
                return
            if self.delay_s:
                conn.later(self.delay_s, lambda: self._answer(conn, record))
            else:
                self._answer(conn, record)
            return
        status, payload = self._other(method, path, headers, raw)
        record.outcome = "ok" if status == 200 else str(status)
        if isinstance(payload, bytes):  # a file's content
            conn.send(status, payload, record=record, content_type="application/octet-stream")
        else:
            conn.send(status, json.dumps(payload).encode(), record=record)

    def _answer(self, conn: "_Connection", record: Record) -> None:
        body = record.body
        if not isinstance(body, dict) or not ("messages" in body or "prompt" in body):
            conn.send(400, _error_body("request body must be JSON with messages or prompt", "invalid_request_error"), record=record)
            return
        record.outcome = "ok"
        conn.send(200, json.dumps(self.completion(body)).encode(), record=record)

    def completion(self, body: dict) -> dict:
        text = self.reply(body)
        words = text.split()
        finish = "stop"
        max_tokens = body.get("max_tokens")
        if isinstance(max_tokens, int) and len(words) > max_tokens:
            words, finish = words[:max_tokens], "length"
            text = " ".join(words)
        usage = {"prompt_tokens": len(prompt_text(body).split()), "completion_tokens": len(words)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        created = int(time.time())
        if "messages" in body:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish, "logprobs": None}
            if self.logprobs and body.get("logprobs") is True:
                choice["logprobs"] = {"content": chat_logprobs(words, int(body.get("top_logprobs") or 0))}
            return {"id": "chatcmpl-stub", "object": "chat.completion", "created": created, "model": body.get("model", self.model), "choices": [choice], "usage": usage}
        choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
        if self.logprobs and isinstance(body.get("logprobs"), int) and body["logprobs"] > 0:
            choice["logprobs"] = completion_logprobs(words, body["logprobs"])
        return {"id": "cmpl-stub", "object": "text_completion", "created": created, "model": body.get("model", self.model), "choices": [choice], "usage": usage}

    def _misbehave(self, conn: "_Connection", record: Record, fault: Fault) -> None:
        kind = fault.kind
        if kind == "drop":
            conn.drop()
        elif kind == "hang":
            conn.later(self.hang_s, conn.drop)
        elif kind in ("html", "html200"):
            conn.send(502 if kind == "html" else 200, HTML_PAGE, record=record, content_type="text/html")
        elif kind == "echo":
            # Authorization first, as in the leak report: however short a cut of the reply a message keeps, the key is in it.
            headers = sorted(record.headers.items(), key=lambda kv: kv[0] != "authorization")
            echoed = "\r\n".join([f"{k}: {v}" for k, v in headers] + [f"{record.method} {record.path} HTTP/1.1"])
            conn.send(fault.status, echoed.encode("latin-1"), record=record, content_type="text/plain")
        elif kind in BODY_FAULTS:
            conn.send(200, self._bad_body(kind, record.body), record=record)
        else:
            status = int(kind)
            extra = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
            conn.send(status, _error_body(f"stub says {status}", "rate_limit_exceeded" if status == 429 else "stub_error"), extra, record=record)

    def _bad_body(self, kind: str, body: dict | None) -> bytes:
        """The JSON-typed 200 body of a BODY_FAULTS kind."""
        if kind == "garbage":
            return b'{"id": "chatcmpl-stub", "choices": [ <html>bad gateway'
        if kind == "error200":
            return _error_body("stub says: the model is overloaded", "server_error")
        if kind == "missing":
            return json.dumps({"id": "chatcmpl-stub", "object": "chat.completion", "model": self.model}).encode()
        good = self.completion(body if isinstance(body, dict) else {"messages": []})
        if kind == "truncated":
            whole = json.dumps(good).encode()
            return whole[: len(whole) // 2]
        if kind == "empty_choices":
            good["choices"] = []
        elif kind == "null_content":
            if "message" in good["choices"][0]:
                good["choices"][0]["message"]["content"] = None
            else:
                good["choices"][0]["text"] = None
        return json.dumps(good).encode()

    # -- models, files and batches -------------------------------------------------------------
    def _other(self, method: str, path: str, headers: dict, raw: bytes) -> tuple[int, dict | bytes]:
        parts = [p for p in path.split("/") if p]
        if parts[:1] == ["v1"]:
            parts = parts[1:]
        if parts == ["models"] and method == "GET":
            return 200, {"object": "list", "data": [{"id": self.model, "object": "model", "created": 0, "owned_by": "stub"}]}
        if parts == ["files"] and method == "POST":
            purpose, filename, content = _parse_multipart(headers.get("content-type", ""), raw)
            file_id = f"file-{uuid.uuid4().hex[:12]}"
            self.files[file_id] = {"bytes": content, "purpose": purpose, "filename": filename}
            return 200, _file_object(file_id, self.files[file_id])
        if len(parts) == 3 and parts[0] == "files" and parts[2] == "content" and method == "GET":
            f = self.files.get(parts[1])
            return (200, f["bytes"]) if f else (404, json.loads(_error_body("no such file", "not_found")))
        if len(parts) == 2 and parts[0] == "files" and method == "GET":
            f = self.files.get(parts[1])
            return (200, _file_object(parts[1], f)) if f else (404, json.loads(_error_body("no such file", "not_found")))
        if parts == ["batches"] and method == "POST":
            if self.refuse_batches > 0:
                self.refuse_batches -= 1
                return 503, json.loads(_error_body("stub refuses to create a batch", "server_error"))
            spec = json.loads(raw or b"{}")
            if spec.get("input_file_id") not in self.files:
                return 404, json.loads(_error_body("no such input file", "not_found"))
            batch_id = f"batch_{uuid.uuid4().hex[:12]}"
            self.batches[batch_id] = {"id": batch_id, "object": "batch", "endpoint": spec.get("endpoint"), "input_file_id": spec["input_file_id"],
                                      "completion_window": spec.get("completion_window", "24h"), "status": "validating", "created_at": int(time.time()),
                                      "output_file_id": None, "error_file_id": None, "polls": 0}
            return 200, _batch_view(self.batches[batch_id])
        if len(parts) == 2 and parts[0] == "batches" and method == "GET":
            batch = self.batches.get(parts[1])
            if batch is None:
                return 404, json.loads(_error_body("no such batch", "not_found"))
            batch["polls"] += 1
            if batch["status"] != "completed":
                if batch["polls"] > self.batch_polls_until_done:
                    self._run_batch(batch)
                else:
                    batch["status"] = "in_progress"
            return 200, _batch_view(batch)
        return 404, json.loads(_error_body(f"no route {method} {path}", "not_found"))

    def _run_batch(self, batch: dict) -> None:
        lines_out, lines_err = [], []
        for line in self.files[batch["input_file_id"]]["bytes"].decode().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            body = item.get("body") or {}
            fault = self._fault_for(prompt_text(body))
            if fault is not None:
                lines_err.append({"id": f"batch_req_{uuid.uuid4().hex[:8]}", "custom_id": item.get("custom_id"), "response": {"status_code": 500, "body": json.loads(_error_body("stub batch failure", "server_error"))}, "error": None})
                continue
            lines_out.append({"id": f"batch_req_{uuid.uuid4().hex[:8]}", "custom_id": item.get("custom_id"), "response": {"status_code": 200, "request_id": "req", "body": self.completion(body)}, "error": None})
        for name, lines in (("output_file_id", lines_out), ("error_file_id", lines_err)):
            if lines:
                file_id = f"file-{uuid.uuid4().hex[:12]}"
                self.files[file_id] = {"bytes": "".join(json.dumps(x) + "\n" for x in lines).encode(), "purpose": "batch_output", "filename": f"{name}.jsonl"}
                batch[name] = file_id
        batch["status"] = "completed"
        batch["request_counts"] = {"total": len(lines_out) + len(lines_err), "completed": len(lines_out), "failed": len(lines_err)}


def _error_body(message: str, code: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": code, "param": None, "code": code}}).encode()


def _file_object(file_id: str, f: dict) -> dict:
    return {"id": file_id, "object": "file", "bytes": len(f["bytes"]), "created_at": int(time.time()), "filename": f["filename"], "purpose": f["purpose"], "status": "processed"}


def _batch_view(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != "polls"}


def _parse_multipart(content_type: str, raw: bytes) -> tuple[str, str, bytes]:
    """(purpose, filename, file bytes) from a multipart/form-data upload."""
    boundary = content_type.split("boundary=", 1)[-1].strip().strip('"').encode()
    purpose, filename, content = "", "upload.jsonl", b""
    for part in raw.split(b"--" + boundary):
        if b"\r\n\r\n" not in part:
            continue
        head, data = part.split(b"\r\n\r\n", 1)
        data = data[:-2] if data.endswith(b"\r\n") else data
        head_text = head.decode("latin-1")
        if 'name="purpose"' in head_text:
            purpose = data.decode()
        elif 'name="file"' in head_text:
            content = data
            if 'filename="' in head_text:
                filename = head_text.split('filename="', 1)[1].split('"', 1)[0]
    return purpose, filename, content


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; clients send one request at a time (no pipelining)."""

    def __init__(self, server: StubServer):
        self.server = server
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.port = 0
        self.closed = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.port = transport.get_extra_info("sockname")[1]
        self.server._transports.add(transport)

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.server._transports.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
            try:
                method, target, _ = head[0].split(" ", 2)
            except ValueError:
                self.drop()
                return
            headers = {}
            for line in head[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0") or 0)
            if len(self.buf) < end + 4 + length:
                return
            body = bytes(self.buf[end + 4 : end + 4 + length])
            del self.buf[: end + 4 + length]
            self.server.handle(self, method, target, headers, body)

    def later(self, delay: float, fn) -> None:
        asyncio.get_running_loop().call_later(delay, lambda: None if self.closed else fn())

    def send(self, status: int, payload: bytes, extra: dict | None = None, record: Record | None = None, content_type: str = "application/json") -> None:
        if self.closed or self.transport is None:
            return
        lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}", f"Content-Type: {content_type}", f"Content-Length: {len(payload)}"]
        lines += [f"{k}: {v}" for k, v in (extra or {}).items()]
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload)
        if record is not None:
            record.t_done = time.monotonic()

    def drop(self) -> None:
        if self.transport is not None:
            self.transport.abort()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve a stub OpenAI-compatible API on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds every answer waits")
    args = parser.parse_args(argv)
    stub = StubServer(delay_s=args.delay)

    async def run() -> None:
        await stub.serve(args.port)
        print(f"PORT {stub.ports[0]}", flush=True)
        stub.records = _Discard()  # a long-running stub must not grow without bound
        await asyncio.Event().wait()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass
    return 0


class _Discard(list):
    def append(self, item) -> None:
        pass


if __name__ == "__main__":
    sys.exit(main())
