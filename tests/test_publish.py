"""Publishing: model cards, the chat template of sft checkpoints, the dataset card, and
`tinystories export` (a clean directory, and the Hub upload through a recorder: never the network)."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import yaml

from pretrain_fixtures import SFT_SHAPE, make_sft_run

from tinystories.text.prompts import instruction_prompt, sft_example

PAIRS = [
    {"id": i, "instruction": f"Words: {w}, ball\nSummary: A {w} plays with a ball.", "story": f"Once upon a time a {w} found a red ball. The {w} played all day."}
    for i, w in enumerate(["dog", "cat", "bird", "fish", "frog", "duck", "cow", "pig"])
]
USER_MESSAGE = [{"role": "user", "content": "Words: dog, ball"}]


def _config(path: Path) -> Path:
    train = {"dtype": "fp32", "compile": False, "log_interval": 1}
    conf = {
        "seed": 7,
        "pretrain": {"sizes": ["tiny"], "shapes": {"tiny": dict(SFT_SHAPE)},
                     "train": {**train, "context": 32, "batch_size": 4, "max_steps": 4, "warmup_steps": 1, "eval_interval": 2, "eval_batches": 1, "checkpoint_interval": 2}},
        "sft": {"sizes": ["tiny"], "val_fraction": 0.25, "samples": 0,
                "train": {**train, "max_steps": 2, "batch_size": 2, "context": 128, "eval_interval": 0, "checkpoint_interval": 0}},
    }
    path.write_text(yaml.safe_dump(conf))
    return path


@pytest.fixture(scope="module")
def _trained_template(tmp_path_factory):
    """tokenizer + bins + instruction pairs -> pretrain (4 steps) -> sft (2 steps), built once."""
    from tinystories.cli import main

    tmp = tmp_path_factory.mktemp("publish")
    run = make_sft_run(tmp / "run", PAIRS)
    shutil.rmtree(run / "pretrain")  # the fixture's random stand-in: pretrain writes the real one
    cfg = _config(tmp / "c.yaml")
    assert main(["pretrain", "--run-dir", str(run), "--config", str(cfg)]) == 0
    assert main(["sft", "--run-dir", str(run), "--config", str(cfg)]) == 0
    return run


@pytest.fixture
def run(_trained_template, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(_trained_template, copy)
    return copy


def front_matter(card: Path) -> dict:
    text = card.read_text(encoding="utf-8")
    assert text.startswith("---\n"), f"{card}: no YAML front matter"
    return yaml.safe_load(text.split("---\n", 2)[1])


def parameter_count(ckpt: Path) -> int:
    from transformers import GPTNeoForCausalLM

    return sum(p.numel() for p in GPTNeoForCausalLM.from_pretrained(ckpt).parameters())


# --- model cards ------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["pretrain/tiny", "sft/tiny"])
def test_every_checkpoint_has_a_card_with_hub_metadata_and_the_real_parameter_count(_trained_template, model):
    from huggingface_hub import ModelCard

    ckpt = _trained_template / model
    meta = front_matter(ckpt / "README.md")
    assert meta["library_name"] == "transformers", meta
    assert meta["pipeline_tag"] == "text-generation", meta
    assert meta["license"] == "mit", meta
    facts = meta["tinystories"]
    assert facts["parameters"] == parameter_count(ckpt), facts
    assert facts["stage"] == model.split("/")[0], facts
    assert facts["preset"] == "tiny", "the checkpoint's name, not the temp dir it was assembled in"
    assert facts["finished"] is True, facts
    metrics = [json.loads(line) for line in (ckpt / "metrics.jsonl").read_text().splitlines()]
    last_val = [r for r in metrics if "val_loss" in r][-1]
    assert facts["val_loss"] == pytest.approx(last_val["val_loss"]), facts
    assert facts["val_bpb"] == pytest.approx(last_val["val_bpb"]), facts
    assert facts["training_tokens"] == metrics[-1]["tokens"], facts
    # The Hub's own parser reads the same metadata, results included.
    card = ModelCard.load(ckpt / "README.md")
    assert card.data.eval_results[0].metric_value == pytest.approx(last_val["val_loss"]), card.data.eval_results
    text = card.text
    assert f"{facts['parameters']:,}" in text, "the card body states the parameter count"
    assert "not a parameter count" in text, "the card explains the preset name"


def test_pretrain_card_names_its_data_and_sft_card_its_prompt_format(_trained_template):
    meta = json.loads((_trained_template / "data" / "meta.json").read_text())
    pretrain = front_matter(_trained_template / "pretrain" / "tiny" / "README.md")["tinystories"]
    assert pretrain["data"]["train_tokens"] == meta["train"]["tokens"], pretrain["data"]
    sft = front_matter(_trained_template / "sft" / "tiny" / "README.md")["tinystories"]
    assert sft["prompt_format"] == sft_example("{instruction}", "{story}"), sft
    assert sft["data"] == {"train_pairs": 6, "val_pairs": 2}, sft["data"]
    assert sft_example("{instruction}", "{story}") in (_trained_template / "sft" / "tiny" / "README.md").read_text()


def test_an_unfinished_checkpoint_says_so(tmp_path):
    from tinystories.publish.cards import checkpoint_facts, model_card
    from tinystories.train.model import FastGPTNeo, Shape, save_hf

    ckpt = tmp_path / "pretrain" / "tiny"
    save_hf(FastGPTNeo(Shape(**SFT_SHAPE), 300), ckpt, extra={"stage": "pretrain", "size": "tiny", "step": 2, "settings": {"max_steps": 6, "context": 32}})
    (ckpt / "metrics.jsonl").write_text(json.dumps({"step": 2, "train_loss": 5.0, "tokens": 256, "val_loss": float("nan"), "val_bpb": float("nan")}) + "\n")
    facts = checkpoint_facts(ckpt)
    assert facts["finished"] is False, facts
    assert facts["val_loss"] is None, "a NaN validation loss is no result"
    card = model_card(facts)
    assert "step 2 of 6" in card, card
    assert "model-index" not in front_matter_text(card), "no results without a validation loss"


def front_matter_text(card: str) -> str:
    return card.split("---\n", 2)[1]


# --- the chat template ------------------------------------------------------------------------------


def test_chat_messages_render_the_instruction_format_and_the_pipeline_generates(_trained_template):
    from transformers import AutoTokenizer, pipeline

    ckpt = _trained_template / "sft" / "tiny"
    tok = AutoTokenizer.from_pretrained(ckpt)
    assert tok.apply_chat_template(USER_MESSAGE, tokenize=False, add_generation_prompt=True) == instruction_prompt("Words: dog, ball")
    turn = [*USER_MESSAGE, {"role": "assistant", "content": "A dog."}]
    assert tok.apply_chat_template(turn, tokenize=False) == sft_example("Words: dog, ball", "A dog."), "a whole turn is one training example"
    ids = tok.apply_chat_template(USER_MESSAGE, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert list(ids) == tok(instruction_prompt("Words: dog, ball"), add_special_tokens=False).input_ids, "the ids the model was tuned on"

    generator = pipeline("text-generation", model=str(ckpt), device="cpu")
    out = generator(USER_MESSAGE, max_new_tokens=5, do_sample=False)
    reply = out[0]["generated_text"]
    assert reply[:1] == USER_MESSAGE, reply
    assert reply[-1]["role"] == "assistant", reply
    assert isinstance(reply[-1]["content"], str), reply


def test_pretrained_checkpoints_get_no_chat_template(_trained_template):
    ckpt = _trained_template / "pretrain" / "tiny"
    assert not (ckpt / "chat_template.jinja").exists(), "a base model follows no instruction format"
    assert "chat_template" not in json.loads((ckpt / "tokenizer_config.json").read_text())


def test_a_system_message_is_refused(_trained_template):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(_trained_template / "sft" / "tiny")
    with pytest.raises(Exception, match="user and assistant turns only"):
        tok.apply_chat_template([{"role": "system", "content": "Be nice."}, *USER_MESSAGE], tokenize=False)


# --- export ------------------------------------------------------------------------------------------


def test_export_writes_a_clean_directory_that_loads(run, tmp_path, capsys):
    import torch
    from transformers import AutoTokenizer, GPTNeoForCausalLM

    from tinystories.cli import main
    from tinystories.publish.export import EXPORT_FILES

    out = tmp_path / "exports" / "tiny-instruct"
    assert main(["export", "--run-dir", str(run), "--model", "sft/tiny", "--out", str(out), "--license", "apache-2.0"]) == 0
    assert "sft/tiny" in capsys.readouterr().out
    names = {p.name for p in out.iterdir()}
    assert names <= set(EXPORT_FILES), names
    for gone in ("train_state.pt", "tb", "metrics.jsonl", "tinystories.json", "samples.json"):
        assert gone not in names, f"{gone} was exported"
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja", "README.md"} <= names, names
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "the temp dir is gone"
    assert front_matter(out / "README.md")["license"] == "apache-2.0"

    model = GPTNeoForCausalLM.from_pretrained(out)
    tuned = GPTNeoForCausalLM.from_pretrained(run / "sft" / "tiny")
    for (name, p0), (_, p1) in zip(model.named_parameters(), tuned.named_parameters()):
        assert torch.equal(p0, p1), name
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.apply_chat_template(USER_MESSAGE, tokenize=False, add_generation_prompt=True) == instruction_prompt("Words: dog, ball")

    # Exporting again replaces the previous export whole.
    assert main(["export", "--run-dir", str(run), "--model", "sft/tiny", "--out", str(out)]) == 0
    assert front_matter(out / "README.md")["license"] == "mit"


def test_export_refuses_a_model_that_is_not_done(run, tmp_path, capsys):
    from tinystories.cli import main
    from tinystories.io.rundir import RunDir

    record = RunDir(run).stage_record("sft")
    RunDir(run).update_stage("sft", {**record, "status": "running"})
    out = tmp_path / "out"
    assert main(["export", "--run-dir", str(run), "--model", "sft/tiny", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "running" in err and "tinystories sft --run-dir" in err, err
    assert not out.exists(), "nothing written"


@pytest.mark.parametrize("model, says", [("sft/other", "not sft/other"), ("eval/tiny", "pretrain/<size> or sft/<name>")])
def test_export_names_the_fix_for_a_wrong_model(run, tmp_path, capsys, model, says):
    from tinystories.cli import main

    assert main(["export", "--run-dir", str(run), "--model", model, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert says in err, err


def test_export_never_replaces_a_directory_of_other_files(run, tmp_path, capsys):
    from tinystories.cli import main

    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert main(["export", "--run-dir", str(run), "--model", "pretrain/tiny", "--out", str(out)]) == 2
    assert "notes.txt" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "keep me"


# --- the Hub upload, recorded ----------------------------------------------------------------------


class RecordingHub:
    """Stands in for huggingface_hub.HfApi: records the calls, answers like the Hub."""

    def __init__(self, fail: Exception | None = None):
        self.calls: list[tuple[str, dict]] = []
        self.fail = fail

    def create_repo(self, **kwargs):
        self.calls.append(("create_repo", kwargs))
        return f"https://huggingface.co/{kwargs['repo_id']}"

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", {**kwargs, "files": sorted(p.name for p in Path(kwargs["folder_path"]).iterdir())}))
        if self.fail is not None:
            raise self.fail


def test_push_to_hub_uploads_the_export_to_the_repo(run, tmp_path, monkeypatch, capsys):
    from tinystories.cli import main
    from tinystories.publish import export

    hub = RecordingHub()
    monkeypatch.setattr(export, "hub_api", lambda: hub)
    out = tmp_path / "tiny-instruct"
    assert main(["export", "--run-dir", str(run), "--model", "sft/tiny", "--out", str(out), "--push-to-hub", "me/tiny-instruct", "--private"]) == 0
    assert "https://huggingface.co/me/tiny-instruct" in capsys.readouterr().out
    (_, created), (_, uploaded) = hub.calls
    assert created == {"repo_id": "me/tiny-instruct", "repo_type": "model", "private": True, "exist_ok": True}, created
    assert uploaded["repo_id"] == "me/tiny-instruct", uploaded
    assert uploaded["folder_path"] == str(out), uploaded
    assert "train_state.pt" not in uploaded["files"], uploaded["files"]
    assert 'model="me/tiny-instruct"' in (out / "README.md").read_text(), "the card's example loads the repo"


def test_push_to_hub_failures_are_one_line_without_the_token(run, tmp_path, monkeypatch, capsys):
    from tinystories.cli import main
    from tinystories.publish import export

    monkeypatch.setenv("HF_TOKEN", "hf_secret_token_value")
    hub = RecordingHub(fail=RuntimeError("401 Client Error: Unauthorized for url: https://huggingface.co/api/repos/create"))
    monkeypatch.setattr(export, "hub_api", lambda: hub)
    assert main(["export", "--run-dir", str(run), "--model", "sft/tiny", "--out", str(tmp_path / "o"), "--push-to-hub", "me/tiny"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "401" in err and "HF_TOKEN" in err, err
    assert "hf_secret_token_value" not in err, "the token is never shown"


def test_a_malformed_repo_id_is_refused_before_anything_is_written(run, tmp_path, monkeypatch, capsys):
    from tinystories.cli import main
    from tinystories.publish import export

    hub = RecordingHub()
    monkeypatch.setattr(export, "hub_api", lambda: hub)
    out = tmp_path / "o"
    assert main(["export", "--run-dir", str(run), "--model", "sft/tiny", "--out", str(out), "--push-to-hub", "no-owner"]) == 2
    assert "OWNER/NAME" in capsys.readouterr().err
    assert not out.exists() and hub.calls == [], "neither the export nor the Hub was touched"


# --- the dataset card ----------------------------------------------------------------------------------


def test_dataset_card_has_hub_metadata_and_the_story_counts(tmp_path):
    from tinystories.publish.dataset_card import IMPORTED, write_dataset_card

    stats = {"kept": 1234, "rejected": 5, "attempted": 1239, "rejected_by_reason": {"duplicate": 5},
             "words_per_story": {"mean": 150.0, "median": 148, "p95": 210}, "distinct_1": 0.1, "distinct_2": 0.4, "distinct_3": 0.7,
             "exact_duplicate_rate": 0.004, "near_duplicate_rate": 0.0}
    card = tmp_path / "README.md"
    write_dataset_card(card, stats, Counter({"gpt-4o-mini": 1000, IMPORTED: 234}))
    meta = front_matter(card)
    assert meta["task_categories"] == ["text-generation"], meta
    assert meta["size_categories"] == ["1K<n<10K"], meta
    assert meta["configs"][0]["data_files"][0]["path"] == "stories.jsonl", meta
    text = card.read_text()
    assert "1,000 written by `gpt-4o-mini`" in text and "234 imported" in text, text


def test_generate_writes_the_dataset_card(tmp_path):
    """The dataset writer's finish step: data/README.md beside data/stats.json."""
    from tinystories.data.checks import FilterOptions
    from tinystories.data.dataset_writer import DatasetBuilder
    from tinystories.io.rundir import RunDir

    rundir = RunDir(tmp_path / "run")
    builder = DatasetBuilder(rundir, FilterOptions(dedup="off", min_words=5)).open()
    story = "Once upon a time there was a little dog. The dog liked to run in the park with his ball. One day he found a new friend and they played all day."
    builder.add([{"id": "g0000001", "text": story, "model": "tiny-llm", "finish_reason": "stop"}], format_checks=False)
    stats = builder.finish(None)
    meta = front_matter(rundir.path("data/README.md"))
    assert meta["size_categories"] == ["n<1K"], meta
    assert f"stories: {stats['kept']} ({stats['kept']} written by `tiny-llm`)" in rundir.path("data/README.md").read_text()
