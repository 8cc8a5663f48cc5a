"""The tokenizer stage: byte-level BPE that round-trips every string, loadable by transformers."""

from __future__ import annotations

import json
import random

import pytest

from tinystories.cli import main
from tinystories.errors import UserError
from tinystories.text.storyfile import count_stories, iter_story_chunks
from tinystories.train.tokenizer import EOS, load_raw_tokenizer, load_tokenizer

NAMES = ["Tom", "Lily", "Max", "Zoë", "Ben", "Mia", "José", "Sara"]
THINGS = ["ball", "kite", "box", "hat", "cake", "book", "boat", "flower"]
ODD = [
    "  Leading and trailing spaces stay.  ",
    "Unicode: café, naïve, 日本語の話, Ελληνικά, emoji 🐶🎈 and a tab\there.",
    "Lines\nbreak\r\nhere\n\nand   many    spaces.",
    'Quotes "like this" and \'this\', dashes — and … ellipses.',
]


def make_stories(n: int = 300, seed: int = 0) -> list[str]:
    """Short synthetic stories (deterministic), a few of them with unicode and odd spacing."""
    r = random.Random(seed)
    out = []
    for i in range(n):
        a, b = r.sample(NAMES, 2)
        thing = r.choice(THINGS)
        parts = [f"Once upon a time, {a} had a {thing}.", f"{b} counted to {i}."]  # the number keeps stories unique
        for _ in range(r.randint(1, 4)):
            parts.append(r.choice([f"{b} wanted the {thing}.", f'"Let us play!" said {a}.', f"They were happy in the park with {b}."]))
        story = " ".join(parts)
        if i % 25 == 0:
            story += " " + ODD[(i // 25) % len(ODD)].strip()
        out.append(story)
    return out


def write_dataset(run_dir, stories: list[str]) -> None:
    """The layout the dataset stages write: each story followed by a line `<|endoftext|>`."""
    path = run_dir / "data" / "tinystories_dataset.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{s}\n{EOS}\n" for s in stories), encoding="utf-8")


def train(run_dir, *sets: str) -> int:
    args = ["tokenizer", "--run-dir", str(run_dir), "--set", "tokenizer.vocab_size=400"]
    for s in sets:
        args += ["--set", s]
    return main(args)


def test_round_trip_on_every_story_and_odd_text(tmp_path):
    stories = make_stories()
    write_dataset(tmp_path, stories)
    assert train(tmp_path) == 0
    fast = load_tokenizer(tmp_path)
    raw = load_raw_tokenizer(tmp_path)
    for text in stories + ODD + ["", " ", "\n", "a" * 500, "\x00\x7f bytes", "Zoë👩‍👩‍👧 "]:
        ids = raw.encode(text).ids
        assert raw.decode(ids) == text
        assert fast.decode(fast.encode(text)) == text
        assert fast.encode(text) == ids  # the transformers wrapper adds nothing (no bos/eos)
    # It learned merges: common words take fewer tokens than bytes.
    assert len(raw.encode("Once upon a time").ids) < len("Once upon a time")


def test_pretrained_fast_and_autotokenizer_load_it(tmp_path):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    write_dataset(tmp_path, make_stories())
    assert train(tmp_path) == 0
    tok_dir = tmp_path / "tokenizer"
    assert {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"} <= {p.name for p in tok_dir.iterdir()}
    eos_id = load_raw_tokenizer(tmp_path).token_to_id(EOS)
    for tok in (PreTrainedTokenizerFast.from_pretrained(str(tok_dir)), AutoTokenizer.from_pretrained(str(tok_dir)), load_tokenizer(tok_dir)):
        assert tok.eos_token == EOS and tok.eos_token_id == eos_id
        assert tok.pad_token_id == eos_id and tok.bos_token_id == eos_id
        assert tok.encode(f"Hi.{EOS}") == tok.encode("Hi.") + [eos_id]
        assert len(tok) == 400
    assert json.loads((tok_dir / "special_tokens_map.json").read_text())["eos_token"] == EOS


def test_metrics_max_stories_and_determinism(tmp_path, capsys):
    stories = make_stories()
    write_dataset(tmp_path, stories)
    assert train(tmp_path, "tokenizer.max_stories=120") == 0
    rec = json.loads((tmp_path / "manifest.json").read_text())["stages"]["tokenizer"]
    m = rec["metrics"]
    assert rec["status"] == "done"
    assert m["stories_used"] == 120 and 300 < m["vocab_size"] <= 400 == m["vocab_size_requested"]
    assert 1.5 < m["bytes_per_token"] < 20 and m["train_s"] >= 0
    first = (tmp_path / "tokenizer" / "tokenizer.json").read_bytes()
    capsys.readouterr()
    assert train(tmp_path, "tokenizer.max_stories=120") == 0
    assert capsys.readouterr().out.startswith("tokenizer: skipped")  # same config and input
    # The run dir's config.yaml keeps earlier --set values, so go back to all stories explicitly.
    assert train(tmp_path, "tokenizer.max_stories=0") == 0  # config changed: trained again
    assert json.loads((tmp_path / "manifest.json").read_text())["stages"]["tokenizer"]["metrics"]["stories_used"] == len(stories)
    assert (tmp_path / "tokenizer" / "tokenizer.json").read_bytes() != first
    assert train(tmp_path, "tokenizer.max_stories=120") == 0
    assert (tmp_path / "tokenizer" / "tokenizer.json").read_bytes() == first  # same data, same tokenizer
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tokenizer")]  # no temp dirs left


def test_chunked_reading_is_exact_and_resumable(tmp_path):
    stories = make_stories(120)
    write_dataset(tmp_path, stories)
    path = tmp_path / "data" / "tinystories_dataset.txt"
    # Tiny blocks: stories and multi-byte characters straddle block edges.
    chunks = list(iter_story_chunks(path, chunk_bytes=97))
    assert [s for c, _ in chunks for s in c] == stories
    offsets = [end for _, end in chunks]
    assert offsets == sorted(offsets) and offsets[-1] == path.stat().st_size
    mid = offsets[len(offsets) // 2]
    done = sum(len(c) for c, end in chunks if end <= mid)
    assert [s for c, _ in iter_story_chunks(path, chunk_bytes=97, start=mid) for s in c] == stories[done:]
    # A delimiter with no newlines around it, and empty stories, read the same way.
    assert count_stories(path, chunk_bytes=97) == len(stories)
    path.write_text(f"one{EOS}  two \n{EOS}{EOS}\n\nthree", encoding="utf-8")
    assert [s for c, _ in iter_story_chunks(path, chunk_bytes=5) for s in c] == ["one", "two", "three"]
    # count_stories (bytes, no splitting) agrees with the reader on awkward files at any block size.
    r = random.Random(1)
    pieces = [EOS, " ", "\n", "\t", "a", "story", "ü", "\u3000", "\xa0 b"]
    for _ in range(300):
        path.write_text("".join(r.choice(pieces) for _ in range(r.randint(0, 25))), encoding="utf-8")
        for chunk_bytes in (1, 7, 1 << 20):
            assert count_stories(path, chunk_bytes) == sum(len(c) for c, _ in iter_story_chunks(path, chunk_bytes))
    path.write_bytes(b"fine story\n" + EOS.encode() + b"\nbad \xff byte\n")
    with pytest.raises(UserError, match="byte 29 is not valid UTF-8"):
        list(iter_story_chunks(path))


@pytest.mark.parametrize(
    "setup, sets, message",
    [
        ("stories", ["tokenizer.vocab_size=70000"], "tokenizer.vocab_size: 70000 does not fit"),
        ("stories", ["tokenizer.vocab_size=100"], "tokenizer.vocab_size: 100 is too small"),
        ("missing", [], "tinystories_dataset.txt"),
        ("empty", [], "dataset file is empty"),
        ("delimiters", [], "no stories found"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, setup, sets, message):
    data = tmp_path / "data" / "tinystories_dataset.txt"
    data.parent.mkdir(parents=True)
    if setup == "stories":
        write_dataset(tmp_path, make_stories(50))
    elif setup == "empty":
        data.write_text("")
    elif setup == "delimiters":
        data.write_text(f"\n{EOS}\n  \n{EOS}\n")
    capsys.readouterr()
    assert train(tmp_path, *sets) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert not (tmp_path / "tokenizer").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tokenizer")]
