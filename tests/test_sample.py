"""`tinystories sample`: side-by-side output, seeding, instruction framing, --file, streaming, bad input."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")

from tinystories.cli import main  # noqa: E402
from tinystories.eval import sampler  # noqa: E402
from tinystories.text.prompts import instruction_prompt  # noqa: E402
from tinystories.tryout.sample import INSTRUCTION_FORMAT, PLAIN, Prompt, Sampling, load_models, sample_one  # noqa: E402
from tryout_fixtures import CONTEXT, MODELS, make_tryout_run  # noqa: E402


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_tryout_run(tmp_path_factory.mktemp("tryout"))


def sample_jsonl(capsys, run_dir, *args) -> list[dict]:
    capsys.readouterr()
    assert main(["sample", "--run-dir", str(run_dir), "--jsonl", "--max-tokens", "24", "--device", "cpu", *args]) == 0, "sample failed"
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_models_are_printed_side_by_side(run_dir, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    assert main(["sample", "--run-dir", str(run_dir), "--max-tokens", "16", "--device", "cpu", "Once upon a time"]) == 0, "sample failed"
    out = capsys.readouterr().out
    header = [line for line in out.splitlines() if "pretrain/tiny" in line]
    assert header, f"no column for pretrain/tiny in:\n{out}"
    assert "sft/tiny" in header[0], f"the two models are not on one line (side by side):\n{out}"
    assert "Beginning: Once upon a time" in out, "the prompt heading is missing"
    assert out.count("16 tokens, hit --max-tokens") + out.count("ended the story") >= 2, f"a column has no footer:\n{out}"


def test_same_seed_same_stories_other_seed_other_stories(run_dir, capsys):
    first = sample_jsonl(capsys, run_dir, "--seed", "3", "Once upon a time")
    again = sample_jsonl(capsys, run_dir, "--seed", "3", "Once upon a time")
    other = sample_jsonl(capsys, run_dir, "--seed", "4", "Once upon a time")
    assert [r["model"] for r in first] == list(MODELS), "every model of the run is sampled by default, base first"
    assert [r["text"] for r in first] == [r["text"] for r in again], "the same seed gave other stories"
    assert [r["text"] for r in first] != [r["text"] for r in other], "another seed gave the same stories"
    assert first[0]["seed"] == first[1]["seed"], "the models do not share the seed of the prompt"


def test_model_option_picks_models_in_the_order_given(run_dir, capsys):
    rows = sample_jsonl(capsys, run_dir, "--model", "sft/tiny", "--model", "pretrain/tiny", "A dog")
    assert [r["model"] for r in rows] == ["sft/tiny", "pretrain/tiny"], "--model order is not kept"


def test_instruction_format_goes_to_sft_models_only(run_dir, capsys, monkeypatch):
    fed = []
    real = sampler.generate_batch

    def recording(model, prompts, *args, **kwargs):
        fed.append([list(p) for p in prompts])
        return real(model, prompts, *args, **kwargs)

    monkeypatch.setattr(sampler, "generate_batch", recording)
    rows = sample_jsonl(capsys, run_dir, "--instruct", "Words: dog, ball, happy")
    framing = {r["model"]: r["framing"] for r in rows}
    assert framing == {"pretrain/tiny": PLAIN, "sft/tiny": INSTRUCTION_FORMAT}, f"wrong framing: {framing}"
    assert all(r["task"] == "instruct" and r["prompt"] == "Words: dog, ball, happy" for r in rows), "records do not carry the instruction"
    models = {m.name: m for m in load_models(run_dir, [], "cpu")}
    tok = models["sft/tiny"].tokenizer
    eos = models["sft/tiny"].eos
    assert fed[0] == [[eos] + tok("Words: dog, ball, happy", add_special_tokens=False).input_ids], "the base model did not get eos + the bare instruction"
    assert fed[1] == [tok(instruction_prompt("Words: dog, ball, happy"), add_special_tokens=False).input_ids], "the sft model did not get the SFT format as sft.py tokenizes it"


def test_beginnings_are_plain_for_every_model(run_dir, capsys):
    rows = sample_jsonl(capsys, run_dir, "Once upon a time")
    assert {r["framing"] for r in rows} == {PLAIN}, "a beginning must reach every model as plain text after eos"


def test_file_mode_samples_every_line_like_a_single_prompt(run_dir, capsys, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# my prompts\nOnce upon a time\n\ninstruct: Words: cat, tree\nThe sun was hot.\n", encoding="utf-8")
    rows = sample_jsonl(capsys, run_dir, "--seed", "5", "--file", str(prompts))
    assert [(r["task"], r["prompt"]) for r in rows[::2]] == [("continue", "Once upon a time"), ("instruct", "Words: cat, tree"), ("continue", "The sun was hot.")], "prompts out of order or misread"
    assert [r["model"] for r in rows] == list(MODELS) * 3, "not every model for every prompt"
    alone = sample_jsonl(capsys, run_dir, "--seed", "5", "The sun was hot.")
    assert [r["text"] for r in rows[4:]] == [r["text"] for r in alone], "a prompt's stories depend on its place in the file"


def test_streamed_pieces_add_up_to_the_completion(run_dir):
    [model] = load_models(run_dir, ["pretrain/tiny"], "cpu")
    pieces = []
    done = sample_one(model, Prompt("Once upon a time"), Sampling(max_new_tokens=30, seed=2), on_text=pieces.append)
    assert len(pieces) > 1, "the text did not arrive piece by piece"
    assert "".join(pieces) == done.text, "the streamed text differs from the final completion"


def test_a_terminal_sees_the_columns_fill_in(run_dir):
    from io import StringIO

    from rich.console import Console

    from tinystories.tryout.terminal import show_side_by_side

    screen = StringIO()
    console = Console(file=screen, force_terminal=True, width=100)
    models = load_models(run_dir, [], "cpu")
    done = show_side_by_side(console, models, Prompt("Once upon a time"), Sampling(max_new_tokens=12, seed=4))
    drawn = screen.getvalue()
    assert "sampling…" in drawn, "no frame was drawn before the models finished: nothing streamed"
    assert [c.model for c in done] == list(MODELS), "not every model was sampled"
    last_words = [c.text.split()[-1] for c in done if c.text.split()]
    assert all(word in drawn for word in last_words), "the final texts are not on the screen"


def test_sampler_reports_each_token_as_it_is_drawn(run_dir):
    [model] = load_models(run_dir, ["pretrain/tiny"], "cpu")
    seen: dict[int, list[int]] = {7: [], 9: []}
    gens = sampler.generate_batch(model.model, [[model.eos, 5, 6], [model.eos]], 12, [1, 2], eos_token_id=model.eos, indices=[7, 9], on_token=lambda i, t: seen[i].append(t))
    assert seen == {g.index: g.tokens for g in gens}, "on_token did not see exactly the kept tokens of each row"


def test_greedy_ignores_the_seed(run_dir, capsys):
    one = sample_jsonl(capsys, run_dir, "--temperature", "0", "--seed", "1", "A dog")
    two = sample_jsonl(capsys, run_dir, "--temperature", "0", "--seed", "2", "A dog")
    assert [r["text"] for r in one] == [r["text"] for r in two], "temperature 0 must be greedy"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "pretrain/huge", "A dog"], "--model pretrain/huge: "),
        (["--model", "baseline/x", "A dog"], "not pretrain/<size> or sft/<size>"),
        (["--instruct", "Words: dog", "A dog"], "give exactly one of"),
        ([], "got nothing"),
        (["--instruct", "  "], "--instruct: empty instruction"),
        (["--top-p", "0", "A dog"], "--top-p 0.0"),
        (["--max-tokens", "500", "A dog"], f"has a context of {CONTEXT} tokens"),
        (["--file", "missing.txt"], "--file missing.txt: no such file"),
    ],
)
def test_bad_input_names_the_option_and_the_fix(run_dir, capsys, args, message):
    assert main(["sample", "--run-dir", str(run_dir), "--device", "cpu", *args]) == 2, "bad input must exit 2"
    err = capsys.readouterr().err
    assert message in err, f"expected {message!r} in: {err}"
    assert "Traceback" not in err, "bad input must not print a traceback"


def test_a_run_without_models_says_how_to_train_one(tmp_path, capsys):
    assert main(["sample", "--run-dir", str(tmp_path), "A dog"]) == 2, "an empty run must exit 2"
    assert "tinystories pretrain" in capsys.readouterr().err, "the error does not say how to get a model"
