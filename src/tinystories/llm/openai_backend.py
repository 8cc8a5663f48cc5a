"""The `openai` backend: any OpenAI-compatible endpoint (OpenAI, vLLM, llama.cpp's server, ...).

    tinystories llm "Write one sentence about a cat." --set llm.backend=openai \
        --set llm.base_urls=[http://127.0.0.1:8000/v1] --set llm.model=NAME

It makes one call per `generate` through the official `openai` client (AsyncOpenAI, one per
base URL, load spread by fewest requests in flight; llm/batch.py adds the Batch API) and turns every
failure into one of three kinds the LLMClient understands: TransientError (429, 5xx,
timeouts, dropped connections, garbage replies: retried with backoff, Retry-After honoured),
RequestError (this one request cannot be answered, e.g. 400 prompt too long: recorded as its
failure, the job goes on) and UserError (bad key, unknown model: stops the job with the fix).
The openai client's own retries are off (max_retries=0) so every retry is ours and counted.

The API key is read from the environment variable named by `llm.api_key_env` at start-up and
kept only in memory; it is never part of the identity (the cache key), a log or an error: every
piece of server text that reaches a message goes through `one_line`, which blanks it out
(llm/redact.py), whatever the failure.

Token log-probabilities (Request.top_logprobs): chat mode sends `logprobs: true, top_logprobs: k`,
completion mode `logprobs: k`; both reply shapes are read into one dict per generated token.
"""

from __future__ import annotations

import asyncio
import typing
import email.utils
import ipaddress
import os
import time
from urllib.parse import urlsplit

from tinystories.errors import UserError
import tinystories.llm.logprobs as token_logprobs
from tinystories.llm.positions import merged, position_requests
from tinystories.llm.base import RawResult, Request, RequestError, TokenLogprobs, TransientError
from tinystories.llm.redact import one_line, redact_secrets, remember_secret

if typing.TYPE_CHECKING:  # type hints only: the config module imports the backend registry
    from tinystories.llm.config import LLMConfig

# Local servers (llama.cpp, vLLM without --api-key) ignore the key, but the openai client
# refuses to start without one; this placeholder says what it is if a server ever logs it.
PLACEHOLDER_KEY = "no-key-needed-for-local-server"


def is_local_host(host: str) -> bool:
    """True for loopback, private and link-local addresses, localhost and single-label LAN names."""
    host = (host or "").strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost") or host.endswith(".local"):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        # A name without a dot ("gpu-box") cannot be a public internet host.
        return bool(host) and "." not in host
    return ip.is_loopback or ip.is_private or ip.is_link_local


def retry_after_seconds(headers) -> float | None:
    """The server's requested wait from `retry-after-ms` or `retry-after` (seconds or an HTTP date)."""
    if headers is None:
        return None
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(0.0, float(value) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def _error_message(exc) -> str:
    """The server's error message, one line, with the key blanked out (a server may quote the key
    it refused, and the message ends up on screen and in the manifest)."""
    body = getattr(exc, "body", None)
    message = getattr(exc, "message", None) or str(exc)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            message = str(inner["message"])
        elif isinstance(inner, str):
            message = inner
    elif isinstance(body, str) and body.strip():  # not JSON: a proxy's page, plain text
        message = body
    return one_line(message, 200)


def endpoint_urls(cfg: LLMConfig) -> list[str]:
    if not cfg.base_urls:
        raise UserError("llm.base_urls: the openai backend needs at least one endpoint, e.g. --set llm.base_urls=[http://127.0.0.1:8000/v1]")
    urls = []
    for url in cfg.base_urls:
        parts = urlsplit(str(url).strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UserError(f"llm.base_urls: {url!r} is not an http(s) URL; write it like http://127.0.0.1:8000/v1")
        urls.append(str(url).strip().rstrip("/"))
    return urls


def api_key(cfg: LLMConfig, urls: list[str]) -> str:
    """The key from the environment; a placeholder when every server is local; else a UserError."""
    key = os.environ.get(cfg.api_key_env, "").strip() if cfg.api_key_env else ""
    if key:
        remember_secret(key)
        return key
    remote = [u for u in urls if not is_local_host(urlsplit(u).hostname or "")]
    if remote:
        env = cfg.api_key_env or "OPENAI_API_KEY"
        raise UserError(
            f"llm.api_key_env: the environment variable {cfg.api_key_env or '(none)'} holds no API key, which {remote[0]} needs; "
            f"export {env}=<your key> (or point llm.api_key_env at the variable that holds it)"
        )
    return PLACEHOLDER_KEY


def request_body(cfg: LLMConfig, request: Request) -> tuple[str, dict]:
    """(path under the base URL, JSON body) for one request in `cfg.mode`."""
    body: dict = {"model": cfg.model}
    if cfg.mode == "chat":
        path = "/chat/completions"
        body["messages"] = list(request.messages) if request.messages is not None else [{"role": "user", "content": request.prompt}]
    else:
        path = "/completions"
        body["prompt"] = request.prompt if request.prompt is not None else "\n\n".join(m.get("content", "") for m in request.messages or ())
    body.update(max_tokens=request.max_tokens, temperature=request.temperature, top_p=request.top_p, seed=request.seed)
    if request.stop:
        body["stop"] = list(request.stop)
    if request.top_logprobs:
        if cfg.mode == "chat":
            body.update(logprobs=True, top_logprobs=request.top_logprobs)
        else:
            body["logprobs"] = request.top_logprobs
    return path, body


def parse_logprobs(cfg: LLMConfig, choice: dict, where: str) -> TokenLogprobs:
    """The per-token log-probabilities of a reply to a request that asked for them."""
    logprobs = choice.get("logprobs")
    if token_logprobs.missing(cfg.mode, logprobs):
        option = "logprobs/top_logprobs" if cfg.mode == "chat" else "logprobs"
        raise UserError(f"llm: {where} returned no token log-probabilities though the request asked for them ({option}); "
                        f"use a server that supports the {option} option, or do not ask for log-probabilities")
    try:
        return token_logprobs.from_reply(cfg.mode, logprobs)
    except (AttributeError, KeyError, TypeError, ValueError):
        raise TransientError(f"garbage reply from {where}: unreadable logprobs ({one_line(logprobs, 80)})") from None


def parse_reply(cfg: LLMConfig, reply: object, where: str, top_logprobs: int = 0) -> RawResult:
    """A RawResult from a completion's JSON; TransientError("garbage reply ...") when it is not one."""
    if not isinstance(reply, dict):  # the openai client hands back text when the reply is not JSON
        raise TransientError(f"garbage reply from {where}: not JSON ({one_line(reply, 80)!r})")
    if isinstance(reply.get("error"), (dict, str)) and not reply.get("choices"):  # an error object sent with status 200
        error = reply["error"]
        message = (error.get("message") or error.get("type") or "no message") if isinstance(error, dict) else error
        raise TransientError(f"error reply from {where} with status 200: {one_line(message, 160)}")
    try:
        choice = reply["choices"][0]
        text = choice["message"].get("content") if cfg.mode == "chat" else choice["text"]
        finish = choice.get("finish_reason")
    except (AttributeError, IndexError, KeyError, TypeError):
        raise TransientError(f"garbage reply from {where}: no choices[0] with a message") from None
    if text is not None and not isinstance(text, str):
        raise TransientError(f"garbage reply from {where}: the text is a {type(text).__name__}, not a string")
    usage = reply.get("usage") if isinstance(reply.get("usage"), dict) else {}
    try:
        prompt_tokens, completion_tokens = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    except (TypeError, ValueError):
        raise TransientError(f"garbage reply from {where}: usage is not token counts ({one_line(usage, 80)})") from None
    return RawResult(
        # A server that quotes the request back in its answer must not put the key into the data.
        text=redact_secrets(text or ""),
        finish_reason=finish,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        model=redact_secrets(str(reply.get("model") or cfg.model)),
        logprobs=parse_logprobs(cfg, choice, where) if top_logprobs else None,
    )


def identity(cfg: LLMConfig) -> dict:
    # No URLs: the same model behind several servers (or a moved server) shares one cache.
    return {"model": cfg.model, "mode": cfg.mode}


class OpenAIBackend:
    name = "openai"

    def __init__(self, cfg: LLMConfig):
        self.cfg = cfg
        self.max_concurrency = cfg.concurrency
        self.urls = endpoint_urls(cfg)
        self.__key = api_key(cfg, self.urls)  # name-mangled and never printed: see __repr__
        self.in_flight = [0] * len(self.urls)
        self.sent = [0] * len(self.urls)  # calls per URL, for the load-spreading check
        self._next = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        # Pay the one-time costs here, not inside the first rate-limited call (where they would
        # delay it past the next slot and make two requests arrive together): a TLS context
        # (~50 ms to build, shared by every client) and the clients themselves.
        import ssl

        self._ssl = ssl.create_default_context()
        self._clients: list | None = self._make_clients()

    def __repr__(self) -> str:
        return f"OpenAIBackend(model={self.cfg.model!r}, urls={self.urls!r})"

    def identity(self) -> dict:
        return identity(self.cfg)

    # -- clients -------------------------------------------------------------------------------
    def _make_clients(self) -> list:
        import openai

        timeout = openai.Timeout(self.cfg.timeout_s, connect=min(10.0, self.cfg.timeout_s))
        # type(DEFAULT_CONNECTION_LIMITS) is the Limits class of whichever httpx this openai version uses.
        limits = type(openai.DEFAULT_CONNECTION_LIMITS)(max_connections=self.cfg.concurrency, max_keepalive_connections=self.cfg.concurrency)
        return [
            openai.AsyncOpenAI(
                api_key=self.__key,
                base_url=url,
                max_retries=0,
                timeout=timeout,
                http_client=openai.DefaultAsyncHttpxClient(timeout=timeout, limits=limits, verify=self._ssl),
            )
            for url in self.urls
        ]

    def _get_clients(self) -> list:
        # httpx connection pools belong to the event loop they first ran in; LLMClient.complete()
        # runs a fresh loop per call and closes us at its end, so a new loop gets new clients.
        loop = asyncio.get_running_loop()
        if self._clients is None or (self._loop is not None and self._loop is not loop):
            self._clients = self._make_clients()
        self._loop = loop
        return self._clients

    def _pick(self) -> int:
        """The URL with the fewest requests in flight; ties go round-robin."""
        n = len(self.urls)
        start = self._next
        self._next = (start + 1) % n
        best = start
        for step in range(1, n):
            i = (start + step) % n
            if self.in_flight[i] < self.in_flight[best]:
                best = i
        return best

    async def aclose(self) -> None:
        clients, self._clients, self._loop = self._clients, None, None
        for client in clients or ():
            try:
                await client.close()
            except RuntimeError:  # a pool left over from an event loop that is gone
                pass

    def close(self) -> None:
        # The clients' pools belong to an event loop that has ended (aclose ran at its end); dropping
        # them is all that is left, and the next generate makes new ones.
        self._clients, self._loop = None, None

    # -- one call --------------------------------------------------------------------------------
    async def generate(self, request: Request) -> RawResult:
        if request.continuations:  # no such option in the API: one single-token request per position
            parts = await asyncio.gather(*(self.generate(r) for r in position_requests(request)))
            return merged(list(parts), self.cfg.model)
        import openai

        clients = self._get_clients()
        i = self._pick()
        url = self.urls[i]
        path, body = request_body(self.cfg, request)
        self.in_flight[i] += 1
        self.sent[i] += 1
        try:
            # The client's generic `post` (its documented way to call any endpoint) rather than
            # `chat.completions.create`: the same auth, base URL, timeouts and typed errors, without
            # the per-call TypedDict transform and model building, which cost about 0.6 ms of CPU per
            # request (a third of the whole; benchmarks/bench_llm_client.py), and read our plain
            # body the same way for chat and completion mode.
            reply = await clients[i].post(path, body=body, cast_to=object)
        except openai.APITimeoutError:
            raise TransientError(f"no answer from {url} within {self.cfg.timeout_s:g}s (llm.timeout_s)") from None
        except openai.APIConnectionError as exc:
            cause = exc.__cause__ or exc
            hint = " (is the server running, and is the URL right?)" if "Connect" in type(cause).__name__ else ""
            raise TransientError(f"connection to {url} failed: {one_line(cause) or type(cause).__name__}{hint}") from None
        except openai.APIStatusError as exc:
            raise self._status_error(exc, url) from None
        except openai.APIError as exc:  # anything else the client raises about a reply
            raise TransientError(f"bad reply from {url}: {type(exc).__name__}: {one_line(exc, 160)}") from None
        except ValueError as exc:  # a 200 whose body is not JSON (a proxy's error page, a torn reply)
            raise TransientError(f"garbage reply from {url}: not JSON ({one_line(exc, 120)})") from None
        finally:
            self.in_flight[i] -= 1
        return parse_reply(self.cfg, reply, url, request.top_logprobs)

    def _status_error(self, exc, url: str) -> Exception:
        status = exc.status_code
        detail = _error_message(exc)
        env = self.cfg.api_key_env
        if status in (401, 403):
            return UserError(
                f"llm: {url} refused the API key ({status}: {detail}); put a valid key in the environment variable {env} "
                f"(llm.api_key_env names the variable)"
            )
        if status == 404:
            return UserError(
                f"llm: {url} answered 404 for model {self.cfg.model!r} ({detail}); set llm.model to a model that server serves "
                f"(see {url}/models) and check llm.base_urls ends in /v1"
            )
        if status in (408, 409, 429) or status >= 500:
            return TransientError(f"{status} from {url}: {detail}", retry_after=retry_after_seconds(exc.response.headers))
        return RequestError(f"{status} from {url}: {detail}")
