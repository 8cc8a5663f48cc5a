"""The shipped vocabulary, its build script, the `vocab` stage and `word_forms`."""

import importlib.util
import json
from pathlib import Path

import pytest
from lemminflect import getAllInflections, getLemma

from tinystories.cli import main
from tinystories.errors import UserError
from tinystories.text.vocabulary import CATEGORIES, load_vocabulary, shipped_path
from tinystories.text.words import vocabulary_forms, word_forms

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "build_vocabulary.py"
BASE_TAG = {"nouns": ("NOUN", "NN"), "verbs": ("VERB", "VB"), "adjectives": ("ADJ", "JJ")}


@pytest.fixture(scope="module")
def shipped():
    return load_vocabulary()


@pytest.fixture(scope="module")
def build_script():
    spec = importlib.util.spec_from_file_location("build_vocabulary", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# --- the shipped list ---------------------------------------------------------------------------


def test_shipped_list_size_and_split(shipped):
    counts = {cat: len(shipped[cat]) for cat in CATEGORIES}
    total = sum(counts.values())
    assert 1200 <= total <= 1800, counts
    for cat, n in counts.items():
        assert 0.25 <= n / total <= 0.45, (cat, n, total)
    assert shipped["meta"]["counts"] == {**counts, "total": total, "distinct": len(set().union(*map(set, (shipped[c] for c in CATEGORIES))))}


def test_shipped_list_is_sorted_lowercase_single_words(shipped):
    for cat in CATEGORIES:
        words = shipped[cat]
        assert words == sorted(set(words)), f"{cat} is not sorted or has duplicates"
        assert all(w.isascii() and w.isalpha() and w.islower() for w in words), cat


def test_verbs_are_base_forms(shipped):
    not_base = [v for v in shipped["verbs"] if v not in getLemma(v, upos="VERB")]
    assert not_base == []


def test_every_word_is_a_lowercase_lemma_of_its_category(shipped):
    # lemminflect keys proper nouns capitalised, so a lowercase lemma of the right part of
    # speech is not a name; the few exceptions are the build script's visible overrides.
    overrides = shipped["meta"]["pos_overrides"]
    for cat in CATEGORIES:
        upos, tag = BASE_TAG[cat]
        unknown = [w for w in shipped[cat] if w not in getAllInflections(w, upos).get(tag, ())]
        assert sorted(unknown) == sorted(overrides.get(cat, [])), cat


def test_child_words_present(shipped):
    expected = {
        "nouns": "ball dog tree cake cat mom dad toy bird apple book car duck sun moon teddy mouse fish".split(),
        "verbs": "jump run eat share play sleep hug swim climb laugh draw help find give".split(),
        "adjectives": "happy big red soft little sad hot cold funny kind sleepy shiny yummy scared".split(),
    }
    for cat, words in expected.items():
        missing = [w for w in words if w not in shipped[cat]]
        assert missing == [], (cat, missing)


def test_unsuitable_and_proper_words_absent(shipped):
    everything = set().union(*(set(shipped[c]) for c in CATEGORIES))
    deny_sample = (
        "kill gun shoot beer wine drunk sex naked damn hell stupid dumb idiot dead die death funeral "
        "blood war bomb knife drug cigarette government president tax bank business election software fat ugly hate"
    ).split()
    assert sorted(everything & set(deny_sample)) == []
    proper = "london john mary tuesday christmas america paris google monday english".split()
    assert sorted(everything & set(proper)) == []


def test_shared_words_are_deliberate(shipped, build_script):
    members = {}
    for cat in CATEGORIES:
        for w in shipped[cat]:
            members.setdefault(w, []).append(cat)
    overlap = {w: cats for w, cats in members.items() if len(cats) > 1}
    assert overlap == shipped["meta"]["shared"]
    assert {w: sorted(c) for w, c in overlap.items()} == {w: sorted(c) for w, c in build_script.SHARED.items()}


def test_build_script_reproduces_shipped_json(tmp_path, build_script, capsys):
    out = tmp_path / "vocabulary.json"
    assert build_script.main(["--out", str(out)]) == 0
    assert out.read_bytes() == shipped_path().read_bytes(), (
        "scripts/build_vocabulary.py no longer reproduces src/tinystories/data/vocabulary.json; "
        "rerun it (and check the wordfreq/lemminflect versions in its meta)"
    )
    assert build_script.main(["--out", str(shipped_path()), "--check"]) == 0


def test_build_script_deny_list_wins(tmp_path, build_script, monkeypatch):
    monkeypatch.setattr(build_script, "DENY", build_script.DENY + "\ndog\n")
    vocab, report = build_script.build()
    assert "dog" not in vocab["nouns"] and "dog" in report["nouns"]["denied"]


def test_build_script_rejects_undeclared_overlap(build_script, monkeypatch):
    monkeypatch.setattr(build_script, "VERBS", build_script.VERBS + "\nkite\n")
    # "kite" is a noun and a real (if rare) verb: it passes the checks, so only SHARED stops it.
    with pytest.raises(SystemExit, match="'kite' is in"):
        build_script.build()


# --- the stage ----------------------------------------------------------------------------------


def test_stage_writes_shipped_vocabulary(tmp_path, shipped, capsys):
    run = tmp_path / "run"
    assert main(["vocab", "--run-dir", str(run)]) == 0
    assert capsys.readouterr().out.startswith("vocab: done")
    written = json.loads((run / "data" / "vocabulary.json").read_text())
    for cat in CATEGORIES:
        assert written[cat] == shipped[cat]
    assert written["meta"]["source"] == "shipped"
    manifest = json.loads((run / "manifest.json").read_text())
    rec = manifest["stages"]["vocab"]
    assert rec["status"] == "done"
    assert rec["metrics"]["nouns"] == len(shipped["nouns"])
    assert rec["metrics"]["total"] == sum(len(shipped[c]) for c in CATEGORIES)
    assert main(["vocab", "--run-dir", str(run)]) == 0
    assert capsys.readouterr().out.startswith("vocab: skipped")


def test_stage_user_file_cap_and_rerun_on_edit(tmp_path):
    src = tmp_path / "words.json"
    src.write_text(json.dumps({"nouns": ["ladybug", "dog", "cat"], "verbs": ["run", "tiptoe"], "adjectives": ["red", "big", "squishy"]}))
    run = tmp_path / "run"
    assert main(["vocab", "--run-dir", str(run), "--set", f"vocab.path={src}", "--set", "vocab.max_per_category=2"]) == 0
    written = json.loads((run / "data" / "vocabulary.json").read_text())
    # The cap keeps the most frequent words (wordfreq), then sorts.
    assert written["nouns"] == ["cat", "dog"]
    assert written["verbs"] == ["run", "tiptoe"]
    assert written["adjectives"] == ["big", "red"]
    assert written["meta"]["source"] == str(src.resolve())
    # Editing the source file makes the stage current no longer: it reruns with the new words.
    src.write_text(json.dumps({"nouns": ["duck"], "verbs": ["swim"], "adjectives": ["wet"]}))
    assert main(["vocab", "--run-dir", str(run)]) == 0
    written = json.loads((run / "data" / "vocabulary.json").read_text())
    assert (written["nouns"], written["verbs"], written["adjectives"]) == (["duck"], ["swim"], ["wet"])


GOOD = {"nouns": ["dog"], "verbs": ["run"], "adjectives": ["red"]}


@pytest.mark.parametrize(
    "content, expect",
    [
        (json.dumps({"nouns": ["dog"], "verbs": ["run"]}), "missing 'adjectives'"),
        (json.dumps({**GOOD, "verbs": "run"}), "'verbs' is a str, not a list"),
        (json.dumps({**GOOD, "adjectives": []}), "'adjectives' is empty"),
        (json.dumps({**GOOD, "nouns": ["dog", 7]}), "nouns[1] is 7, not a string"),
        (json.dumps({**GOOD, "nouns": ["teddy bear"]}), "nouns[0] 'teddy bear' has spaces"),
        (json.dumps({**GOOD, "nouns": ["Dog"]}), "nouns[0] 'Dog' has capitals"),
        (json.dumps({**GOOD, "verbs": ["run2"]}), "verbs[0] 'run2' has digits"),
        (json.dumps({**GOOD, "nouns": ["dog", "cat", "dog"]}), "nouns has 'dog' twice (entries 0 and 2)"),
        (json.dumps({**GOOD, "adverbs": ["fast"]}), "unknown key 'adverbs'"),
        (json.dumps(["dog"]), "expected a JSON object"),
        ('{\n  "nouns": ["dog"],\n  "verbs": ["run"]\n  "adjectives": ["red"]\n}', "not valid JSON (line 4"),
    ],
)
def test_bad_user_file_is_one_line_error(tmp_path, capsys, content, expect):
    src = tmp_path / "bad.json"
    src.write_text(content)
    run = tmp_path / "run"
    assert main(["vocab", "--run-dir", str(run), "--set", f"vocab.path={src}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert str(src.resolve()) in err
    assert expect in err
    assert not (run / "data" / "vocabulary.json").exists()


def test_missing_user_file_and_bad_option(tmp_path, capsys):
    run = tmp_path / "run"
    missing = tmp_path / "nope.json"
    assert main(["vocab", "--run-dir", str(run), "--set", f"vocab.path={missing}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(missing) in err
    assert main(["vocab", "--run-dir", str(run), "--set", "vocab.max_per_category=-1"]) == 2
    assert "max_per_category" in capsys.readouterr().err


def test_load_vocabulary_errors_name_the_file(tmp_path):
    bad = tmp_path / "v.json"
    bad.write_text(json.dumps({"nouns": [], "verbs": ["Run"], "adjectives": [1, 2, 3, 4]}))
    with pytest.raises(UserError) as info:
        load_vocabulary(bad)
    msg = str(info.value)
    assert msg.startswith(str(bad)) and "'nouns' is empty" in msg and "more problem" in msg


# --- word forms ---------------------------------------------------------------------------------


def test_word_forms_examples():
    assert word_forms("jump", "verb") == {"jump", "jumps", "jumped", "jumping"}
    assert {"run", "runs", "ran", "running"} <= word_forms("run", "verb")
    assert word_forms("mouse", "noun") == {"mouse", "mice"}
    assert word_forms("happy", "adjective") == {"happy", "happier", "happiest"}
    assert {"good", "better", "best"} <= word_forms("good", "adjectives")
    assert word_forms("sheep", "noun") == {"sheep"}
    assert word_forms("scared", "adjective") == {"scared"}
    # Outside lemminflect's tables: regular rules still give the plural / verb endings.
    assert word_forms("firetruck", "noun") == {"firetruck", "firetrucks"}
    assert word_forms("Dog", "NOUN") == {"dog", "dogs"}
    with pytest.raises(ValueError):
        word_forms("dog", "adverb")


def test_word_forms_is_cached():
    assert word_forms("kitten", "noun") is word_forms("kitten", "nouns")


def test_vocabulary_forms_covers_inflections(shipped):
    forms = vocabulary_forms(shipped)
    assert {"dogs", "mice", "jumped", "ran", "happier", "ate"} <= forms
    assert "government" not in forms
