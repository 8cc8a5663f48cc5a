"""The generate stage, driven through the CLI with a scripted LLM (tests/fake_llm.py)."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from fake_llm import ScriptedBackend, register_scripted
from tinystories.data import generate as G
from tinystories.text import prompts as P
from tinystories.cli import main
from tinystories.llm import RawResult
from tinystories.io.rundir import read_jsonl

VOCAB = {"nouns": ["ball", "dog", "tree", "cake"], "verbs": ["jump", "run", "sing"], "adjectives": ["happy", "big", "red"]}
SENTENCES = [
    "The sun was warm and bright.", "A bird sang in the tall tree.", "Mom made a big cake for lunch.",
    "They played in the green park.", "The little cat took a long nap.", "Dad read a book by the fire.",
    "A boy named Tim found a shiny rock.", "The girl laughed and clapped her hands.", "It began to rain on the roof.",
    "They shared their toys with a friend.", "The dog barked at the mailman.", "She drew a picture of a house.",
    "The fish swam in the blue pond.", "He helped his sister tie her shoes.", "A frog hopped onto a lily pad.",
    "The wind blew the leaves away.", "They ate soup with warm bread.", "The baby smiled at the moon.",
    "Grandma told a funny story.", "The car drove down the long road.", "A bee buzzed near the flowers.",
    "They built a fort out of pillows.", "The kite flew high in the sky.", "He said sorry and gave a hug.",
]  # fmt: skip
PROMPT_WORDS = re.compile(r'the verb "(\w+)", the noun "(\w+)" and the adjective "(\w+)"')


def prompt_of(request) -> str:
    return request.messages[-1]["content"] if request.messages is not None else request.prompt


def good_story(request, drop: str = "") -> str:
    verb, noun, adj = PROMPT_WORDS.search(prompt_of(request)).groups()
    rng = random.Random(request.seed)
    body = " ".join(rng.sample(SENTENCES, 10))
    story = f"Once upon a time, there was a {adj} {noun}. Every day the {noun} wanted to {verb}. {body} The end."
    if drop:
        story = story.replace(f" {drop}", " thing")
    return story


def index(request) -> int:
    return int(request.key[1:])


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    vocab = tmp_path / "words.json"
    vocab.write_text(json.dumps(VOCAB))
    run = tmp_path / "run"
    assert main(["vocab", "--run-dir", str(run), "--set", f"vocab.path={vocab}"]) == 0
    return run


def install(monkeypatch, reply, **kw) -> ScriptedBackend:
    return register_scripted(ScriptedBackend(reply, **kw))


def generate(run: Path, *sets: str) -> int:
    args = ["generate", "--run-dir", str(run)]
    for s in ("llm.concurrency=1", *sets):
        args += ["--set", s]
    return main(args)


def test_prompt_follows_the_paper_and_is_a_function_of_seed_and_index():
    words = {"noun": "ball", "verb": "jump", "adjective": "red"}
    assert P.story_prompt(words, ["Dialogue", "BadEnding"]) == (
        "Write a short story (3-5 paragraphs) which only uses very simple words that a 3 year old child would likely "
        'understand. The story should use the verb "jump", the noun "ball" and the adjective "red". The story should '
        "have the following features: the story should contain at least one dialogue, the story has a bad ending. "
        "Remember to only use simple words!"
    )
    assert P.story_prompt(words, []).endswith('the adjective "red". Remember to only use simple words!')
    cfg = G.Config(feature_prob=0.2)
    a = [G.story_params(7, i, VOCAB, cfg) for i in range(30)]
    assert a == [G.story_params(7, i, VOCAB, cfg) for i in range(30)]
    assert a != [G.story_params(8, i, VOCAB, cfg) for i in range(30)]
    assert len({json.dumps(p["words"]) for p in a}) > 5 and any(p["features"] for p in a) and any(not p["features"] for p in a)
    assert P.story_template()["version"].startswith("story-v1+")


def test_generate_writes_stories_rejected_dataset_and_stats(run_dir, monkeypatch):
    backend = install(monkeypatch, good_story)
    assert generate(run_dir, "generate.num_stories=12") == 0
    stories = list(read_jsonl(run_dir / "data/stories.jsonl"))
    assert [s["id"] for s in stories] == [G.story_id(i) for i in range(12)]
    for s in stories:
        assert set(s) >= {"id", "story", "words", "features", "prompt", "model", "backend", "seed", "prompt_tokens",
                          "completion_tokens", "finish_reason", "words_used", "words_complete"}  # fmt: skip
        assert s["model"] == "scripted-model" and s["backend"] == "scripted" and s["words_complete"] is True
        assert f'the noun "{s["words"]["noun"]}"' in s["prompt"]
    assert not (run_dir / "data/rejected.jsonl").exists(), "nothing rejected: no rejected.jsonl"
    # every request carries the template version; prompts are the paper's
    assert {r.template_version for r in backend.calls} == {P.story_template()["version"]}
    assert all(prompt_of(r).startswith("Write a short story (3-5 paragraphs)") for r in backend.calls)
    # the dataset text: each kept story followed by a line <|endoftext|>
    text = (run_dir / "data/tinystories_dataset.txt").read_text()
    assert text.count("<|endoftext|>") == 12 and text.endswith("\n<|endoftext|>\n")
    assert text.split("\n<|endoftext|>\n")[:-1] == [s["story"] for s in stories]
    stats = json.loads((run_dir / "data/stats.json").read_text())
    assert stats["kept"] == 12 and stats["rejected"] == 0 and stats["requested_words_used"] == 1.0
    assert stats["top_opening"] == "once upon a time there" and stats["top_opening_share"] == 1.0
    assert 0 < stats["distinct_1"] < stats["distinct_2"] < stats["distinct_3"] <= 1
    assert stats["vocabulary_share"] > 0 and stats["top2000_share"] > 0.5
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["stages"]["generate"]["status"] == "done"
    assert manifest["stages"]["generate"]["metrics"]["kept"] == 12


def test_same_seed_same_prompts_in_the_same_order(tmp_path, monkeypatch):
    def prompts(name: str, seed: int) -> list[str]:
        vocab = tmp_path / "words.json"
        vocab.write_text(json.dumps(VOCAB))
        run = tmp_path / name
        assert main(["vocab", "--run-dir", str(run), "--set", f"vocab.path={vocab}"]) == 0
        backend = install(monkeypatch, good_story)
        assert generate(run, "generate.num_stories=10", f"seed={seed}", "generate.feature_prob=0.5") == 0
        return [prompt_of(r) for r in backend.calls]

    a, b, c = prompts("a", 1), prompts("b", 1), prompts("c", 2)
    assert a == b and len(a) == 10
    assert a != c


def test_every_filter_and_dedup_in_the_stage(run_dir, monkeypatch):
    texts: dict[int, str] = {}

    def reply(request):
        i = index(request)
        first_attempt = request.seed == G.story_params(seed, i, VOCAB, G.Config())["seed"]
        if i == 1:
            return "Il était une fois un petit chien qui aimait jouer dans le parc avec ses amis tous les jours. " * 4
        if i == 2:
            return "The dog ran. The end."
        if i == 3:
            return good_story(request).replace("Once upon a time", "**Once upon a time**")
        if i == 4:
            return texts[0].upper().replace(",", "")  # exact duplicate once normalised
        if i == 5:
            return texts[0].replace("The end.", "The very end.")  # near duplicate
        if i == 6:
            return "Sure! Here is a story for you:\n\n" + good_story(request)
        if i == 7 and first_attempt:
            return RawResult(text=good_story(request)[:80], finish_reason="length", completion_tokens=20)
        if i == 8:
            return ""
        texts[i] = good_story(request)
        return texts[i]

    from tinystories.pipeline.ids import derive_seed

    seed = derive_seed(1337, "generate")
    backend = install(monkeypatch, reply)
    # require_words off: the copies of story 0 do not use their own prompt words
    assert generate(run_dir, "generate.num_stories=6", "generate.max_requests=20", "generate.require_words=false") == 0
    rejected = {r["id"]: r for r in read_jsonl(run_dir / "data/rejected.jsonl")}
    reasons = {int(k[1:]): r["reason"] for k, r in rejected.items()}
    assert reasons == {1: "not_english", 2: "too_short", 3: "markdown", 4: "duplicate", 5: "near_duplicate", 6: "preamble", 8: "empty"}
    assert rejected[G.story_id(4)]["duplicate_of"] == G.story_id(0)
    assert rejected[G.story_id(5)]["duplicate_of"] == G.story_id(0)
    assert rejected[G.story_id(6)]["text"].startswith("Sure!")
    kept = list(read_jsonl(run_dir / "data/stories.jsonl"))
    assert [int(s["id"][1:]) for s in kept] == [0, 7, 9, 10, 11, 12]  # kept count reached: no more requests
    assert kept[1]["attempts"] == 2 and kept[1]["finish_reason"] == "stop"  # truncated once, retried with a fresh seed
    # a preamble reply is retried llm.max_attempts (3) times before it is recorded
    assert sum(1 for r in backend.calls if index(r) == 6) == 3
    assert sorted({index(r) for r in backend.calls}) == list(range(13))
    stats = json.loads((run_dir / "data/stats.json").read_text())
    assert stats["kept"] == 6 and stats["rejected"] == 7 and stats["attempted"] == 13
    assert stats["rejected_by_reason"]["near_duplicate"] == 1
    assert stats["near_duplicate_rate"] == round(1 / 8, 4)


def test_require_words_true_rejects_and_false_keeps_and_records_compliance(run_dir, monkeypatch):
    def reply(request):
        verb, noun, adj = PROMPT_WORDS.search(prompt_of(request)).groups()
        return good_story(request, drop=noun)

    install(monkeypatch, reply)
    # required: every story is rejected, and the stage stops at max_requests (default 2 x num_stories)
    assert generate(run_dir, "generate.num_stories=5", "generate.require_words=true") == 0
    assert [r["reason"] for r in read_jsonl(run_dir / "data/rejected.jsonl")] == ["missing_words"] * 10
    assert json.loads((run_dir / "manifest.json").read_text())["stages"]["generate"]["metrics"]["kept"] == 0
    # require_words false (the default; the run dir keeps the true set above) starts over and keeps them all
    assert generate(run_dir, "generate.num_stories=5", "generate.require_words=false") == 0
    kept = list(read_jsonl(run_dir / "data/stories.jsonl"))
    assert len(kept) == 5
    assert all(s["words_used"] == {"noun": False, "verb": True, "adjective": True} and not s["words_complete"] for s in kept)
    assert json.loads((run_dir / "data/stats.json").read_text())["requested_words_used"] == round(2 / 3, 4)


DROPPED = ("noun", "adjective", "")  # story i misses its DROPPED[i % 3] word ("": none)


def id_index(record: dict) -> int:
    return int(record["id"][1:])


def test_stories_missing_a_word_are_kept_and_instruct_data_lists_only_their_words(run_dir, monkeypatch):
    def reply(request):
        verb, noun, adj = PROMPT_WORDS.search(prompt_of(request)).groups()
        return good_story(request, drop={"noun": noun, "adjective": adj, "": ""}[DROPPED[index(request) % 3]])

    install(monkeypatch, reply)
    assert generate(run_dir, "generate.num_stories=6") == 0
    kept = list(read_jsonl(run_dir / "data/stories.jsonl"))
    assert [id_index(s) for s in kept] == list(range(6)), "by default no story is rejected for a missing word"
    assert not (run_dir / "data/rejected.jsonl").exists(), "nothing rejected"
    for s in kept:
        dropped = DROPPED[id_index(s) % 3]
        assert s["words_used"] == {pos: pos != dropped for pos in ("noun", "verb", "adjective")}, f"{s['id']}: words_used"
        assert s["words_complete"] is (dropped == ""), f"{s['id']}: words_complete"
    stats = json.loads((run_dir / "data/stats.json").read_text())
    assert stats["requested_words_stories"] == 6, "every kept story had three prompt words"
    assert stats["all_requested_words_share"] == round(2 / 6, 4), "stories 2 and 5 use all three"
    assert stats["requested_words_used_mean"] == round((2 * 4 + 3 * 2) / 6, 2), "two words in four stories, three in two"
    assert stats["requested_words_used"] == round(14 / 18, 4), "14 of the 18 requested words are used"
    metrics = json.loads((run_dir / "manifest.json").read_text())["stages"]["generate"]["metrics"]
    assert metrics["all_words_share"] == round(2 / 6, 4), "the stage metrics carry the share too"

    # instruct data: a Words part names only the words the story contains
    assert main(["instruct-data", "--run-dir", str(run_dir), "--set", "instruct_data.kinds=[words]"]) == 0
    rows = {r["id"]: r for r in read_jsonl(run_dir / "data/instruction_dataset.jsonl")}
    assert sorted(rows) == [s["id"] for s in kept], "every story still gets a Words part"
    for s in kept:
        listed = [s["words"][pos] for pos in ("verb", "noun", "adjective") if s["words_used"][pos]]
        assert rows[s["id"]]["instruction"] == "Words: " + ", ".join(listed), f"{s['id']}: Words lists only contained words"
    istats = json.loads((run_dir / "data/instruct_stats.json").read_text())
    assert istats["stories_words_left_out"] == 4, "four stories lack a word"

    # require_words true: the config changed, the stage starts over and rejects them as before
    assert generate(run_dir, "generate.num_stories=6", "generate.max_requests=18", "generate.require_words=true") == 0
    rejected = list(read_jsonl(run_dir / "data/rejected.jsonl"))
    assert [id_index(r) for r in rejected] == [i for i in range(18) if i % 3 != 2], "stories missing a word are rejected"
    assert {r["reason"] for r in rejected} == {"missing_words"}, "for missing words"
    assert [id_index(s) for s in read_jsonl(run_dir / "data/stories.jsonl")] == [2, 5, 8, 11, 14, 17], "only complete stories kept"
    stats = json.loads((run_dir / "data/stats.json").read_text())
    assert stats["all_requested_words_share"] == 1.0, "every kept story uses all three words"


def test_kill_and_rerun_resumes_without_resending_or_duplicating(run_dir, monkeypatch):
    calls = {"n": 0}

    def dying(request):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("killed")
        return good_story(request)

    install(monkeypatch, dying)
    with pytest.raises(RuntimeError, match="killed"):
        generate(run_dir, "generate.num_stories=10")
    stories_path = run_dir / "data/stories.jsonl"
    assert len(list(read_jsonl(stories_path))) == 4
    assert not (run_dir / "data/tinystories_dataset.txt").exists()  # written only at the end
    with open(stories_path, "a") as fh:
        fh.write('{"id": "g0000004", "story": "half a li')  # a torn line from a kill mid-write
    backend = install(monkeypatch, good_story)
    assert generate(run_dir, "generate.num_stories=10") == 0
    assert sorted(index(r) for r in backend.calls) == list(range(4, 10))  # only the unanswered ones
    raw = stories_path.read_text()
    assert raw.endswith("\n") and all(json.loads(line) for line in raw.splitlines())
    ids = [s["id"] for s in read_jsonl(stories_path)]
    assert sorted(ids) == [G.story_id(i) for i in range(10)]
    assert (run_dir / "data/tinystories_dataset.txt").read_text().count("<|endoftext|>") == 10
    # the story a resumed run writes is the one an uninterrupted run writes
    from tinystories.pipeline.ids import derive_seed

    vocab = json.loads((run_dir / "data/vocabulary.json").read_text())
    for i in (2, 6):  # one from before the kill, one from after
        rec = next(s for s in read_jsonl(stories_path) if s["id"] == G.story_id(i))
        params = G.story_params(derive_seed(1337, "generate"), i, vocab, G.Config())
        assert (rec["words"], rec["features"], rec["seed"]) == (params["words"], params["features"], params["seed"])
        assert rec["prompt"] == P.story_prompt(params["words"], params["features"])
    # a third run is current: nothing is sent
    backend = install(monkeypatch, good_story)
    assert generate(run_dir, "generate.num_stories=10") == 0 and backend.calls == []
    # asking for more continues from where it is
    assert generate(run_dir, "generate.num_stories=12") == 0
    assert sorted(index(r) for r in backend.calls) == [10, 11]


def test_changed_sampling_starts_over_and_import_conflict_is_refused(run_dir, monkeypatch):
    backend = install(monkeypatch, good_story)
    assert generate(run_dir, "generate.num_stories=3") == 0
    assert generate(run_dir, "generate.num_stories=3", "generate.temperature=0.5") == 0
    assert len(backend.calls) == 6 and {r.temperature for r in backend.calls[3:]} == {0.5}
    assert len(list(read_jsonl(run_dir / "data/stories.jsonl"))) == 3
    assert generate(run_dir, "generate.num_stories=4", "import_.path=x.txt") == 2


def test_num_stories_zero_does_nothing(run_dir, monkeypatch):
    backend = install(monkeypatch, good_story)
    assert generate(run_dir, "generate.num_stories=0") == 0
    assert backend.calls == [] and not (run_dir / "data/stories.jsonl").exists()


def test_bad_options_are_one_line_errors(run_dir, capsys):
    assert generate(run_dir, "generate.features=[Dialogue,Dragons]") == 2
    err = capsys.readouterr().err
    assert "unknown feature 'Dragons'" in err and len(err.strip().splitlines()) == 1


def _embedded_ready() -> bool:
    try:
        import llama_cpp  # noqa: F401

        import tinystories.llm.embedded  # noqa: F401
    except Exception:
        return False
    return True


@pytest.mark.embedded
@pytest.mark.skipif(not _embedded_ready(), reason="llama-cpp-python or the embedded backend is not installed")
def test_two_real_stories_from_the_embedded_model(run_dir):
    rc = generate(
        run_dir,
        "llm.backend=embedded",
        "llm.model=smollm2-135m",
        "llm.max_attempts=1",  # 2 requests in all: the machine may be shared and slow
        "llm.timeout_s=900",  # ... so slow that the default 120 s per request can pass
        "generate.num_stories=2",
        "generate.max_requests=2",
        "generate.max_tokens=64",  # smollm2 rarely stops by itself; a truncated story is a valid outcome here
        "generate.require_words=false",
        "generate.min_words=5",
    )
    assert rc == 0
    manifest = json.loads((run_dir / "manifest.json").read_text())
    metrics = manifest["stages"]["generate"]["metrics"]
    assert metrics["attempted"] == len(list(read_jsonl(run_dir / "data/stories.jsonl"))) + metrics["rejected"]
    assert metrics["attempted"] == 2 and metrics["backend_calls"] == 2 and metrics["completion_tokens"] > 0
    for s in read_jsonl(run_dir / "data/stories.jsonl"):
        assert s["backend"] == "embedded" and s["story"].strip()


KILLED_RUN = """
import sys
sys.path.insert(0, {tests!r})
import test_generate as T
from fake_llm import ScriptedBackend, register_scripted
register_scripted(ScriptedBackend(T.good_story, delay_s=0.05))
from tinystories.cli import main
main(["generate", "--run-dir", {run!r}, "--set", "generate.num_stories=40", "--set", "llm.concurrency=4"])
"""


def test_sigkill_mid_run_then_rerun_gives_exactly_the_stories(run_dir, monkeypatch):
    import os
    import signal
    import subprocess
    import sys
    import time

    code = KILLED_RUN.format(tests=str(Path(__file__).parent), run=str(run_dir))
    env = {**os.environ, "TINYSTORIES_NO_PROGRESS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stories = run_dir / "data/stories.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if stories.exists() and stories.read_text().count("\n") >= 5:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(list(read_jsonl(stories)))
    assert 5 <= done_before < 40, "the run should have been killed part-way"
    whole_lines = stories.read_text()[: stories.read_text().rfind("\n") + 1]
    backend = install(monkeypatch, good_story)
    assert generate(run_dir, "generate.num_stories=40") == 0
    ids = [s["id"] for s in read_jsonl(stories)]
    assert sorted(ids) == [G.story_id(i) for i in range(40)]
    assert len(backend.calls) <= 40 - done_before  # answers cached before the kill are not asked again
    assert stories.read_text().endswith("\n")
    assert stories.read_text().startswith(whole_lines)  # resumed, not restarted


def test_batch_api_answers_first_attempts_then_the_live_loop_uses_the_cache(run_dir, tmp_path):
    """generate.batch_api: stories come back through /v1/batches into the cache; no live call is made."""
    from stub_openai import StubServer

    stub = StubServer()
    stub.start()
    try:

        class Body:  # good_story reads the prompt and the seed off a request-like object
            def __init__(self, body):
                self.messages = body["messages"]
                self.prompt = None
                self.seed = body.get("seed", 0)

        stub.reply = lambda body: good_story(Body(body))
        sets = ["llm.backend=openai", f"llm.base_urls=[{stub.urls[0]}]", "llm.model=stub-model",
                "generate.num_stories=4", "generate.batch_api=true", "generate.batch_poll_s=0.01"]  # fmt: skip
        assert generate(run_dir, *sets) == 0
        stories = list(read_jsonl(run_dir / "data" / "stories.jsonl"))
        assert len(stories) == 4 and all(s["backend"] == "openai" for s in stories)
        assert len(stub.batches) == 1
        live = [r for r in stub.records if r.path.endswith("/chat/completions")]
        assert live == []  # every first attempt was answered by the batch
        state = json.loads((run_dir / "data" / ".generate_batch.json").read_text())
        assert state["batch_id"] in stub.batches
    finally:
        stub.stop()
