"""OpenAI Batch API: send a large job as one batch (half price at OpenAI) and collect it into the cache.

    from tinystories.llm.batch import run_batch
    summary = run_batch(cfg.llm, requests, rundir.path("cache/llm"), rundir.path("cache/llm/batch_generate.json"))
    client = make_client(cfg.llm, rundir.path("cache/llm"))
    client.complete(requests, ...)  # every answered request is now a cache hit; the rest go live

The answers land in the same on-disk cache, under the same keys, as live calls, so the stage
code does not change: it runs its usual LLMClient loop afterwards, which serves the batch's
answers from the cache and sends only what the batch failed to answer.

Resumable: the state file (written atomically after each step) holds the uploaded file id
and the batch id, never the key. A rerun after a kill resumes the same batch: it creates the
batch from an already uploaded file, or polls a submitted one, instead of paying twice.
One call submits at most one batch (`max_requests`, the API's limit is 50,000 requests);
call again to send what is still missing.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Iterable

from tinystories.errors import UserError
from tinystories.llm.base import Request, TransientError
from tinystories.llm.cache import ResponseCache, cache_key
from tinystories.llm.config import LLMConfig
from tinystories.llm.openai_backend import api_key, endpoint_urls, identity, parse_reply, request_body
from tinystories.llm.redact import one_line
from tinystories.progress import progress_bar
from tinystories.io.rundir import now_iso, read_json, write_json

log = logging.getLogger(__name__)

TERMINAL = ("completed", "failed", "expired", "cancelled")


def batch_lines(cfg: LLMConfig, requests: Iterable[Request]) -> dict[str, dict]:
    """custom_id -> one line of the batch input file; the custom_id is the request's cache key,
    so identical requests are sent once and each answer goes straight to its cache slot. Requests that
    ask for token log-probabilities are left to the live loop: a batch result line does not say what
    its request asked for, so it could not be read back with them."""
    ident = identity(cfg)
    lines: dict[str, dict] = {}
    for request in requests:
        if request.top_logprobs:
            continue
        key = cache_key(ident, cfg.mode, request)
        if key not in lines:
            path, body = request_body(cfg, request)
            lines[key] = {"custom_id": key, "method": "POST", "url": "/v1" + path, "body": body}
    return lines


def _client(cfg: LLMConfig):
    import openai

    url = endpoint_urls(cfg)[0]  # a batch lives on one server
    # Here the openai client's own retries are right: these few control calls (upload, create,
    # poll, download) are not the per-request traffic that LLMClient counts.
    return openai.OpenAI(api_key=api_key(cfg, [url]), base_url=url, max_retries=cfg.max_retries, timeout=cfg.timeout_s), url


def _api_call(what: str, url: str, fn):
    import openai

    try:
        return fn()
    except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
        raise UserError(f"llm batch: {url} refused the API key while trying to {what} ({exc.status_code}); check the key in llm.api_key_env") from None
    except openai.NotFoundError as exc:
        raise UserError(f"llm batch: {url} has no Batch API or no such object while trying to {what} (404: {one_line(exc.message, 160)}); "
                        f"the Batch API needs a server that implements /v1/files and /v1/batches") from None
    except openai.APIStatusError as exc:
        raise UserError(f"llm batch: {url} answered {exc.status_code} while trying to {what} ({one_line(exc.message, 160)}); rerun to resume") from None
    except openai.APIConnectionError as exc:
        raise UserError(f"llm batch: cannot reach {url} to {what} ({one_line(exc.__cause__ or exc, 120)}); rerun to resume") from None


def run_batch(
    cfg: LLMConfig,
    requests: Iterable[Request],
    cache_dir: str | Path,
    state_path: str | Path,
    *,
    wait: bool = True,
    poll_s: float = 30.0,
    max_wait_s: float | None = None,
    completion_window: str = "24h",
    max_requests: int = 50_000,
) -> dict:
    """Answer `requests` through the Batch API into the cache at `cache_dir`. Returns a summary.

    wait=False submits and returns (collect later by calling again); max_wait_s gives up waiting
    (the batch keeps running and the next call resumes it). status in the summary is the batch's
    status, or "nothing to do" when every request is already in the cache.
    """
    if cfg.backend != "openai":
        raise UserError(f"llm.backend: the Batch API needs the openai backend, not {cfg.backend!r}")
    state_path = Path(state_path)
    state = read_json(state_path) if state_path.exists() else {}
    cache = ResponseCache(cache_dir)
    try:
        client, url = _client(cfg)
        with client:
            if state.get("phase") in ("uploaded", "submitted"):
                log.info("resuming batch %s from %s", state.get("batch_id") or state.get("input_file_id"), state_path)
            else:
                lines = batch_lines(cfg, requests)
                pending = [key for key in lines if cache.get(key) is None]
                summary = {"status": "nothing to do", "requests": len(lines), "already_cached": len(lines) - len(pending)}
                if not pending:
                    return summary
                pending = pending[:max_requests]
                data = "".join(json.dumps(lines[key], ensure_ascii=False) + "\n" for key in pending).encode()
                uploaded = _api_call("upload the batch file", url, lambda: client.files.create(file=("requests.jsonl", data, "application/jsonl"), purpose="batch"))
                state = {"phase": "uploaded", "input_file_id": uploaded.id, "endpoint": lines[pending[0]]["url"], "mode": cfg.mode,
                         "model": cfg.model, "base_url": url, "submitted": len(pending), "already_cached": summary["already_cached"],
                         "uploaded_at": now_iso()}
                write_json(state_path, state)
            if state["phase"] == "uploaded":
                batch = _api_call("create the batch", url, lambda: client.batches.create(
                    input_file_id=state["input_file_id"], endpoint=state["endpoint"], completion_window=completion_window))
                state.update(phase="submitted", batch_id=batch.id, submitted_at=now_iso())
                write_json(state_path, state)
            if not wait:
                return _summary(state, "submitted")
            batch = _poll(client, url, state, poll_s, max_wait_s)
            if batch.status not in TERMINAL:  # whatever the server calls it: its text, so through one_line
                return _summary(state, one_line(batch.status, 60))
            answered, failures = _collect(client, url, batch, dataclasses.replace(cfg, mode=state["mode"]), cache)
            state.update(phase="collected", status=batch.status, answered=answered, failed=sum(failures.values()),
                         failures=failures, collected_at=now_iso())
            if batch.status == "failed" and getattr(batch, "errors", None):
                state["errors"] = [one_line(getattr(e, "message", e), 200) for e in (batch.errors.data or [])][:5]
            write_json(state_path, state)
            return _summary(state, batch.status)
    finally:
        cache.close()


def _summary(state: dict, status: str) -> dict:
    keys = ("batch_id", "submitted", "already_cached", "answered", "failed", "failures", "errors")
    return {"status": status, **{k: state[k] for k in keys if k in state}}


def _poll(client, url: str, state: dict, poll_s: float, max_wait_s: float | None):
    t0 = time.monotonic()
    with progress_bar(f"batch {state['batch_id']}", state.get("submitted"), unit="req") as bar:
        while True:
            batch = _api_call("check the batch", url, lambda: client.batches.retrieve(state["batch_id"]))
            counts = getattr(batch, "request_counts", None)
            done = (getattr(counts, "completed", 0) or 0) + (getattr(counts, "failed", 0) or 0) if counts else 0
            bar.set(done, status=one_line(batch.status, 60))
            if batch.status in TERMINAL:
                return batch
            if max_wait_s is not None and time.monotonic() - t0 + poll_s > max_wait_s:
                log.info("batch %s still %s after %.0fs; rerun to keep waiting", one_line(batch.id, 80), one_line(batch.status, 60), time.monotonic() - t0)
                return batch
            time.sleep(poll_s)


def _collect(client, url: str, batch, cfg: LLMConfig, cache: ResponseCache) -> tuple[int, dict]:
    """Put every answered line into the cache; count the rest by reason (they go live later)."""
    answered, failures = 0, {}
    for file_id in (batch.output_file_id, batch.error_file_id):
        if not file_id:
            continue
        text = _api_call("download the batch results", url, lambda: client.files.content(file_id).text)
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                custom_id = item["custom_id"]
            except (ValueError, KeyError, TypeError):
                failures["unreadable result line"] = failures.get("unreadable result line", 0) + 1
                continue
            response = item.get("response") or {}
            if response.get("status_code") == 200:
                try:
                    cache.put(custom_id, parse_reply(cfg, response.get("body"), f"batch {batch.id}"))
                    answered += 1
                    continue
                except TransientError as exc:
                    reason = str(exc).split(":")[0]
            else:
                error = item.get("error") or (response.get("body") or {}).get("error") or {}
                reason = f"{response.get('status_code') or 'error'}: {one_line(error.get('message', 'no answer') if isinstance(error, dict) else error, 120)}"
            failures[reason] = failures.get(reason, 0) + 1
    return answered, failures
