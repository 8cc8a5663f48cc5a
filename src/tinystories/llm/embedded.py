"""The `embedded` LLM backend: a small GGUF model run in-process on the CPU by llama.cpp.

    tinystories llm "Write one sentence about a cat." --set llm.model=qwen2.5-coder-1.5b

The default backend, so the demo needs no network and no key. The model comes from the table
in `tinystories.llm.models` (installed as PyPI packages) or is any .gguf path.

Why in-process through llama-cpp-python rather than a local server: one process, nothing to
start or stop, and llama.cpp is the fastest CPU runtime for quantised models. With the default
`llm.batch_size: 1` one request at a time: llama.cpp already uses every thread for one sequence,
so parallel calls would only contend. With `llm.batch_size` > 1 up to that many requests are
decoded together in one llama.cpp context (llm/embedded_batch.py): a CPU decode step costs
little more for 16 tokens than for one, so throughput grows with the batch.

Token log-probabilities (Request.top_logprobs) come from llama-cpp-python's own `logprobs` option,
which needs a context that keeps the logits of every position (logits_all): such requests run in
the second, scoring context that `token_logprobs` uses, so plain requests keep the lean one.
"""

from __future__ import annotations

import asyncio
import typing
import json
import math
import os
import threading
from pathlib import Path

from tinystories.errors import UserError
import tinystories.llm.logprobs as token_logprobs
from tinystories.llm.base import RawResult, Request, RequestError
from tinystories.llm.models import MODELS, file_sha256, is_path_like, lookup, resolve_model

if typing.TYPE_CHECKING:  # type hints only: the config module imports the backend registry
    from tinystories.llm.config import LLMConfig

# llama.cpp's own sampler defaults, fixed here because they change answers (so they are part of
# the cache identity): top_k and min_p cut the long tail that makes small models ramble.
SAMPLER = {"top_k": 40, "min_p": 0.05, "repeat_penalty": 1.0}


def default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def import_llama_cpp():
    """Import llama_cpp with OpenMP threads that sleep, not spin, while they wait.

    llama.cpp is built with OpenMP here, and libgomp's default spin-wait is ruinous on a shared
    machine: measured on the 2-core box with other jobs running, smollm2 from the main thread took
    7-9 CPU-seconds and 20-30 s for 32 tokens (1-2 tok/s) instead of 0.6 CPU-s and ~1.5 s. With
    PASSIVE both the main thread and worker threads run at full speed. libgomp reads the variable
    once, when it is loaded, hence before the import; a user's own setting wins.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import llama_cpp
    except ImportError:
        raise UserError("llm.backend: the embedded backend needs llama-cpp-python; run `make setup` or pip install llama-cpp-python") from None
    return llama_cpp


def llama_seed(seed: int) -> int:
    # llama.cpp seeds are uint32 and 0xFFFFFFFF means "random": keep every seed deterministic.
    seed &= 0xFFFFFFFF
    return 0xFFFFFFFE if seed == 0xFFFFFFFF else seed


def completion_params(request: Request) -> dict:
    """The create_*_completion arguments for `request`: its limits, seed and stops, our sampler."""
    return dict(
        max_tokens=request.max_tokens,
        temperature=request.temperature,
        top_p=request.top_p,
        seed=llama_seed(request.seed),
        stop=list(request.stop) or None,
        **SAMPLER,
    )


def top_tokens(llm, logits, k: int) -> dict[str, float]:
    """The k most likely next tokens (their text) with natural-log probabilities, from one row of logits."""
    import numpy as np

    peak = logits.max()
    log_norm = peak + np.log(np.exp(logits - peak).sum())
    best = np.argpartition(-logits, min(k, len(logits) - 1))[:k]
    out: dict[str, float] = {}
    for token in sorted(best.tolist(), key=lambda t: -logits[t]):
        text = llm.detokenize([token]).decode("utf-8", errors="replace")
        logprob = float(logits[token] - log_norm)
        out[text] = float(np.logaddexp(out[text], logprob)) if text in out else logprob  # two tokens, one text: both count
    return out


class EmbeddedBackend:
    name = "embedded"
    # Request.continuations are read from the raw prompt in one go (`_read_positions_sync`), in chat
    # mode too: expected scoring can use this backend whatever llm.mode is.
    reads_positions = True

    def __init__(self, cfg: LLMConfig):
        self.cfg = cfg
        self.max_concurrency = cfg.batch_size  # the client keeps this many requests in flight: one per batch slot
        self.n_threads = cfg.n_threads or default_threads()
        if cfg.model in MODELS or not is_path_like(cfg.model):
            self.spec = lookup(cfg.model)  # an unknown name fails here, before any work
            self.model_name = self.spec.name
            self.sha256 = self.spec.sha256
            self._path: Path | None = None  # joined lazily: a fully cached rerun needs no model at all
        else:
            self.spec = None
            self._path = resolve_model(cfg.model)
            self.model_name = self._path.name
            self.sha256 = file_sha256(self._path)
        self._llm = None
        self._scorer = None
        self._batcher = None
        # A threading lock, taken inside the worker thread: if the client times a call out, its
        # thread keeps running in llama.cpp, and no second call may enter the same context.
        self._lock = threading.Lock()
        self._in_flight: dict[str, asyncio.Future] = {}

    # -- the Backend protocol ----------------------------------------------------------------
    def identity(self) -> dict:
        identity = {"model": self.model_name, "gguf_sha256": self.sha256, "sampler": dict(SAMPLER)}
        if self.cfg.batch_size > 1:
            # Batched decoding can change an answer (llama.cpp's CPU kernels round differently with the
            # batch's shape), so batched answers are cached apart from unbatched ones and per batch size.
            identity["batch_size"] = self.cfg.batch_size
        return identity

    async def generate(self, request: Request) -> RawResult:
        # llama.cpp cannot be interrupted mid-call. When the client gives up waiting and retries the
        # same request, join the call already running instead of queueing a duplicate behind it.
        key = json.dumps([request.messages, request.prompt, request.max_tokens, request.temperature, request.top_p, request.seed, request.stop,
                          request.top_logprobs])
        future = self._in_flight.get(key)
        loop = asyncio.get_running_loop()
        if future is None or future.done() or future.get_loop() is not loop:
            if self.cfg.batch_size > 1:
                future = asyncio.wrap_future(self._batch_decoder().submit(request, self.cfg.mode, loop))
            else:
                future = asyncio.ensure_future(asyncio.to_thread(self._generate_sync, request))
            self._in_flight[key] = future
            future.add_done_callback(lambda f, k=key: self._in_flight.pop(k, None) if self._in_flight.get(k) is f else None)
        return await asyncio.shield(future)

    async def aclose(self) -> None:
        # LLMClient.complete calls this after every batch; the model stays loaded for the next one.
        # `close()` frees it.
        pass

    def close(self) -> None:
        if self._batcher is not None:
            self._batcher.close()  # first: its thread may be running an unbatched request under the lock
            self._batcher = None
        with self._lock:
            for llm in (self._llm, self._scorer):
                if llm is not None:
                    llm.close()
            self._llm = self._scorer = None

    # -- loading ---------------------------------------------------------------------------------
    @property
    def model_path(self) -> Path:
        if self._path is None:
            self._path = resolve_model(self.spec.name)
        return self._path

    def _load(self, logits_all: bool = False):
        llama_cpp = import_llama_cpp()
        try:
            return llama_cpp.Llama(
                model_path=str(self.model_path),
                n_ctx=self.cfg.n_ctx,
                n_threads=self.n_threads,
                n_threads_batch=self.n_threads,
                logits_all=logits_all,
                seed=0,
                verbose=False,
            )
        except ValueError as exc:
            raise UserError(f"llm.model: llama.cpp could not load {self.model_path} ({exc}); check the file or pick another llm.model") from None

    def _model(self):
        if self._llm is None:
            self._llm = self._load()
        return self._llm

    def _scoring_model(self):
        if self._scorer is None:
            # A second context with logits for every position; the weights are mmapped, so
            # they are shared with the generation context, not loaded twice.
            self._scorer = self._load(logits_all=True)
        return self._scorer

    def _batch_decoder(self):
        if self._batcher is None:
            from tinystories.llm.embedded_batch import BatchDecoder

            def load_model():
                with self._lock:
                    return self._model()  # the batch context shares this model's weights and tokenizer

            self._batcher = BatchDecoder(
                load_model, batch_size=self.cfg.batch_size, n_ctx=self.cfg.n_ctx, n_threads=self.n_threads,
                model_name=self.model_name, params_for=completion_params, run_unbatched=self._generate_sync,
            )  # fmt: skip
        return self._batcher

    # -- generation ------------------------------------------------------------------------------
    def _generate_sync(self, request: Request) -> RawResult:
        if request.continuations:
            return self._read_positions_sync(request)
        k = request.top_logprobs
        with self._lock:
            llm = self._scoring_model() if k else self._model()
            # Start each call from an empty KV cache: reusing a previous prompt's prefix changes
            # batch shapes and so float rounding, and the same request must give the same answer
            # whatever ran before it (the cache and the seeds promise that).
            llm.reset()
            params = completion_params(request)
            try:
                if self.cfg.mode == "chat":
                    if request.messages is None:
                        raise UserError("llm.mode: chat mode needs messages but the request has a plain prompt; set llm.mode=completion")
                    asked = {"logprobs": True, "top_logprobs": k} if k else {}
                    out = llm.create_chat_completion(messages=[dict(m) for m in request.messages], **asked, **params)
                    text = out["choices"][0]["message"]["content"] or ""
                else:
                    if request.prompt is None:
                        raise UserError("llm.mode: completion mode needs a prompt but the request has chat messages; set llm.mode=chat")
                    out = llm.create_completion(prompt=request.prompt, **({"logprobs": k} if k else {}), **params)
                    text = out["choices"][0]["text"]
            except ValueError as exc:
                if "exceed context window" in str(exc):
                    # Only this request is too long: record it as its failure, let the rest go on.
                    raise RequestError(f"prompt does not fit llm.n_ctx={self.cfg.n_ctx} ({exc}); raise llm.n_ctx") from None
                raise
        usage = out.get("usage") or {}
        return RawResult(
            text=text,
            finish_reason=out["choices"][0].get("finish_reason"),
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", 0)),
            model=self.model_name,
            logprobs=token_logprobs.from_reply(self.cfg.mode, out["choices"][0]["logprobs"]) if k else None,
        )

    def _read_positions_sync(self, request: Request) -> RawResult:
        """Request.continuations: the prompt evaluated once, then each continuation from its KV cache.

        Why by hand rather than one `create_completion` per position: those would evaluate the
        long shared prompt (the judge's request with the story) once per position, five to ten
        times per judgment; here it is evaluated once and each continuation costs its few tokens.
        A continuation is tokenized on its own, as `token_logprobs` does, and read in the lean
        generation context (logits of the last token only). Starts from an empty KV cache, like
        every request, so the answer never depends on what ran before.
        """
        import numpy as np
        from tinystories.llm.embedded_batch import completion_prompt_tokens

        llama_cpp = import_llama_cpp()
        with self._lock:
            llm = self._model()
            prompt = completion_prompt_tokens(llm, request.prompt)
            pieces = [llm.tokenize(c.encode("utf-8"), add_bos=False, special=False) for c in request.continuations]
            longest = len(prompt) + max(len(p) for p in pieces)
            if longest >= llm.n_ctx():
                raise RequestError(f"prompt does not fit llm.n_ctx={llm.n_ctx()} ({longest} tokens with its longest continuation); raise llm.n_ctx")
            llm.reset()
            llm.eval(prompt)
            n_vocab, positions, evaluated = llm.n_vocab(), [], len(prompt)
            current = list(prompt)  # the tokens whose KV cells the context holds
            for piece in pieces:
                wanted = prompt + piece
                # Keep what the previous continuation shares with this one ("Grammar: " before
                # "Grammar: 1"), but evaluate at least one token, whose logits are the position.
                # Llama.eval drops the KV cells from n_tokens on before it evaluates.
                keep = min(llama_cpp.Llama.longest_token_prefix(current, wanted), len(wanted) - 1)
                llm.n_tokens = keep
                llm.eval(wanted[keep:])
                evaluated += len(wanted) - keep
                current = wanted
                logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1), shape=(n_vocab,)).astype(np.float64)
                positions.append(top_tokens(llm, logits, request.top_logprobs))
        return RawResult(text="", finish_reason="positions", prompt_tokens=evaluated, completion_tokens=0, model=self.model_name, logprobs=positions)

    # -- scoring ---------------------------------------------------------------------------------
    def token_logprobs(self, prefix: str, continuation: str) -> list[float]:
        """log p(token | everything before it) for each token of `continuation`, given `prefix`.

        Computed from raw logits, not llama-cpp-python's `echo=True` logprobs, which are shifted
        by one position. The continuation is tokenized on its own (as a completion would be), so
        the scores are those of exactly its tokens, whatever the prefix ends with. Blocking, and
        safe to call from any thread (it takes the backend's lock).
        """
        import numpy as np

        with self._lock:
            llm = self._scoring_model()
            context = llm.tokenize(prefix.encode("utf-8"), add_bos=True, special=False) if prefix else []
            if not context:
                bos = llm.token_bos()
                if bos < 0:
                    raise ValueError("token_logprobs: empty prefix and the model has no BOS token to condition on")
                context = [bos]
            target = llm.tokenize(continuation.encode("utf-8"), add_bos=False, special=False)
            if not target:
                return []
            # Longer than the window: keep the last n_ctx tokens (the context's start goes first), as
            # a sliding-window LM would; only a continuation longer than the window loses tokens.
            tokens = (context + target)[-llm.n_ctx() :]
            n_target = min(len(target), len(tokens) - 1)
            llm.reset()
            llm.eval(tokens)
            # Row i-1 holds the logits that predict token i.
            rows = np.asarray(llm.scores[len(tokens) - n_target - 1 : len(tokens) - 1], dtype=np.float64)
            peak = rows.max(axis=1, keepdims=True)
            log_norm = peak[:, 0] + np.log(np.exp(rows - peak).sum(axis=1))
            picked = rows[np.arange(n_target), tokens[len(tokens) - n_target :]]
            return (picked - log_norm).tolist()

    def perplexity(self, prefix: str, continuation: str) -> float:
        """exp of the mean negative log-likelihood per token of `continuation` given `prefix`."""
        logprobs = self.token_logprobs(prefix, continuation)
        if not logprobs:
            raise ValueError("perplexity: the continuation has no tokens")
        return math.exp(-sum(logprobs) / len(logprobs))
