"""Continuous batching for the embedded backend: up to `llm.batch_size` sequences decoded together.

A llama.cpp decode step of many tokens costs far less per token than one of a single token (the
weights are read once per step, not once per token), so decoding many requests together raises
throughput. This module owns one llama.cpp context with a KV stream per slot (non-unified KV
cache: a sequence's cells sit at the same place whatever its neighbours do) and a thread that
runs the decode loop: each step feeds every running slot's last token, and the prompt tokens of
newly admitted requests up to n_batch, in one `llama_decode` (a mixed batch, as llama.cpp's server
does: a new prompt does not stall the running sequences), samples each slot with its own sampler
(so its own seed), and a finished slot takes the next request before the next step (continuous
batching).

What a request sees is what `Llama.create_chat_completion` / `create_completion` would do: the
same prompt tokens (chat mode asks llama-cpp-python's own chat handler for them), the same sampler
chain and seed, the same stop rules, finish reasons and token counts. Requests that ask for token
log-probabilities run through the backend's unbatched path, inside this thread, between steps.

Reproducible scheduling: llama.cpp's CPU kernels round differently with the shape of a batch (on
the K-quant 1.5B default an answer can change with the batch size and with what runs beside it;
on smollm2 it does not), so the batch each step decodes must follow from the order of the
requests alone, not from thread timing. Two rules give that: requests are admitted in arrival
order, and whenever a slot is free (at the start, or because a sequence just finished and its
caller may be about to send the next request) the loop waits until the caller's event loop has
run SETTLE_ROUNDS more passes before it decodes on with fewer sequences. LLMClient sends its next
request within a few passes (however long its own synchronous work takes), so the same job gives
the same batches; measured on the 1.5B, reruns and a slow validator give the same texts. What
else shapes a batch follows from that schedule too: prompt tokens are handed out in admission
order, and a gap left by a finished sequence is closed right after admission (see `_compact`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from tinystories.errors import UserError
from tinystories.llm.base import RawResult, Request, RequestError

# Event-loop passes that count as "settled": LLMClient needs a handful from a delivered answer to
# its next request (validation, the cache lookup, a new task); the margin is cheap (microseconds).
SETTLE_ROUNDS = 100
SETTLE_TIMEOUT_S = 60.0  # a loop blocked this long is not about to send anything: decode on rather than stall
N_BATCH = 512  # tokens per llama_decode call (prompt chunks included), as llama-cpp-python's Llama uses by default


class _Captured(Exception):
    """Carries the arguments a chat handler passed to `create_completion` out of the handler."""

    def __init__(self, kwargs: dict):
        super().__init__("captured")
        self.kwargs = kwargs


class _PromptCapture:
    """Stands in for the Llama inside llama-cpp-python's chat handler: everything is the real
    model's except `create_completion`, which records the prompt tokens, stop strings and sampler
    settings the handler chose instead of generating."""

    def __init__(self, llm):
        self._llm = llm

    def __getattr__(self, name):
        return getattr(self._llm, name)

    def create_completion(self, **kwargs):
        raise _Captured(kwargs)


def chat_completion_args(llm, messages: list[dict], **params) -> dict:
    """The create_completion arguments (prompt as tokens, stop, sampler settings) that
    `llm.create_chat_completion(messages, **params)` would generate with."""
    from llama_cpp import llama_chat_format

    handler = llm.chat_handler or llm._chat_handlers.get(llm.chat_format) or llama_chat_format.get_chat_completion_handler(llm.chat_format)
    try:
        handler(llama=_PromptCapture(llm), messages=messages, **params)
    except _Captured as captured:
        return captured.kwargs
    raise RuntimeError(f"the chat handler for {llm.chat_format!r} returned without asking for a completion")


def completion_prompt_tokens(llm, prompt: str) -> list[int]:
    """The prompt tokens `Llama.create_completion(prompt=...)` evaluates (no suffix, no infill)."""
    model = llm._model
    bos = model.token_cls() if model.token_cls() != -1 else model.token_bos()
    bos_tokens = [bos] if model.add_bos_token() and bos != -1 else []
    sep = model.token_sep()
    eos_tokens = [sep if sep != -1 else model.token_eos()] if model.add_eos_token() or sep != -1 else []
    return bos_tokens + (llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True) if prompt else []) + eos_tokens


@dataclass
class Prepared:
    """One request made ready to decode: its tokens, limits and sampler settings."""

    prompt_tokens: list[int]
    max_tokens: int
    stop: list[bytes]
    sampling: dict  # temperature, top_k, top_p, min_p, typical_p, repeat/frequency/presence penalties, seed


def prepare(llm, mode: str, request: Request, n_ctx: int, params: dict) -> Prepared:
    """Tokens and settings for `request`, exactly as the unbatched path would use them.
    `params` are the create_*_completion arguments the backend passes (sampler, seed, stop)."""
    if mode == "chat":
        if request.messages is None:
            raise UserError("llm.mode: chat mode needs messages but the request has a plain prompt; set llm.mode=completion")
        args = chat_completion_args(llm, [dict(m) for m in request.messages], **params)
        tokens = list(args.pop("prompt"))
    else:
        if request.prompt is None:
            raise UserError("llm.mode: completion mode needs a prompt but the request has chat messages; set llm.mode=chat")
        args = dict(params)
        tokens = completion_prompt_tokens(llm, request.prompt)
    if len(tokens) >= n_ctx:
        raise RequestError(f"prompt does not fit llm.n_ctx={n_ctx} (Requested tokens ({len(tokens)}) exceed context window of {n_ctx}); raise llm.n_ctx")
    max_tokens = args.get("max_tokens") or 0
    if max_tokens <= 0 or max_tokens + len(tokens) >= n_ctx:  # llama-cpp-python's rule: the answer fits the window
        max_tokens = n_ctx - len(tokens)
    stop = args.get("stop") or []
    stop = [stop] if isinstance(stop, str) else list(stop)
    keys = ("temperature", "top_k", "top_p", "min_p", "typical_p", "repeat_penalty", "frequency_penalty", "presence_penalty", "seed")
    return Prepared(tokens, max_tokens, [s.encode("utf-8") for s in stop], {k: args[k] for k in keys if k in args})


def make_sampler(llm, sampling: dict):
    """The sampler chain `Llama.generate` builds for these settings (llama.py `_init_sampler`)."""
    from llama_cpp import _internals

    sampler = _internals.LlamaSampler()
    sampler.add_penalties(
        n_vocab=llm.n_vocab(), penalty_last_n=llm.last_n_tokens_size, penalty_repeat=sampling.get("repeat_penalty", 1.0),
        penalty_freq=sampling.get("frequency_penalty", 0.0), penalty_present=sampling.get("presence_penalty", 0.0),
    )  # fmt: skip
    temperature = sampling.get("temperature", 0.8)
    seed = sampling["seed"]
    if temperature < 0.0:
        sampler.add_dist(seed)
    elif temperature == 0.0:
        sampler.add_greedy()
    else:
        sampler.add_top_k(sampling.get("top_k", 40))
        sampler.add_typical(sampling.get("typical_p", 1.0), 1)
        sampler.add_top_p(sampling.get("top_p", 0.95), 1)
        sampler.add_min_p(sampling.get("min_p", 0.05), 1)
        sampler.add_temp(temperature)
        sampler.add_dist(seed)
    return sampler


def _ends_mid_character(text: bytes) -> bool:
    """True when `text` ends inside a multi-byte UTF-8 character (its next token completes it)."""
    for back in range(1, min(4, len(text)) + 1):
        byte = text[-back]
        if byte & 0xC0 != 0x80:  # a lead byte (or ASCII): how many bytes does its character need?
            need = 4 if byte >= 0xF0 else 3 if byte >= 0xE0 else 2 if byte >= 0xC0 else 1
            return need > back
    return False


@dataclass
class _Job:
    request: Request
    mode: str  # llm.mode when it was sent: chat or completion
    future: concurrent.futures.Future
    loop: asyncio.AbstractEventLoop | None


@dataclass
class _Sequence:
    """A busy slot: the request it answers and what it has generated so far."""

    job: _Job
    prepared: Prepared
    sampler: object
    pos: int  # the position of the next token fed to the model (prompt tokens first)
    admitted: int  # admission number: waiting prompts are evaluated in this order
    tokens: list[int] = field(default_factory=list)  # generated so far, the newest not yet fed; empty while the prompt is evaluated
    finish: str | None = None  # set when it ends: "stop" or "length"
    text: bytes = b""  # the text so far while stop strings are watched; the answer once finished

    @property
    def last(self) -> int:
        return self.tokens[-1]


class BatchDecoder:
    """The decode loop behind `EmbeddedBackend` when `llm.batch_size` > 1.

    `submit` queues a request and returns a concurrent Future for its RawResult. `params_for`
    gives the create_*_completion arguments for a request (the backend's sampler settings), and
    `run_unbatched` answers a request the batched loop does not take (token log-probabilities).
    """

    def __init__(self, load_model: Callable[[], object], *, batch_size: int, n_ctx: int, n_threads: int, model_name: str,
                 params_for: Callable[[Request], dict], run_unbatched: Callable[[Request], RawResult]):  # fmt: skip
        self.batch_size = batch_size
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.model_name = model_name
        self._load_model = load_model
        self._params_for = params_for
        self._run_unbatched = run_unbatched
        self.llm = self._ctx = self._batch = None  # made by the decode thread: loading must not block the caller's event loop
        self._broken: BaseException | None = None  # why the model or context could not be made
        self._slots: list[_Sequence | None] = [None] * batch_size
        self._n_batch = max(min(n_ctx, N_BATCH), batch_size)  # tokens per llama_decode call
        self._admitted = 0  # requests taken into a slot so far
        self._queue: deque[_Job] = deque()
        self._wake = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="llm-batch-decode", daemon=True)
        self._thread.start()

    def _make_context(self):
        import llama_cpp
        from llama_cpp import _internals

        params = llama_cpp.llama_context_default_params()
        # One KV stream of n_ctx cells per slot: every sequence gets the unbatched path's window.
        params.n_ctx = self.n_ctx * self.batch_size
        params.n_seq_max = self.batch_size
        params.kv_unified = False
        # A step holds every running slot's token beside prompt tokens, so never fewer than batch_size.
        params.n_batch = params.n_ubatch = self._n_batch
        params.n_threads = params.n_threads_batch = self.n_threads
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED  # as the unbatched Llama
        params.no_perf = True
        try:
            ctx = _internals.LlamaContext(model=self.llm._model, params=params, verbose=False)
        except ValueError as exc:
            raise UserError(f"llm.batch_size: llama.cpp could not make a context for {self.batch_size} sequences of llm.n_ctx={self.n_ctx} ({exc}); lower either") from None
        batch = _internals.LlamaBatch(n_tokens=self._n_batch, embd=0, n_seq_max=1, verbose=False)
        return ctx, batch

    # -- the caller's side -------------------------------------------------------------------
    def submit(self, request: Request, mode: str, loop: asyncio.AbstractEventLoop | None = None) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._wake:
            if self._broken is not None:
                future.set_exception(self._broken)
                return future
            if self._closing:
                raise RuntimeError("the batch decoder is closed")
            self._queue.append(_Job(request, mode, future, loop))
            self._wake.notify()
        return future

    def close(self) -> None:
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._thread.join()
        for resource in (self._batch, self._ctx):
            if resource is not None:
                resource.close()

    # -- the decode thread -------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self.llm = self._load_model()
            self._ctx, self._batch = self._make_context()
        except BaseException as exc:  # a setup problem (no model, no memory): every request gets it
            with self._wake:
                self._broken = exc
            self._fail_all(exc)
            return
        must_settle: set = set()  # loops whose callers may be about to send a request
        while True:
            with self._wake:
                while not self._closing and not self._queue and not self._busy():
                    self._wake.wait()
                if self._closing:
                    break
                if not self._busy() and self._queue:
                    must_settle.add(self._queue[0].loop)  # the first of a burst: let the rest of it arrive
            try:
                if must_settle and len(self._queue) < self._free():
                    self._settle(must_settle)
                must_settle = self._admit()
                self._compact()
                if self._busy():
                    must_settle |= self._step()
            except Exception as exc:  # a fault of the loop itself: every caller hears of it, the thread lives on
                must_settle = set()
                self._fail_all(exc)
        self._fail_all(RuntimeError("the embedded backend was closed"))

    def _busy(self) -> int:
        return sum(s is not None for s in self._slots)

    def _free(self) -> int:
        return self.batch_size - self._busy()

    def _settle(self, loops: set) -> None:
        """Wait until each caller's event loop has run SETTLE_ROUNDS passes: what it was about to send
        has arrived by then. A caller busy with its own work (a slow validator) is waited for too."""

        async def passes():
            for _ in range(SETTLE_ROUNDS):
                await asyncio.sleep(0)

        for loop in loops:
            if loop is None or loop.is_closed() or not loop.is_running():
                continue  # a loop that is not running sends nothing
            try:
                settled = asyncio.run_coroutine_threadsafe(passes(), loop)
            except RuntimeError:  # closed in the meantime
                continue
            waited = 0.0
            while not self._closing and waited < SETTLE_TIMEOUT_S:
                try:
                    settled.result(timeout=0.1)
                    break
                except concurrent.futures.TimeoutError:
                    waited += 0.1
                except (RuntimeError, concurrent.futures.CancelledError):
                    break  # the loop stopped: nothing is waiting on it

    def _admit(self) -> set:
        """Fill free slots from the queue, in arrival order. Returns the loops of requests answered
        here (an error, or an unbatched request), whose callers may send another."""
        answered = set()
        while self._free():
            with self._wake:
                if not self._queue:
                    break
                job = self._queue.popleft()
            if not job.future.set_running_or_notify_cancel():
                continue
            try:
                if job.request.top_logprobs:
                    job.future.set_result(self._run_unbatched(job.request))
                    answered.add(job.loop)
                    continue
                slot = self._slots.index(None)
                self._slots[slot] = self._start(slot, job)
            except BaseException as exc:  # this request's failure (too long, wrong mode): the others go on
                job.future.set_exception(exc)
                answered.add(job.loop)
        return answered

    def _compact(self) -> None:
        """Close the gaps that admission left (finished sequences and no request to take their slot): a
        batch whose sequence ids have a gap is decoded as one ubatch per run of consecutive ids
        (llama.cpp's split over KV streams), each reading all the weights again, which made the tail
        of a job slow. The highest busy slot moves into the lowest free one: its KV stream is copied
        bit for bit, so its answer does not change, and when it moves follows from the schedule alone
        (not from whether a request happens to be queued by now)."""
        while None in self._slots:
            low = self._slots.index(None)
            high = max((slot for slot, s in enumerate(self._slots) if s is not None), default=-1)
            if high < low:
                return
            self._ctx.kv_cache_seq_cp(high, low, -1, -1)  # copied at the next llama_decode, before it computes
            self._slots[low] = self._slots[high]
            self._release(high)

    def _start(self, slot: int, job: _Job) -> _Sequence:
        """Take `job` into this slot: its prompt is evaluated by the next steps, beside the running sequences."""
        prepared = prepare(self.llm, job.mode, job.request, self.n_ctx, self._params_for(job.request))
        if not prepared.prompt_tokens:
            raise RequestError("the prompt has no tokens (an empty prompt and a model without BOS): nothing to generate from")
        self._ctx.kv_cache_seq_rm(slot, -1, -1)
        self._admitted += 1
        return _Sequence(job, prepared, make_sampler(self.llm, prepared.sampling), pos=0, admitted=self._admitted)

    def _step(self) -> set:
        """One llama_decode of every running slot's newest token plus as many waiting prompt tokens as
        fit in n_batch (llama.cpp server's mixed batch: a new prompt does not stall the others).
        Returns the loops of the requests it finished."""
        chunks = self._prompt_chunks()
        self._batch.reset()
        sampled = []  # (slot, batch row) whose logits pick the slot's next token
        # Rows in slot order: llama.cpp splits a batch over KV streams into one ubatch per run of
        # consecutive sequence ids, and each ubatch reads all the weights once more.
        for slot, sequence in enumerate(self._slots):
            if sequence is None:
                continue
            if sequence.tokens:
                sampled.append((slot, self._add_token(sequence.last, sequence.pos, slot, True)))
                sequence.pos += 1
            elif chunks.get(slot):
                prompt = sequence.prepared.prompt_tokens
                for pos in range(sequence.pos, sequence.pos + chunks[slot]):
                    row = self._add_token(prompt[pos], pos, slot, pos == len(prompt) - 1)
                sequence.pos += chunks[slot]
                if sequence.pos == len(prompt):
                    sampled.append((slot, row))
        self._ctx.decode(self._batch)  # a failure fails every busy sequence (see _run)
        finished = set()
        for slot, row in sampled:
            sequence = self._slots[slot]
            sequence.tokens.append(sequence.sampler.sample(self._ctx, row))
            if self._finished(sequence):
                finished.add(self._finish(slot))
        return finished

    def _prompt_chunks(self) -> dict[int, int]:
        """How many prompt tokens each waiting slot evaluates this step: the room left beside the
        running slots' tokens, given out in admission order (so it follows from the requests alone)."""
        room = self._n_batch - sum(s is not None and bool(s.tokens) for s in self._slots)
        chunks = {}
        for _, slot in sorted((s.admitted, slot) for slot, s in enumerate(self._slots) if s is not None and not s.tokens):
            sequence = self._slots[slot]
            chunks[slot] = min(room, len(sequence.prepared.prompt_tokens) - sequence.pos)
            room -= chunks[slot]
        return chunks

    def _add_token(self, token: int, pos: int, slot: int, logits: bool) -> int:
        """Append one token of `slot`'s sequence to the batch; returns its row."""
        raw = self._batch.batch
        row = raw.n_tokens
        raw.token[row], raw.pos[row], raw.seq_id[row][0], raw.n_seq_id[row], raw.logits[row] = token, pos, slot, 1, logits
        raw.n_tokens += 1
        return row

    def _finished(self, sequence: _Sequence) -> bool:
        """Apply llama-cpp-python's end rules to the newest token; sets sequence.finish when done."""
        import llama_cpp

        token = sequence.last
        if llama_cpp.llama_vocab_is_eog(self.llm._model.vocab, token):
            sequence.tokens.pop()  # the end-of-generation token is neither text nor counted
            sequence.finish, sequence.text = "stop", self._detokenize(sequence)
            return True
        stop = sequence.prepared.stop
        if stop:
            sequence.text += self.llm._model.detokenize([token])  # the text so far, one piece per token
            if not _ends_mid_character(sequence.text) and any(s in sequence.text for s in stop):
                text = self._detokenize(sequence)
                hits = [s for s in stop if s in text]
                if hits:
                    sequence.finish, sequence.text = "stop", text[: text.index(hits[0])]
                    return True
        if len(sequence.tokens) >= sequence.prepared.max_tokens:
            sequence.finish, sequence.text = "length", self._detokenize(sequence)
            return True
        return False

    def _detokenize(self, sequence: _Sequence) -> bytes:
        return self.llm.detokenize(sequence.tokens, prev_tokens=sequence.prepared.prompt_tokens)

    def _finish(self, slot: int):
        sequence = self._slots[slot]
        self._release(slot)
        sequence.job.future.set_result(
            RawResult(
                text=sequence.text.decode("utf-8", errors="ignore"),
                finish_reason=sequence.finish,
                prompt_tokens=len(sequence.prepared.prompt_tokens),
                completion_tokens=len(sequence.tokens),
                model=self.model_name,
            )
        )
        return sequence.job.loop

    def _release(self, slot: int) -> None:
        self._slots[slot] = None
        self._ctx.kv_cache_seq_rm(slot, -1, -1)

    def _fail_all(self, exc: BaseException) -> None:
        for slot, sequence in enumerate(self._slots):
            if sequence is not None:
                sequence.job.future.set_exception(exc)
                self._release(slot)
        with self._wake:
            while self._queue:
                job = self._queue.popleft()
                if not job.future.done():
                    job.future.set_exception(exc)
