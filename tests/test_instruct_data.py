import json

import pytest
from fake_llm import ScriptedBackend

from tinystories.data import instruct_data, instruct_parts, instruct_published
from tinystories.cli import main
from tinystories.errors import UserError
from tinystories.llm import Reject, register_backend
from tinystories.io.rundir import read_jsonl
from tinystories.text.prompts import summary_template

NAMES = ["Lily", "Tom", "Mia", "Ben", "Sue", "Max"]
FEATURES = [["Dialogue"], ["BadEnding", "Dialogue"], [], ["Twist"], ["MoralValue"], ["Foreshadowing"]]


def write_stories(run_dir, n=6):
    (run_dir / "data").mkdir(parents=True, exist_ok=True)
    with open(run_dir / "data" / "stories.jsonl", "w", encoding="utf-8") as fh:
        for i in range(n):
            name = NAMES[i % len(NAMES)]
            story = (
                f"Once upon a time, there was a kid named {name}. {name} liked to jump in the big park. "
                f'One day, {name} found a shiny red ball. "Look at my ball!" said {name} to a friend. '
                f"They played with the ball until the sun went down. Then {name} went home happy."
            )
            rec = {"id": f"s{i}", "story": story, "words": {"noun": "ball", "verb": "jump", "adjective": "shiny"}, "features": FEATURES[i % 6], "prompt": "...", "model": "m"}
            fh.write(json.dumps(rec) + "\n")


def summary_reply(request):
    return f"Kid {request.key} finds a red ball and plays with a friend until night."


@pytest.fixture
def backend(monkeypatch):
    holder = {"backend": ScriptedBackend(summary_reply, max_concurrency=1)}
    register_backend("embedded", lambda cfg: holder["backend"])  # read at each stage run: a test swaps the backend in the holder
    return holder


ALL_SUMMARY = "instruct_data.probabilities={words: 0.5, sentence: 0.5, features: 0.5, summary: 1.0}"


def test_summary_validator():
    assert instruct_parts.clean_summary("  Tom loses his kite.\nHis dad finds it. ", 60) == "Tom loses his kite. His dad finds it."
    assert instruct_parts.clean_summary('Summary: "Tom loses his kite."', 60) == "Tom loses his kite."
    for bad, reason in [
        ("", "empty"),
        ("   \n ", "empty"),
        ("Sure! Tom loses his kite.", "meta-text"),
        ("Here is what happens: Tom loses his kite.", "meta-text"),
        ("In the story, Tom loses his kite.", "meta-text"),
        ("This summary is about Tom.", "meta-text"),
        ("word " * 61, "too long"),
        ("a.\nb.\nc.", "too long"),
        ("Tom runs. Tom hops. Tom sits. Tom naps.", "4 sentences"),
    ]:
        with pytest.raises(Reject, match=reason):
            instruct_parts.clean_summary(bad, 60)
    with pytest.raises(Reject, match="truncated"):
        instruct_parts.clean_summary("Tom loses his", 60, finish_reason="length")


def test_story_sentences_are_real_sentences():
    story = 'Once upon a time, there was a girl named Lily. "Hi!" said Tom to the big dog. She said, "I like it. Do you?" Mr. Bob was very sad today. Go!'
    got = instruct_parts.story_sentences(story, 5, 30)
    assert got == ["Once upon a time, there was a girl named Lily.", '"Hi!" said Tom to the big dog.', "Mr. Bob was very sad today."]
    assert all(s in story for s in got)


def test_draw_sets_random_subsets_in_random_order():
    import random

    ic = instruct_data.Config(sets_per_story=3, min_parts=1)
    rng = random.Random(0)
    orders = set()
    for _ in range(200):
        sets = instruct_parts.draw_sets(rng, list(instruct_parts.KINDS), ic)
        assert len(sets) == 3
        assert len({tuple(sorted(s)) for s in sets}) == 3  # distinct combinations per story
        for s in sets:
            assert 1 <= len(s) <= 4 and len(set(s)) == len(s)
            orders.add(tuple(s))
    assert len({len(o) for o in orders}) == 4
    assert ("summary", "words") in orders and ("words", "summary") in orders


def test_builds_instruction_dataset(tmp_path, backend):
    run = tmp_path / "run"
    write_stories(run)
    assert main(["instruct-data", "--run-dir", str(run), "--set", ALL_SUMMARY, "--set", "instruct_data.sets_per_story=2"]) == 0
    rows = list(read_jsonl(run / "data" / "instruction_dataset.jsonl"))
    assert len(rows) == 12
    assert [r["id"] for r in rows] == [f"s{i}" for i in range(6) for _ in range(2)]  # story order, whatever the LLM order
    stories = {json.loads(line)["id"]: json.loads(line) for line in open(run / "data" / "stories.jsonl")}
    for row in rows:
        lines = row["instruction"].split("\n")
        assert len(lines) == len(row["parts"])
        assert "summary" in row["parts"]
        for kind, line in zip(row["parts"], lines):
            label, value = line.split(": ", 1)
            assert label == instruct_parts.LABELS[kind]
            if kind == "words":
                assert value == "jump, ball, shiny"
            elif kind == "features":
                assert value == ", ".join(stories[row["id"]]["features"])
            elif kind == "sentence":
                assert value in row["story"] and value.lstrip("\"")[0].isupper() and len(value.split()) >= 5
            else:
                assert value == f"Kid {row['id']} finds a red ball and plays with a friend until night."
        assert row["story"] == stories[row["id"]]["story"]
    assert all("features" not in r["parts"] for r in rows if r["id"] == "s2")  # no features on that story
    stats = json.loads((run / "data" / "instruct_stats.json").read_text())
    assert stats["sets"] == 12 and stats["stories_with_sets"] == 6 and stats["failed_summaries"] == 0
    assert sum(stats["combinations"].values()) == 12
    assert stats["kinds"]["summary"] == 12
    assert stats["llm"]["backend_calls"] == 6  # one summary per story, shared by its sets
    assert not (run / "data" / "instruct_failed.jsonl").exists(), "no failed summary: no instruct_failed.jsonl"
    assert not (run / "data" / "instruction_dataset.jsonl.partial").exists()
    # Template version goes into every request (it is part of the cache key).
    assert {c.template_version for c in backend["backend"].calls} == {summary_template()[1]}


def test_words_part_lists_only_the_words_the_story_contains(tmp_path, backend):
    run = tmp_path / "run"
    write_stories(run, n=4)  # every story: jump, ball, shiny, red; no kite, dragon, fly, purple or moon
    path = run / "data" / "stories.jsonl"
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    recs[0]["words_used"] = {"noun": True, "verb": False, "adjective": True}  # recorded by generate: trusted as it is
    recs[1]["words"] = {"noun": "kite", "verb": "jump", "adjective": "shiny"}  # no words_used: computed from the text
    recs[2]["words"] = {"noun": "dragon", "verb": "fly", "adjective": "purple"}  # none of its words
    recs[3]["words"] = ["ball", "moon"]  # the published layout: words without parts of speech
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    probs = "instruct_data.probabilities={words: 1.0, sentence: 1.0}"
    assert main(["instruct-data", "--run-dir", str(run), "--set", "instruct_data.kinds=[words, sentence]", "--set", probs]) == 0
    rows = {r["id"]: r for r in read_jsonl(run / "data" / "instruction_dataset.jsonl")}
    words = {sid: dict(line.split(": ", 1) for line in r["instruction"].splitlines()).get("Words") for sid, r in rows.items()}
    assert words["s0"] == "ball, shiny", "the recorded words_used says the verb is missing"
    assert words["s1"] == "jump, shiny", "the story has no kite"
    assert words["s2"] is None, "a story with none of its words gets no Words part"
    assert rows["s2"]["parts"] == ["sentence"], "... but still its Sentence part"
    assert words["s3"] == "ball", "a word list keeps the words the story has"
    stats = json.loads((run / "data" / "instruct_stats.json").read_text())
    assert stats["stories_words_left_out"] == 4, "each story lacks at least one of its words"
    assert backend["backend"].calls == [], "no summary was asked for"


def test_same_seed_same_dataset_other_seed_differs(tmp_path, backend):
    outs = []
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        run = tmp_path / name
        write_stories(run)
        assert main(["instruct-data", "--run-dir", str(run), "--set", f"seed={seed}"]) == 0
        outs.append((run / "data" / "instruction_dataset.jsonl").read_text())
    assert outs[0] == outs[1]
    assert outs[0] != outs[2]


def test_validator_retries_then_records_failure(tmp_path, backend):
    def reply(request):
        if request.key == "s3":
            return "Sure! Here is a short summary of the story."
        return summary_reply(request)

    backend["backend"] = ScriptedBackend(reply, max_concurrency=1)
    run = tmp_path / "run"
    write_stories(run)
    assert main(["instruct-data", "--run-dir", str(run), "--set", ALL_SUMMARY, "--set", "llm.max_attempts=3"]) == 0
    calls = [c for c in backend["backend"].calls if c.key == "s3"]
    assert len(calls) == 3 and len({c.seed for c in calls}) == 3  # retried with fresh seeds
    failed = list(read_jsonl(run / "data" / "instruct_failed.jsonl"))
    assert [f["id"] for f in failed] == ["s3"]
    assert failed[0]["reason"].startswith("meta-text")
    rows = list(read_jsonl(run / "data" / "instruction_dataset.jsonl"))
    assert "s3" not in {r["id"] for r in rows} and len(rows) == 5
    assert json.loads((run / "data" / "instruct_stats.json").read_text())["failed_summaries"] == 1


def test_resume_does_not_ask_again(tmp_path, backend):
    class Crash(RuntimeError):
        pass

    state = {"calls": 0}

    def crashing(request):
        state["calls"] += 1
        if state["calls"] == 4:
            raise Crash("killed")
        return summary_reply(request)

    backend["backend"] = ScriptedBackend(crashing, max_concurrency=1)
    run = tmp_path / "run"
    write_stories(run, n=8)
    args = ["instruct-data", "--run-dir", str(run), "--set", ALL_SUMMARY, "--set", "instruct_data.sets_per_story=2", "--set", "llm.concurrency=1"]
    with pytest.raises(Crash):
        main(args)
    partial = run / "data" / "instruction_dataset.jsonl.partial"
    written = [r["id"] for r in read_jsonl(partial)]
    assert written == ["s0", "s0", "s1", "s1", "s2", "s2"]
    assert not (run / "data" / "instruction_dataset.jsonl").exists()  # never a half dataset under the final name
    with open(partial, "a") as fh:  # a kill in the middle of the next line
        fh.write('{"instruction": "Words: ju')

    backend["backend"] = ScriptedBackend(summary_reply, max_concurrency=1)
    assert main(args) == 0
    asked = [c.key for c in backend["backend"].calls]
    assert asked == ["s3", "s4", "s5", "s6", "s7"]  # s0-s2 neither asked nor read from the cache
    rows = list(read_jsonl(run / "data" / "instruction_dataset.jsonl"))
    assert [r["id"] for r in rows] == [f"s{i}" for i in range(8) for _ in range(2)]
    stats = json.loads((run / "data" / "instruct_stats.json").read_text())
    assert stats["resumed_stories"] == 3 and stats["sets"] == 16 and stats["stories_with_sets"] == 8
    assert stats["llm"]["cache_hits"] == 0

    # A forced rerun with an unchanged config starts over but pays nothing: all from the cache.
    backend["backend"] = ScriptedBackend(summary_reply, max_concurrency=1)
    assert main(args + ["--force"]) == 0
    assert backend["backend"].calls == []
    assert [r["id"] for r in read_jsonl(run / "data" / "instruction_dataset.jsonl")] == [r["id"] for r in rows]


def test_resume_cuts_a_story_written_half(tmp_path, backend):
    run = tmp_path / "run"
    write_stories(run, n=3)
    args = ["instruct-data", "--run-dir", str(run), "--set", ALL_SUMMARY, "--set", "instruct_data.sets_per_story=2"]
    assert main(args) == 0
    full = (run / "data" / "instruction_dataset.jsonl").read_text()
    # Simulate a kill after the first set of story s2 was written.
    lines = full.splitlines(keepends=True)
    from tinystories.data.instruct_data import _fingerprint  # the resume marker the stage wrote at start
    from tinystories.pipeline.registry import load_run_config as load_config
    from tinystories.io.rundir import RunDir, write_json

    cfg = load_config(run / "config.yaml")
    write_json(run / "data" / "instruct_progress.json", {"fingerprint": _fingerprint(cfg, run / "data" / "stories.jsonl")})
    (run / "data" / "instruction_dataset.jsonl.partial").write_text("".join(lines[:5]))
    (run / "data" / "instruct_failed.jsonl.partial").write_text("")
    (run / "data" / "instruction_dataset.jsonl").unlink()  # the stage is no longer current: a plain rerun resumes
    assert main(args) == 0
    assert (run / "data" / "instruction_dataset.jsonl").read_text() == full
    assert RunDir(run).stage_record("instruct-data")["metrics"]["resumed_stories"] == 2


PUBLISHED = """Features: Dialogue
Words: quit, oak, gloomy
Summary: Sara and Ben play in the park until it gets dark.
Story: 

Sara and Ben were playing in the park. "Let's go home," said Sara.
Ben said no, but then he agreed.
<|endoftext|>
Random sentence: They are very happy.
Summary: A dog finds a bone.
Story: The dog found a bone. He was very happy.
<|endoftext|>

Story: Tim had a red hat.<|endoftext|>
Words: run, cat, big
Story:
The big cat ran.
"""


def test_reads_published_tinystories_instruct(tmp_path):
    src = tmp_path / "TinyStoriesInstruct-valid.txt"
    src.write_text(PUBLISHED, encoding="utf-8")
    recs = list(instruct_published.read_tinystories_instruct(src))
    assert [r["parts"] for r in recs] == [["features", "words", "summary"], ["sentence", "summary"], [], ["words"]]
    assert recs[0]["instruction"] == "Features: Dialogue\nWords: quit, oak, gloomy\nSummary: Sara and Ben play in the park until it gets dark."
    assert recs[0]["story"] == 'Sara and Ben were playing in the park. "Let\'s go home," said Sara.\nBen said no, but then he agreed.'
    assert recs[1]["instruction"] == "Sentence: They are very happy.\nSummary: A dog finds a bone."
    assert recs[2] == {"instruction": "", "story": "Tim had a red hat.", "id": 2, "set": 0, "parts": []}
    assert recs[3]["story"] == "The big cat ran."
    assert len(list(instruct_published.read_tinystories_instruct(src, limit=2))) == 2

    run = tmp_path / "run"
    assert main(["instruct-data", "--run-dir", str(run), "--set", f"instruct_data.source_path={src}"]) == 0
    rows = list(read_jsonl(run / "data" / "instruction_dataset.jsonl"))
    assert rows == recs
    stats = json.loads((run / "data" / "instruct_stats.json").read_text())
    assert stats["source"] == "tinystories_instruct" and stats["sets"] == 4
    assert stats["combinations"]["(story only)"] == 1


@pytest.mark.parametrize(
    "text,match",
    [
        ("Words: a, b, c\nTitle: nope\nStory: x\n<|endoftext|>\n", r":2: expected 'Features:'"),
        ("Words: a, b, c\nSummary: s\n<|endoftext|>\n", r":1: block has Words: but no 'Story:'"),
        ("Story:\n\n<|endoftext|>\n", r"empty 'Story:'"),
    ],
)
def test_published_reader_rejects_bad_files(tmp_path, text, match):
    src = tmp_path / "bad.txt"
    src.write_text(text, encoding="utf-8")
    with pytest.raises(UserError, match=match):
        list(instruct_published.read_tinystories_instruct(src))


def test_missing_stories_names_the_stage_to_run(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["instruct-data", "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert "stories.jsonl" in err and "tinystories generate" in err and len(err.strip().splitlines()) == 1


def test_bad_inputs_are_one_line_errors(tmp_path, capsys, backend):
    run = tmp_path / "run"
    assert main(["instruct-data", "--run-dir", str(tmp_path / "other"), "--set", "instruct_data.source_path=" + str(tmp_path / "nope.txt")]) == 2
    assert "nope.txt" in capsys.readouterr().err

    (run / "data").mkdir(parents=True, exist_ok=True)
    (run / "data" / "stories.jsonl").write_text('{"id": 1, "story": "A cat sat."}\n{"id": 2}\n')
    assert main(["instruct-data", "--run-dir", str(run)]) == 2
    assert "stories.jsonl:2: no 'story' text" in capsys.readouterr().err

    (run / "data" / "stories.jsonl").write_text("")
    assert main(["instruct-data", "--run-dir", str(run)]) == 2
    assert "holds no stories" in capsys.readouterr().err
    assert not (run / "data" / "instruction_dataset.jsonl").exists()

    assert main(["instruct-data", "--run-dir", str(run), "--set", "instruct_data.kinds=[words, title]"]) == 2
    assert "instruct_data.kinds: unknown kind(s) title" in capsys.readouterr().err


def test_uses_a_story_summary_that_passes_the_checks(tmp_path, backend):
    run = tmp_path / "run"
    write_stories(run, n=3)
    path = run / "data" / "stories.jsonl"
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    recs[0]["summary"] = "Lily finds a red ball and plays with her friend."  # as imported TinyStories shards carry
    recs[1]["summary"] = "The story is about Tom and a ball."  # meta-text: the LLM writes one instead
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert main(["instruct-data", "--run-dir", str(run), "--set", ALL_SUMMARY]) == 0
    assert [c.key for c in backend["backend"].calls] == ["s1", "s2"]
    rows = {r["id"]: r for r in read_jsonl(run / "data" / "instruction_dataset.jsonl")}
    assert "Summary: Lily finds a red ball and plays with her friend." in rows["s0"]["instruction"]
    assert "Summary: Kid s1 finds a red ball" in rows["s1"]["instruction"]
    stats = json.loads((run / "data" / "instruct_stats.json").read_text())
    assert stats["summaries_from_stories"] == 1 and stats["summaries_requested"] == 2
