"""Your own story, summary and grading prompts (generate.prompt_path,
instruct_data.summary_prompt_path, judge.template_path): checked when the config loads, used by
the stages, part of every cache key and fingerprint; and the Spanish worked example of
configs/spanish.yaml."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fake_llm import ScriptedBackend, register_scripted
from test_generate import VOCAB, _embedded_ready, good_story, prompt_of
from test_instruct_data import summary_reply, write_stories
from tinystories.cli import main
from tinystories.errors import UserError
from tinystories.io.rundir import read_jsonl
from tinystories.pipeline.registry import load_run_config
from tinystories.text import prompts as P
from tinystories.text.vocabulary import load_vocabulary

REPO = Path(__file__).resolve().parent.parent
SPANISH = REPO / "configs" / "spanish.yaml"

# The paper's prompt reworded, with the placeholders good_story (test_generate) reads back.
STORY = """# a test prompt
version: mine-v1
feature Dialogue: there is talking
feature Twist: something surprising happens
features_sentence: Also: {features}.
template:
Tell a tiny tale. The story should use the verb "{verb}", the noun "{noun}" and the adjective "{adjective}". {features_sentence} Keep it simple.
"""
SUMMARY = "# version: mine-v1\nSay in one line what happens here:\n\n{story}\n\nWhat happens:\n"


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def story_file(tmp_path: Path, text: str = STORY) -> Path:
    return write(tmp_path, "story.txt", text)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    vocab = write(tmp_path, "words.json", json.dumps(VOCAB))
    run = tmp_path / "run"
    assert main(["vocab", "--run-dir", str(run), "--set", f"vocab.path={vocab}"]) == 0
    return run


def generate(run: Path, *sets: str) -> int:
    args = ["generate", "--run-dir", str(run)]
    for s in ("llm.concurrency=1", "generate.num_stories=3", *sets):
        args += ["--set", s]
    return main(args)


# --- the story prompt file -------------------------------------------------------------------


def test_a_story_prompt_file_renders_like_the_shipped_one(tmp_path):
    t = P.story_template(story_file(tmp_path))
    words = {"noun": "ball", "verb": "jump", "adjective": "red"}
    assert P.story_prompt(words, ["Twist"], t) == (
        'Tell a tiny tale. The story should use the verb "jump", the noun "ball" and the adjective "red". '
        "Also: something surprising happens. Keep it simple."
    )
    assert P.story_prompt(words, [], t).endswith('the adjective "red". Keep it simple.'), "no features: the sentence vanishes"
    assert set(t["features"]) == {"Dialogue", "Twist"}, "the file defines the features"
    assert t["version"].startswith("mine-v1+"), "the declared version, plus the text's hash"


def test_the_version_follows_the_file_text_even_without_a_bump(tmp_path):
    before = P.story_template(story_file(tmp_path))["version"]
    after = P.story_template(story_file(tmp_path, STORY.replace("Keep it simple.", "Keep it short.")))["version"]
    assert before != after, "an edit without a version bump still changes the version"
    assert before != P.story_template()["version"], "a user's file never shares the shipped prompt's version"


BAD_STORY_FILES = [
    (STORY.replace('"{noun}"', '"{nombre}"'), r"lacks \{noun\}"),
    (STORY.replace("Keep it simple.", "Keep it {tone}."), r"unknown placeholder\(s\) \{tone\}"),
    (STORY.replace("Keep it simple.", "Keep it {simple."), r"stray brace.*\{\{ and \}\}"),
    (STORY.replace("template:\n", ""), "is not `key: value`"),
    (STORY.split("template:")[0], "no prompt; put a line `template:`"),
    (STORY.replace("version: mine-v1", "titel: mine"), r"story.txt:2: unknown key 'titel'"),
    (STORY.replace("features_sentence: Also: {features}.\n", ""), "no `features_sentence:` line"),
    (STORY.replace("Also: {features}.", "Also these."), r"features_sentence must hold \{features\}"),
    (STORY.replace(" {features_sentence}", ""), r"defines features but the template lacks \{features_sentence\}"),
]


def test_a_file_that_cannot_be_read_is_one_line_naming_the_option(tmp_path):
    cases = [
        (tmp_path / "nope.txt", "prompt file not found"),
        (tmp_path, "is a directory"),
        (write(tmp_path, "latin1.txt", STORY.replace("tale", "tàle").encode("latin-1")), "is not UTF-8"),
    ]
    for path, problem in cases:
        with pytest.raises(UserError, match=problem) as exc:
            P.story_template(path)
        assert str(path) in str(exc.value) and "generate.prompt_path" in str(exc.value), str(exc.value)


def test_a_broken_prompt_fails_when_the_config_loads_in_one_line(run_dir, tmp_path, capsys):
    backend = register_scripted(ScriptedBackend(good_story))
    path = story_file(tmp_path, STORY.replace('"{noun}"', '"{nombre}"'))
    assert generate(run_dir, f"generate.prompt_path={path}") == 2
    err = capsys.readouterr().err.strip()
    assert "generate.prompt_path" in err and str(path) in err, err
    assert len(err.splitlines()) == 1, err
    assert backend.calls == [], "no LLM time is spent on a broken prompt"


def test_features_the_file_does_not_define_are_refused(run_dir, tmp_path, capsys):
    assert generate(run_dir, f"generate.prompt_path={story_file(tmp_path)}") == 2, "the default features include four the file lacks"
    assert "unknown feature 'BadEnding'; known: Dialogue, Twist" in capsys.readouterr().err
    bare = story_file(tmp_path, "template:\nA story with the verb {verb}, the noun {noun} and the adjective {adjective}.\n")
    assert generate(run_dir, f"generate.prompt_path={bare}", "generate.features=[Dialogue]") == 2
    assert "defines none: add `feature Dialogue: ...` lines or set generate.features: []" in capsys.readouterr().err


# --- generate with the file: prompts, cache keys, reruns ------------------------------------


def test_generate_asks_with_the_file_and_reruns_when_it_changes(run_dir, tmp_path):
    path = story_file(tmp_path)
    backend = register_scripted(ScriptedBackend(good_story))
    opts = (f"generate.prompt_path={path}", "generate.features=[Dialogue, Twist]")
    assert generate(run_dir, *opts) == 0
    assert all(prompt_of(r).startswith("Tell a tiny tale.") for r in backend.calls), "every request uses the file"
    assert {r.template_version for r in backend.calls} == {P.story_template(path)["version"]}
    assert all(s["prompt"].startswith("Tell a tiny tale.") for s in read_jsonl(run_dir / "data/stories.jsonl"))
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert str(path.resolve()) in manifest["stages"]["generate"]["inputs"], "the file's hash is a stage input"

    first = len(backend.calls)
    assert generate(run_dir, *opts) == 0
    assert len(backend.calls) == first, "unchanged file: the stage is current"

    path.write_text(STORY.replace("Tell a tiny tale.", "Tell a short tale."))
    assert generate(run_dir, *opts) == 0
    again = backend.calls[first:]
    assert len(again) == 3, "an edited file reruns the stage and never reuses an answer to the old prompt"
    assert all(prompt_of(r).startswith("Tell a short tale.") for r in again)
    assert all(s["prompt"].startswith("Tell a short tale.") for s in read_jsonl(run_dir / "data/stories.jsonl")), "no story of the old prompt is kept"


def test_moving_the_file_keeps_the_answers(run_dir, tmp_path):
    path = story_file(tmp_path)
    backend = register_scripted(ScriptedBackend(good_story))
    assert generate(run_dir, f"generate.prompt_path={path}", "generate.features=[]") == 0
    moved = write(tmp_path, "moved.txt", path.read_text())
    assert generate(run_dir, f"generate.prompt_path={moved}", "generate.features=[]") == 0
    assert len(backend.calls) == 3, "the same text elsewhere: its answers come from the cache and the data stays"


def test_a_relative_path_is_kept_absolute_so_the_run_loads_from_anywhere(run_dir, tmp_path, monkeypatch):
    register_scripted(ScriptedBackend(good_story))
    story_file(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert generate(run_dir, "generate.prompt_path=story.txt", "generate.features=[]") == 0
    saved = load_run_config(run_dir / "config.yaml").generate.prompt_path
    assert saved == str((tmp_path / "story.txt").resolve()), "resolved against the directory the command ran in"
    monkeypatch.chdir(REPO)
    assert main(["status", "--run-dir", str(run_dir)]) == 0, "another directory still finds the prompt file"


# --- the summary prompt file -----------------------------------------------------------------


BAD_SUMMARY_FILES = [
    ("Say what happens:\n\nstory\n", r"lacks \{story\}"),
    ("Say what happens in {story} to {name}.\n", r"unknown placeholder\(s\) \{name\}"),
    ("# version: x\n# only comments\n", r"lacks \{story\}"),
]

def test_instruct_data_asks_with_the_summary_file_and_reruns_when_it_changes(tmp_path, capsys):
    run = tmp_path / "run"
    write_stories(run, n=3)
    path = write(tmp_path, "summary.txt", SUMMARY)
    backend = register_scripted(ScriptedBackend(summary_reply, max_concurrency=1))
    args = ["instruct-data", "--run-dir", str(run), "--set", "instruct_data.kinds=[summary]", "--set", f"instruct_data.summary_prompt_path={path}"]
    assert main(args) == 0
    assert len(backend.calls) == 3, "one summary per story"
    assert all(prompt_of(r).startswith("Say in one line what happens here:\n\nOnce upon a time") for r in backend.calls)
    assert {r.template_version for r in backend.calls} == {P.summary_template(path)[1]}
    assert P.summary_template(path)[1] != P.summary_template()[1], "never the shipped prompt's cache entries"

    path.write_text(SUMMARY.replace("Say in one line", "Tell in one line"))
    assert main(args) == 0
    assert len(backend.calls) == 6, "an edited file reruns the stage and asks again"
    assert all(prompt_of(r).startswith("Tell in one line") for r in backend.calls[3:])

    path.write_text("no placeholder here\n")
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "instruct_data.summary_prompt_path" in err and "lacks {story}" in err and len(err.splitlines()) == 1, err


# --- the judge's grading prompts -------------------------------------------------------------

JUDGE = """version: mine-v1
system: You grade stories.
continue:
Beginning and completion: {beginning} ***{completion}
Grade the part after ***.
instruct:
Instruction, then story: {beginning}
***{completion}
Grade how well the story follows the instruction.
"""


def test_a_judge_file_holds_both_requests_and_gets_the_reply_format(tmp_path):
    t = P.judge_template(write(tmp_path, "judge.txt", JUDGE))
    assert t["system"] == "You grade stories."
    assert t["version"].startswith("mine-v1+") and t["version"] != P.JUDGE_TEMPLATE_VERSION
    continued = P.judge_prompt("continue", "Tom saw a ", " dog.", t)
    assert continued.startswith("Beginning and completion: Tom saw a *** dog.\nGrade the part after ***.")
    assert continued.endswith(P.JUDGE_REPLY_FORMAT), "the reply format is always the toolkit's, so every reply parses"
    assert P.judge_prompt("instruct", "Words: dog", " A dog.", t).startswith("Instruction, then story: Words: dog\n*** A dog.")
    assert P.judge_completion_prompt("X", t["system"]) == f"You grade stories.\n\nX\n\n{P.JUDGE_REPLY_START}"
    shipped = P.judge_template()
    assert P.judge_prompt("continue", "a", "b", shipped) == P.judge_prompt("continue", "a", "b"), "no template: the shipped prompts"


BAD_JUDGE_FILES = [
    (JUDGE.replace(" ***{completion}\nGrade the part", " ***\nGrade the part"), r"the continue request lacks \{completion\}"),
    (JUDGE.replace("Grade how well", "Grade {how} well"), r"unknown placeholder\(s\) \{how\} in the instruct request"),
    (JUDGE.split("instruct:")[0], "no `instruct:` request"),
    (JUDGE + "continue:\nagain {beginning} {completion}\n", "a second `continue:` line"),
    (JUDGE.replace("system:", "sistema:"), r"judge.txt:2: 'sistema: You grade stories.' is not `version: ...` or `system: ...`"),
    (JUDGE.replace("Grade the part", "Grade {the part"), "stray brace"),
]


@pytest.mark.parametrize(
    "load, name, text, problem",
    [(P.story_template, "story.txt", *case) for case in BAD_STORY_FILES]
    + [(P.summary_template, "summary.txt", *case) for case in BAD_SUMMARY_FILES]
    + [(P.judge_template, "judge.txt", *case) for case in BAD_JUDGE_FILES],
)
def test_a_broken_prompt_file_is_named_with_its_fix(tmp_path, load, name, text, problem):
    path = write(tmp_path, name, text)
    with pytest.raises(UserError, match=problem) as exc:
        load(path)
    assert str(path) in str(exc.value), "the error names the file"


# --- the worked example: Spanish -------------------------------------------------------------


def test_the_spanish_example_loads_and_renders_in_spanish(monkeypatch):
    monkeypatch.chdir(REPO)  # its paths are relative to the repository root, as the README runs it
    cfg = load_run_config(SPANISH)
    vocab = load_vocabulary(cfg.vocab.path)
    assert min(len(vocab[c]) for c in ("nouns", "verbs", "adjectives")) >= 20, "a real vocabulary, not a token list"
    assert "niño" in vocab["nouns"], "non-ASCII words load"
    t = P.story_template(cfg.generate.prompt_path)
    assert set(cfg.generate.features) <= set(t["features"]), "the shipped feature names are all defined"
    prompt = P.story_prompt({"noun": "perro", "verb": "saltar", "adjective": "feliz"}, ["Dialogue"], t)
    assert 'el verbo "saltar", el sustantivo "perro" y el adjetivo "feliz"' in prompt
    assert "al menos un diálogo" in prompt
    assert P.summary_prompt("Había una vez un perro.", P.summary_template(cfg.instruct_data.summary_prompt_path)[0]).endswith("Había una vez un perro.\n\nEn resumen:\n")
    judge = cfg.judge.template()
    assert judge["system"].startswith("Eres una maestra") and judge["continue"].endswith(P.JUDGE_REPLY_FORMAT)
    assert "{beginning} ***{completion}" in open(cfg.judge.template_path, encoding="utf-8").read(), "Figure 3's separator, as the shipped prompt"


def test_vocabulary_words_may_have_accents_but_not_capitals(tmp_path):
    ok = write(tmp_path, "ok.json", json.dumps({"nouns": ["niño", "árbol"], "verbs": ["reír"], "adjectives": ["pequeño"]}))
    assert load_vocabulary(ok)["nouns"] == ["niño", "árbol"]
    bad = write(tmp_path, "bad.json", json.dumps({"nouns": ["Niño"], "verbs": ["reír"], "adjectives": ["pequeño"]}))
    with pytest.raises(UserError, match="has capitals"):
        load_vocabulary(bad)


@pytest.mark.embedded
@pytest.mark.skipif(not _embedded_ready(), reason="llama-cpp-python or the embedded backend is not installed")
def test_one_real_spanish_story_from_the_embedded_model(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    run = tmp_path / "es"
    sets = [
        "llm.model=smollm2-135m", "llm.max_attempts=1", "llm.timeout_s=900",
        "generate.num_stories=1", "generate.max_requests=1", "generate.max_tokens=64", "generate.min_words=5",
    ]  # fmt: skip
    args = ["run", "--config", str(SPANISH), "--run-dir", str(run), "--until", "generate"]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0
    metrics = json.loads((run / "manifest.json").read_text())["stages"]["generate"]["metrics"]
    assert metrics["backend_calls"] == 1, "one real request"
    assert metrics["template_version"].startswith("story-es-v1+"), "the Spanish prompt was used"


def test_the_judge_grades_with_the_file_and_regrades_when_it_changes(tmp_path, capsys):
    from test_judge import judge_args, make_eval_run, reply

    run = make_eval_run(tmp_path)
    path = write(tmp_path, "judge.txt", JUDGE)
    backend = register_scripted(ScriptedBackend(lambda request: reply(7, 6, 5)))
    args = judge_args(run, "--set", f"judge.template_path={path}", "--set", "judge.scoring=sampled")
    assert main(args) == 0
    assert {r.messages[0]["content"] for r in backend.calls} == {"You grade stories."}, "the file's system line"
    users = [r.messages[-1]["content"] for r in backend.calls]
    assert all(u.startswith(("Beginning and completion: ", "Instruction, then story: ")) for u in users), "the file's requests"
    assert all(u.endswith(P.JUDGE_REPLY_FORMAT) for u in users)
    version = P.judge_template(path)["version"]
    assert {r.template_version for r in backend.calls} == {version}
    scores = json.loads((run / "eval" / "scores.json").read_text())
    assert scores["judge"]["template_version"] == version, "the report names the prompts that graded"

    first = len(backend.calls)
    path.write_text(JUDGE.replace("Grade the part after ***.", "Grade the part after the stars."))
    assert main(args) == 0
    assert len(backend.calls) == 2 * first, "an edited file regrades everything: no judgment of the old prompt is reused"

    path.write_text(JUDGE.replace("{completion}", "{answer}"))
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "judge.template_path" in err and "lacks {completion}" in err and len(err.splitlines()) == 1, err


def test_expected_scoring_reads_the_files_prompts_too(tmp_path):
    from test_judge import completion_judge_args, forced_judge, make_eval_run

    run = make_eval_run(tmp_path)
    continue_body, instruct_body = (t[: -len(P.JUDGE_REPLY_FORMAT)].strip() for t in (P.JUDGE_CONTINUE_TEMPLATE, P.JUDGE_INSTRUCT_TEMPLATE))
    path = write(tmp_path, "judge.txt", f"system: You grade stories.\ncontinue:\nKindly: {continue_body}\ninstruct:\nKindly: {instruct_body}\n")
    backend = register_scripted(ScriptedBackend(forced_judge))
    assert main(completion_judge_args(run, "--set", f"judge.template_path={path}", "--set", "judge.scoring=expected")) == 0
    graded = [r for r in backend.calls if r.key != "judge|logprobs-probe"]
    assert graded, "the judge was asked"
    assert all(r.prompt.startswith("You grade stories.\n\nKindly: ") for r in graded), "forced prompts use the file's system line and requests"
    scores = json.loads((run / "eval" / "scores.json").read_text())
    assert scores["judge"]["scoring"] == "expected" and scores["totals"]["failed"] == 0, "the appended reply format is what expected scoring forces"
    asked = [r for r in graded if r.continuations]
    assert asked and all(r.continuations[0] == "Grammar: " for r in asked), "the file has no per-grade questions: its format lines are read"
