"""The import stage: txt, jsonl and TinyStories shards into data/stories.jsonl, through the filters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tinystories.data import import_stories as I
from tinystories.cli import main
from tinystories.io.rundir import read_jsonl

VOCAB = {"nouns": ["ball", "dog", "tree"], "verbs": ["jump", "run"], "adjectives": ["happy", "red"]}


def story(n: int) -> str:
    """A distinct, plausible 40-word story per n (its own words, so no two are near-duplicates)."""
    names = ["Tim", "Sue", "Max", "Lily", "Ben", "Mia", "Sam", "Amy", "Tom", "Zoe", "Leo", "Ann"]
    things = ["ball", "kite", "cake", "boat", "hat", "drum", "book", "cup", "sock", "bell", "fish", "star"]
    places = ["park", "yard", "beach", "farm", "lake", "woods", "town", "hill", "barn", "shop", "school", "zoo"]
    a, b, c = names[n % 12], things[(n * 5) % 12], places[(n * 7) % 12]
    return (
        f"Once upon a time, {a} found a {b} at the {c}. {a} was very happy and wanted to show it to a friend. "
        f"On the way home, the {b} fell in the mud. {a} cleaned it with water. Then {a} and the friend played "
        f"with the {b} at the {c} until the sun went down. Number {n} was the best day."
    )


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    vocab = tmp_path / "words.json"
    vocab.write_text(json.dumps(VOCAB))
    run = tmp_path / "run"
    assert main(["vocab", "--run-dir", str(run), "--set", f"vocab.path={vocab}"]) == 0
    return run


def imp(run: Path, *sets: str) -> int:
    args = ["import", "--run-dir", str(run), "--set", "generate.num_stories=0"]
    for s in sets:
        args += ["--set", s]
    return main(args)


def test_txt_reader_finds_delimiters_split_across_chunks(tmp_path):
    path = tmp_path / "stories.txt"
    texts = [story(i) for i in range(5)]
    path.write_text("\n<|endoftext|>\n".join(texts) + "\n<|endoftext|>\n\n")
    # 7-character chunks: nearly every delimiter is cut between two reads
    for chunk in (7, 13, 64, 1 << 20):
        got = [t for t, _ in I.read_txt(path, "<|endoftext|>", chunk_chars=chunk)]
        assert got == texts, chunk
    assert [p["source_index"] for _, p in I.read_txt(path)] == [0, 1, 2, 3, 4]


def test_import_txt_with_filters_and_dedup(run_dir, tmp_path):
    texts = [story(i) for i in range(10)]
    texts[4] = story(1).upper()  # exact duplicate after normalisation
    texts[6] = story(2).replace("best day", "best day ever")  # near duplicate
    texts[8] = "Too short."
    path = tmp_path / "TinyStories-valid.txt"
    path.write_text("<|endoftext|>\n".join(texts))
    assert imp(run_dir, f"import_.path={path}") == 0
    kept = list(read_jsonl(run_dir / "data/stories.jsonl"))
    assert [s["id"] for s in kept] == [f"i{i:07d}" for i in (0, 1, 2, 3, 5, 7, 9)]
    assert kept[0]["story"] == texts[0] and kept[0]["source_file"] == "TinyStories-valid.txt" and kept[0]["source_index"] == 0
    rejected = {r["id"]: r for r in read_jsonl(run_dir / "data/rejected.jsonl")}
    assert rejected["i0000004"]["reason"] == "duplicate" and rejected["i0000004"]["duplicate_of"] == "i0000001"
    assert rejected["i0000006"]["reason"] == "near_duplicate" and rejected["i0000006"]["duplicate_of"] == "i0000002"
    assert rejected["i0000008"]["reason"] == "too_short"
    dataset = (run_dir / "data/tinystories_dataset.txt").read_text()
    assert dataset.split("\n<|endoftext|>\n")[:-1] == [s["story"] for s in kept]
    stats = json.loads((run_dir / "data/stats.json").read_text())
    assert stats["kept"] == 7 and stats["attempted"] == 10 and stats["rejected_by_reason"] == {"duplicate": 1, "near_duplicate": 1, "too_short": 1}
    assert stats["vocabulary_share"] > 0
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["stages"]["import"]["metrics"]["format"] == "txt"


def test_import_jsonl_text_field_and_bad_lines(run_dir, tmp_path, capsys):
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(json.dumps({"body": story(i), "source": "me"}) for i in range(4)) + "\n")
    assert imp(run_dir, f"import_.path={path}", "import_.text_field=body") == 0
    kept = list(read_jsonl(run_dir / "data/stories.jsonl"))
    assert [s["story"] for s in kept] == [story(i) for i in range(4)]
    assert kept[2]["source"] == "me" and kept[2]["source_line"] == 3
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"body": story(0)}) + "\n" + json.dumps({"text": story(1)}) + "\n")
    other = tmp_path / "other"
    assert imp(other, f"import_.path={bad}", "import_.text_field=body", "import_.use_vocabulary=false") == 2
    err = capsys.readouterr().err.strip()
    assert f"{bad}:2: no text field 'body'" in err and "import_.text_field" in err and len(err.splitlines()) == 1
    bad.write_text("{not json\n")
    assert imp(other, f"import_.path={bad}", "import_.use_vocabulary=false") == 2
    assert f"{bad}:1: not valid JSON" in capsys.readouterr().err


def test_import_tinystories_shards_keeps_provenance(run_dir, tmp_path):
    shards = tmp_path / "TinyStories_all_data"
    shards.mkdir()
    n = 0
    for shard in range(2):
        items = []
        for _ in range(3):
            items.append(
                {
                    "story": story(n),
                    "instruction": {
                        "prompt:": 'Write a short story (3-5 paragraphs) ... use the verb "jump", the noun "ball" and the adjective "happy". ...',
                        "words": ["jump", "ball", "happy"],
                        "features": ["Dialogue", "BadEnding"] if n % 2 else [],
                    },
                    "summary": f"A child finds a thing, number {n}.",
                    "source": "GPT-4",
                }
            )
            n += 1
        (shards / f"data{shard:02d}.json").write_text(json.dumps(items))
    assert imp(run_dir, f"import_.path={shards}") == 0
    kept = list(read_jsonl(run_dir / "data/stories.jsonl"))
    assert len(kept) == 6 and [s["source_file"] for s in kept] == ["data00.json"] * 3 + ["data01.json"] * 3
    s = kept[1]
    assert s["words"] == {"verb": "jump", "noun": "ball", "adjective": "happy"}
    assert s["features"] == ["Dialogue", "BadEnding"] and s["summary"] == "A child finds a thing, number 1." and s["source"] == "GPT-4"
    assert s["prompt"].startswith("Write a short story") and s["source_index"] == 1
    assert s["words_used"] == {"verb": False, "noun": False, "adjective": True}  # story(1): a bell, no jumping, "happy"
    stats = json.loads((run_dir / "data/stats.json").read_text())
    assert stats["features"]["Dialogue"] == {"count": 3, "share": 0.5}


def test_limit_and_resume(run_dir, tmp_path):
    path = tmp_path / "stories.txt"
    path.write_text("<|endoftext|>".join(story(i) for i in range(12)))
    assert imp(run_dir, f"import_.path={path}", "import_.limit=5") == 0
    assert len(list(read_jsonl(run_dir / "data/stories.jsonl"))) == 5
    # a torn last line, as a kill mid-write leaves it
    with open(run_dir / "data/stories.jsonl", "a") as fh:
        fh.write('{"id": "i0000005", "sto')
    assert imp(run_dir, f"import_.path={path}", "import_.limit=0") == 0
    ids = [s["id"] for s in read_jsonl(run_dir / "data/stories.jsonl")]
    assert ids == [f"i{i:07d}" for i in range(12)]
    assert (run_dir / "data/tinystories_dataset.txt").read_text().count("<|endoftext|>") == 12


def test_bad_input_is_a_one_line_error(run_dir, tmp_path, capsys):
    assert imp(run_dir, f"import_.path={tmp_path / 'nope.txt'}") == 2
    err = capsys.readouterr().err.strip()
    assert "nope.txt: no such file or directory" in err and len(err.splitlines()) == 1
    assert imp(run_dir, f"import_.path={tmp_path}", "import_.format=xml") == 2
    assert "import_.format: 'xml' is not one of" in capsys.readouterr().err
    empty = tmp_path / "shards"
    empty.mkdir()
    assert imp(run_dir, f"import_.path={empty}") == 2
    assert "no *.json shards" in capsys.readouterr().err
    # importing while generation is configured would mix two datasets in one file
    path = tmp_path / "s.txt"
    path.write_text(story(0))
    assert main(["import", "--run-dir", str(run_dir), "--set", f"import_.path={path}", "--set", "generate.num_stories=5"]) == 2
    assert "generate.num_stories=0" in capsys.readouterr().err


def test_empty_path_does_nothing(run_dir):
    assert imp(run_dir) == 0
    assert not (run_dir / "data/stories.jsonl").exists()


def test_editing_the_source_file_reruns_the_import(run_dir, tmp_path, capsys):
    path = tmp_path / "stories.txt"
    path.write_text("\n<|endoftext|>\n".join(story(i) for i in range(4)) + "\n")
    assert imp(run_dir, f"import_.path={path}") == 0
    assert imp(run_dir, f"import_.path={path}") == 0
    assert "import: skipped" in capsys.readouterr().out
    path.write_text("\n<|endoftext|>\n".join(story(i) for i in range(6)) + "\n")
    assert imp(run_dir, f"import_.path={path}") == 0
    assert "import: done" in capsys.readouterr().out
    assert len(list(read_jsonl(run_dir / "data" / "stories.jsonl"))) == 6


@pytest.mark.parametrize(
    "make_source,sets",
    [
        (lambda tmp: tmp / "nope.txt", ()),  # no such file
        (lambda tmp: _write(tmp / "stories.txt", story(0)), ("import_.format=jsonl",)),  # not JSON lines
        (lambda tmp: _write(tmp / "stories.jsonl", '{"title": "no story field"}\n'), ()),  # no text field
        (lambda tmp: _write(tmp / "stories.jsonl", json.dumps({"story": story(0)}) + "\n{not json\n"), ()),  # a bad second line
        (lambda tmp: _write(tmp / "empty.txt", "  \n"), ()),  # no stories at all
    ],
)
def test_a_failed_import_leaves_no_files_behind(run_dir, tmp_path, make_source, sets):
    source = make_source(tmp_path)
    assert imp(run_dir, f"import_.path={source}", *sets) == 2
    left = sorted(p.name for p in (run_dir / "data").iterdir())
    for name in ("stories.jsonl", "rejected.jsonl", ".import_state.json", "tinystories_dataset.txt", "stats.json"):
        assert name not in left, f"{name} left behind in data/: {left}"


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
