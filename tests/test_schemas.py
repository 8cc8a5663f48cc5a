"""Every JSONL the toolkit writes has one schema (each row the same keys, absent values null,
no NaN) and is never left empty, so `datasets` (and pandas) type it as plain columns.

The files come from tiny end-to-end runs built with the fixtures of the stage tests; each
run mixes rows that differ in what they know (a near duplicate names the story it repeats,
an instruction requests words but a beginning does not, validation runs only on some steps),
which is where a row would otherwise drop a key.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from fake_llm import ScriptedBackend
from pretrain_fixtures import make_run_dir, make_sft_run, write_config, write_sft_config
from test_complete import complete_args, make_model_dir, write_prompts
from test_generate import generate, good_story, index, install
from test_generate import run_dir as run_dir  # noqa: F401  (the fixture: a run dir with a vocabulary)
from test_instruct_data import ALL_SUMMARY, summary_reply, write_stories
from tinystories.cli import main
from tinystories.llm import register_backend

HAS_DATASETS = importlib.util.find_spec("datasets") is not None


def _no_nan(name: str):
    raise AssertionError(f"{name} in a JSONL row: not JSON, write null instead")


def one_schema_rows(path: Path) -> list[dict]:
    """The rows of `path`, checked: the file is not empty, every row has the first row's keys,
    and `datasets` loads it with those keys as columns (when it is installed)."""
    assert path.exists(), f"{path} was not written"
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines, f"{path} is empty: a file with nothing to say is not written"
    rows = [json.loads(line, parse_constant=_no_nan) for line in lines]
    keys = set(rows[0])
    for n, row in enumerate(rows, 1):
        assert set(row) == keys, f"{path}:{n}: keys differ from row 1 by {sorted(set(row) ^ keys)}"
    if HAS_DATASETS:
        from datasets import load_dataset

        table = load_dataset("json", data_files=str(path), split="train")
        assert set(table.column_names) == keys, f"{path}: datasets columns {table.column_names}"
        assert table.num_rows == len(rows), f"{path}: datasets read {table.num_rows} of {len(rows)} rows"
    return rows


def assert_both(rows: list[dict], key: str, path: Path) -> None:
    """`key` is null in some rows and set in others: the file does exercise an optional value."""
    values = [row[key] for row in rows]
    assert any(v is None for v in values), f"{path}: no row without {key}; the check tells nothing"
    assert any(v is not None for v in values), f"{path}: no row with {key}; the check tells nothing"


def test_generated_stories_and_rejections(run_dir, monkeypatch):  # noqa: F811
    kept_text: dict[int, str] = {}

    def reply(request):
        i = index(request)
        if i == 1:
            return "The dog ran. The end."  # too short
        if i == 2:
            return kept_text[0].replace("The end.", "The very end.")  # a near duplicate of story 0
        kept_text[i] = good_story(request)
        return kept_text[i]

    install(monkeypatch, reply)
    assert generate(run_dir, "generate.num_stories=4", "generate.max_requests=10", "generate.require_words=false") == 0
    stories = one_schema_rows(run_dir / "data" / "stories.jsonl")
    assert len(stories) == 4, "four stories kept"
    rejected = one_schema_rows(run_dir / "data" / "rejected.jsonl")
    assert sorted(r["reason"] for r in rejected) == ["near_duplicate", "too_short"], rejected
    assert_both(rejected, "duplicate_of", run_dir / "data" / "rejected.jsonl")
    assert all(r["words"] is not None for r in rejected), "a rejected row keeps its request's words"


def test_imported_stories_with_and_without_optional_fields(run_dir, tmp_path):  # noqa: F811
    from test_import import imp, story

    source = tmp_path / "source.jsonl"
    rows = [
        {"story": story(0), "summary": "A child finds a thing and plays with it.", "words": {"noun": "ball", "verb": "run", "adjective": "red"}},
        {"story": story(1)},
        {"story": story(2), "features": ["Dialogue"], "source": "GPT-4"},
        {"story": "Too short."},
    ]
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert imp(run_dir, f"import_.path={source}") == 0
    path = run_dir / "data" / "stories.jsonl"
    stories = one_schema_rows(path)
    assert len(stories) == 3, "three stories kept"
    for key in ("summary", "words", "features", "source", "words_used"):
        assert_both(stories, key, path)
    rejected = one_schema_rows(run_dir / "data" / "rejected.jsonl")
    assert [r["reason"] for r in rejected] == ["too_short"], rejected


def test_instruction_dataset_and_failed_summaries(tmp_path, monkeypatch):
    def reply(request):
        return "Sure! Here is a short summary of the story." if request.key == "s3" else summary_reply(request)

    register_backend("embedded", lambda cfg: ScriptedBackend(reply, max_concurrency=1))
    run = tmp_path / "run"
    write_stories(run)
    assert main(["instruct-data", "--run-dir", str(run), "--set", ALL_SUMMARY, "--set", "llm.max_attempts=2", "--set", "instruct_data.sets_per_story=2"]) == 0
    pairs = one_schema_rows(run / "data" / "instruction_dataset.jsonl")
    assert len(pairs) == 10, "two sets for each of the five summarised stories"
    failed = one_schema_rows(run / "data" / "instruct_failed.jsonl")
    assert [f["id"] for f in failed] == ["s3"], failed

    # Once every summary succeeds the failed list goes: an empty file is not left, nor the old list.
    register_backend("embedded", lambda cfg: ScriptedBackend(summary_reply, max_concurrency=1))
    assert main(["instruct-data", "--run-dir", str(run), "--set", ALL_SUMMARY, "--set", "llm.max_attempts=3", "--set", "instruct_data.sets_per_story=2"]) == 0
    assert not (run / "data" / "instruct_failed.jsonl").exists(), "no failure: no instruct_failed.jsonl"
    assert len(one_schema_rows(run / "data" / "instruction_dataset.jsonl")) == 12, "every story has its sets now"


def test_completions_of_beginnings_and_instructions(tmp_path):
    run = tmp_path / "run"
    make_model_dir(run / "pretrain" / "1M", seed=0)
    make_model_dir(run / "sft" / "1M", seed=1)
    assert main(complete_args(run, write_prompts(tmp_path / "prompts.json"))) == 0
    path = run / "eval" / "completions.jsonl"
    rows = one_schema_rows(path)
    assert_both(rows, "words", path)


def test_training_metrics_with_and_without_validation(tmp_path):
    run = make_run_dir(tmp_path / "run")
    assert main(["pretrain", "--run-dir", str(run), "--config", str(write_config(tmp_path / "c.yaml", max_steps=4, eval_interval=2, eval_samples=0))]) == 0
    path = run / "pretrain" / "tiny" / "metrics.jsonl"
    rows = one_schema_rows(path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4], rows
    assert_both(rows, "val_loss", path)


def test_sft_metrics_without_validation_data_are_null_not_nan(tmp_path):
    pairs = [{"instruction": f"Words: cat, ball\nSummary: A cat plays {i}.", "story": f"The cat played with the ball {i} times.", "id": i} for i in range(6)]
    run = make_sft_run(tmp_path / "run", pairs)
    assert main(["sft", "--run-dir", str(run), "--config", str(write_sft_config(tmp_path / "s.yaml", max_steps=2, eval_samples=0))]) == 0
    rows = one_schema_rows(run / "sft" / "tiny" / "metrics.jsonl")
    assert [r["val_loss"] for r in rows] == [None, None], "no validation pairs (val_fraction 0): null, not NaN"

