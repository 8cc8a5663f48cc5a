"""The prepare stage: uint16 train/val bins that hold every story exactly once, split by story."""

from __future__ import annotations

import json

import numpy as np
import pytest

from test_tokenizer import make_stories, write_dataset
from tinystories.cli import main
from tinystories.io.layout import EOS
from tinystories.train import prepare
from tinystories.train.bpe import load_raw_tokenizer
from tinystories.train.heldout import read_val_stories, story_key
from tinystories.train.prepare import read_meta

N_STORIES = 300


def setup_run(run_dir, n: int = N_STORIES, seed: int = 0) -> list[str]:
    stories = make_stories(n, seed=seed)
    write_dataset(run_dir, stories)
    assert main(["tokenizer", "--run-dir", str(run_dir), "--set", "tokenizer.vocab_size=400"]) == 0
    return stories


def run_prepare(run_dir, *sets: str) -> int:
    args = ["prepare", "--run-dir", str(run_dir)]
    for s in sets:
        args += ["--set", s]
    return main(args)


def load_split(run_dir, split: str) -> np.memmap:
    return np.memmap(run_dir / "data" / f"{split}.bin", dtype=np.uint16, mode="r")


def split_stories(ids: np.ndarray, eos_id: int) -> list[np.ndarray]:
    assert ids.size and ids[-1] == eos_id  # every story, the last included, ends with eos
    cuts = np.flatnonzero(ids == eos_id)
    return np.split(ids, cuts + 1)[:-1]


def test_bins_hold_every_story_once_with_eos(tmp_path):
    stories = setup_run(tmp_path)
    assert run_prepare(tmp_path, "prepare.val_fraction=0.2") == 0
    tok = load_raw_tokenizer(tmp_path)
    eos_id = tok.token_to_id(EOS)
    meta = read_meta(tmp_path)
    assert meta["vocab_size"] == tok.get_vocab_size() and meta["eos_id"] == eos_id and meta["dtype"] == "uint16"

    index = {s: i for i, s in enumerate(stories)}
    seen: dict[str, list[int]] = {}
    for split in ("train", "val"):
        data = load_split(tmp_path, split)
        assert isinstance(data, np.memmap) and data.dtype == np.uint16
        assert data.size == meta[split]["tokens"] == (tmp_path / "data" / f"{split}.bin").stat().st_size // 2
        pieces = split_stories(np.asarray(data), eos_id)
        texts = [tok.decode(p[:-1].tolist()) for p in pieces]
        # Exactly the ids of encoding each story alone, then eos (grouped encoding changes nothing).
        for p, text in zip(pieces, texts):
            assert p[:-1].tolist() == tok.encode(text, add_special_tokens=False).ids
        seen[split] = [index[t] for t in texts]  # KeyError if a decoded story is not a dataset story
        assert seen[split] == sorted(seen[split])  # file order is kept within a split
        assert meta[split]["stories"] == len(texts)
        assert meta[split]["bytes"] == sum(len(t.encode("utf-8")) for t in texts)
    assert sorted(seen["train"] + seen["val"]) == list(range(len(stories)))  # each story exactly once
    assert len(seen["val"]) == round(0.2 * len(stories))
    # The validation stories are recorded for sft, which holds out the very same ones.
    assert read_val_stories(tmp_path / "data" / "val_stories.json") == {story_key(stories[i]) for i in seen["val"]}
    assert not (tmp_path / "data" / ".prepare.state.json").exists()
    assert not list((tmp_path / "data").glob(".*.partial"))


def test_same_seed_same_bins_and_chunking_does_not_matter(tmp_path):
    a, b, c, d = (tmp_path / x for x in "abcd")
    for run_dir in (a, b, c, d):
        setup_run(run_dir)
    assert run_prepare(a) == 0
    assert run_prepare(b, "prepare.chunk_mb=0.002") == 0  # ~2 KB blocks: many chunks
    assert main(["prepare", "--run-dir", str(c), "--set", "seed=7"]) == 0
    assert run_prepare(d, "prepare.chunk_mb=0.002") == 0
    for split in ("train.bin", "val.bin"):
        assert (a / "data" / split).read_bytes() == (b / "data" / split).read_bytes() == (d / "data" / split).read_bytes()
        assert (a / "data" / split).read_bytes() != (c / "data" / split).read_bytes()  # another seed, another split
    assert read_meta(a)["train"] == read_meta(b)["train"]


def test_executor_skips_rerun_and_redoes_after_config_change(tmp_path, capsys):
    setup_run(tmp_path)
    assert run_prepare(tmp_path) == 0
    first = read_meta(tmp_path)
    capsys.readouterr()
    assert run_prepare(tmp_path) == 0
    assert capsys.readouterr().out.startswith("prepare: skipped")
    assert run_prepare(tmp_path, "prepare.val_fraction=0.1") == 0
    assert capsys.readouterr().out.startswith("prepare: done")
    second = read_meta(tmp_path)
    assert second["val"]["stories"] == round(0.1 * N_STORIES) != first["val"]["stories"]
    # A retrained tokenizer (a tokenizer option changed) makes prepare run again too.
    assert main(["tokenizer", "--run-dir", str(tmp_path), "--set", "tokenizer.vocab_size=350"]) == 0
    capsys.readouterr()
    assert run_prepare(tmp_path) == 0
    assert capsys.readouterr().out.startswith("prepare: done")
    assert read_meta(tmp_path)["vocab_size"] == 350


def test_interrupted_run_resumes_at_the_last_chunk(tmp_path, monkeypatch):
    ref = tmp_path / "ref"
    setup_run(ref)
    assert run_prepare(ref, "prepare.chunk_mb=0.002") == 0

    run_dir = tmp_path / "run"
    setup_run(run_dir)
    real_write_json = prepare.write_json
    calls = {"n": 0}

    def killed_after_three_chunks(path, obj):
        if str(path).endswith(".prepare.state.json"):
            calls["n"] += 1
            if calls["n"] == 4:
                raise KeyboardInterrupt
        real_write_json(path, obj)

    monkeypatch.setattr(prepare, "write_json", killed_after_three_chunks)
    assert run_prepare(run_dir, "prepare.chunk_mb=0.002") == 130
    assert not (run_dir / "data" / "train.bin").exists() and not (run_dir / "data" / "meta.json").exists()
    state = json.loads((run_dir / "data" / ".prepare.state.json").read_text())
    assert state["offset"] > 0 and state["story_index"] > 0
    monkeypatch.setattr(prepare, "write_json", real_write_json)

    assert run_prepare(run_dir, "prepare.chunk_mb=0.002") == 0
    metrics = json.loads((run_dir / "manifest.json").read_text())["stages"]["prepare"]["metrics"]
    assert metrics["resumed_from_byte"] == state["offset"]
    for name in ("train.bin", "val.bin", "val_stories.json"):
        assert (run_dir / "data" / name).read_bytes() == (ref / "data" / name).read_bytes(), name
    assert not (run_dir / "data" / ".prepare.state.json").exists()


@pytest.mark.parametrize(
    "setup, sets, message",
    [
        ("few", ["prepare.val_fraction=0.999"], "cannot be split into train and validation"),
        ("empty", [], "dataset file is empty"),
        ("bad_utf8", [], "is not valid UTF-8"),
        ("missing", [], "tinystories_dataset.txt"),
        ("no_tokenizer", [], "tokenizer/tokenizer.json"),
        ("stories", ["prepare.val_fraction=1.5"], "prepare.val_fraction: 1.5 must be between 0 and 1"),
    ],
)
def test_bad_input_is_one_line_and_leaves_no_outputs(tmp_path, capsys, setup, sets, message):
    if setup in ("few", "stories", "empty", "missing", "bad_utf8"):
        setup_run(tmp_path, n=40)
    data = tmp_path / "data" / "tinystories_dataset.txt"
    if setup == "empty":
        data.write_text("")
    elif setup == "missing":
        data.unlink()
    elif setup == "bad_utf8":
        data.write_bytes(data.read_bytes() + b"\nbroken \xff\n")
    elif setup == "no_tokenizer":
        write_dataset(tmp_path, make_stories(40))
    capsys.readouterr()
    assert run_prepare(tmp_path, *sets) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1 and err.startswith("error: ")
    leftovers = [p.name for p in (tmp_path / "data").iterdir() if p.name.endswith((".bin", ".partial", ".tmp")) or p.name.startswith((".prepare", "meta"))]
    assert leftovers == []


def test_a_split_shorter_than_the_context_is_prepared_and_pretrain_names_the_fix(tmp_path):
    """The bins do not depend on the model's context, so prepare writes a short split; pretrain,
    which owns the context, refuses it (tests/test_pretrain.py, "short val")."""
    setup_run(tmp_path, n=40)
    assert run_prepare(tmp_path, "prepare.val_fraction=0.01") == 0
    assert read_meta(tmp_path)["val"]["stories"] == 1
