"""Sampler (top-p, left padding, eos) and the complete stage (prompts, resume) on tiny random models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from tinystories.eval import sampler  # noqa: E402
from tinystories.cli import main  # noqa: E402
from tinystories.errors import UserError  # noqa: E402
from tinystories.io.rundir import read_jsonl  # noqa: E402

STORY_TEXT = [
    "Once upon a time there was a little dog named Max. Max liked to run in the park with his ball.",
    "Lily had a red kite. She went to the park with her dad, and the kite flew up high in the sky.",
    "Tom wanted to share his toy with Sam. They played together and they were very happy.",
    "The cat saw a bird in the tree. The bird sang a song and the cat listened.",
] * 5


def make_tokenizer(directory: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, min_frequency=1, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(STORY_TEXT, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    fast.save_pretrained(str(directory))
    return fast


def tiny_config(vocab_size: int, eos: int, **kw):
    from transformers import GPTNeoConfig

    args = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        num_layers=4,
        num_heads=4,
        attention_types=[[["global", "local"], 2]],
        window_size=8,
        max_position_embeddings=256,
        intermediate_size=64,
        bos_token_id=eos,
        eos_token_id=eos,
        initializer_range=0.3,  # large weights: random models then produce varied tokens, not one repeated
    )
    args.update(kw)
    return GPTNeoConfig(**args)


def make_model_dir(directory: Path, seed: int = 0):
    """A save_pretrained GPT-Neo + tokenizer directory like pretrain/<size>/."""
    from transformers import GPTNeoForCausalLM

    directory.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer(directory)
    torch.manual_seed(seed)
    model = GPTNeoForCausalLM(tiny_config(len(tok), tok.eos_token_id)).eval()
    model.save_pretrained(str(directory))
    return model, tok


def tiny_model(seed: int = 0, **kw):
    from transformers import GPTNeoForCausalLM

    torch.manual_seed(seed)
    return GPTNeoForCausalLM(tiny_config(97, 0, **kw)).eval()


def reference_greedy(model, prompt: list[int], n: int, eos: int | None) -> list[int]:
    """Greedy decoding by recomputing the full forward pass each step: no cache, no padding."""
    ids, out = list(prompt), []
    with torch.no_grad():
        for _ in range(n):
            t = int(model(torch.tensor([ids])).logits[0, -1].argmax())
            if eos is not None and t == eos:
                break
            out.append(t)
            ids.append(t)
    return out


# -- sampler -----------------------------------------------------------------------------------


def test_top_p_mask_on_hand_made_distribution():
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3], [0.25, 0.25, 0.25, 0.25], [0.97, 0.01, 0.01, 0.01]])
    # row 2: three tokens reach 0.75, and the fourth is tied with the third, so ties keep it too
    assert sampler.top_p_mask(probs, 0.75).tolist() == [[False, True, False, True], [True, True, True, True], [True, False, False, False]]
    # the token that crosses the threshold is kept: 0.5 + 0.3 < 0.9, so 0.15 joins
    assert sampler.top_p_mask(probs[:1], 0.9).tolist() == [[False, True, True, True]]
    # the most likely token is always kept, even for a tiny top_p
    assert sampler.top_p_mask(probs[:1], 0.01).tolist() == [[False, True, False, False]]


def test_sample_next_never_draws_outside_nucleus_and_follows_probabilities():
    logits = torch.log(torch.tensor([0.05, 0.5, 0.15, 0.3])).repeat(4000, 1)
    u = torch.from_numpy(sampler.row_uniforms(__import__("numpy").arange(4000), 0))
    toks = sampler.sample_next(logits, u, temperature=1.0, top_p=0.75)
    counts = torch.bincount(toks, minlength=4).tolist()
    assert counts[0] == 0 and counts[2] == 0
    # renormalised nucleus: 0.5/0.8 = 0.625 for token 1
    assert abs(counts[1] / 4000 - 0.625) < 0.03
    # u at the very top of [0, 1) must not fall off onto a dropped token
    top = sampler.sample_next(logits[:1], torch.tensor([0.9999999999]), 1.0, 0.75)
    assert int(top) == 3


def test_row_uniforms_are_a_function_of_seed_and_step():
    import numpy as np

    a = sampler.row_uniforms(np.array([5, 6, 7]), 3)
    b = sampler.row_uniforms(np.array([7, 5]), 3)
    assert a[2] == b[0] and a[0] == b[1]
    assert sampler.row_uniforms(np.array([5]), 4)[0] != a[0]
    assert ((a >= 0) & (a < 1)).all()


def test_batched_greedy_equals_unbatched_token_for_token():
    model = tiny_model()
    # Lengths differ (left padding up to 11 tokens) and prompt + output cross the local window of 8.
    prompts = [[5, 6, 7, 8, 9, 10, 11], [3], [20, 21, 22], [40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51]]
    batched = sampler.generate(model, prompts, 24, [1, 2, 3, 4], eos_token_id=None, temperature=0, batch_size=4)
    for p, g in zip(prompts, batched):
        assert g.tokens == reference_greedy(model, p, 24, None)
        alone = sampler.generate(model, [p], 24, [9], eos_token_id=None, temperature=0, batch_size=1)[0]
        assert alone.tokens == g.tokens
    assert len({tuple(g.tokens) for g in batched}) > 1  # the check is not vacuous


def test_stops_at_eos_per_sequence():
    model = tiny_model()
    prompts = [[5, 6, 7], [30, 31], [60]]
    free = [reference_greedy(model, p, 20, None) for p in prompts]
    eos = free[0][5]  # a token the first row emits at step 5
    gens = sampler.generate(model, prompts, 20, [0, 1, 2], eos_token_id=eos, temperature=0, batch_size=3)
    for f, g in zip(free, gens):
        expected = f[: f.index(eos)] if eos in f else f
        assert g.tokens == expected
        assert g.stopped_at_eos == (eos in f)
    assert gens[0].stopped_at_eos and len(gens[0].tokens) == free[0].index(eos) <= 5


def test_sampling_is_reproducible_and_independent_of_batch():
    model = tiny_model()
    prompts = [[5, 6, 7], [30, 31], [60], [70, 71, 72, 73]]
    together = sampler.generate(model, prompts, 16, [11, 12, 13, 14], eos_token_id=None, temperature=1.0, top_p=0.95, batch_size=4)
    alone = [sampler.generate(model, [p], 16, [s], eos_token_id=None, temperature=1.0, top_p=0.95)[0] for p, s in zip(prompts, [11, 12, 13, 14])]
    assert [g.tokens for g in together] == [g.tokens for g in alone]
    other = sampler.generate(model, prompts[:1], 16, [99], eos_token_id=None, temperature=1.0, top_p=0.95)[0]
    assert other.tokens != together[0].tokens


def test_long_prompt_is_cut_to_fit_the_context():
    model = tiny_model(max_position_embeddings=32)
    g = sampler.generate(model, [list(range(1, 41))], 8, [0], eos_token_id=None, temperature=0)[0]
    assert g.truncated_prompt and g.prompt_tokens == 24 and len(g.tokens) == 8


# -- prompts -----------------------------------------------------------------------------------


def test_builtin_prompts_are_valid_and_diverse():
    from tinystories.eval.prompt_set import load_prompts

    p = load_prompts()
    assert len(p["beginnings"]) >= 45 and len(p["instructions"]) >= 18
    ids = [b["id"] for b in p["beginnings"]] + [x["id"] for x in p["instructions"]]
    assert len(ids) == len(set(ids))
    # beginnings stop mid-sentence: no final period
    assert sum(not b["text"].rstrip().endswith(".") for b in p["beginnings"]) == len(p["beginnings"])
    assert all(x["instruction"].split(":")[0] in ("Words", "Features", "Summary", "Sentence") for x in p["instructions"])


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ('{"beginnings": [{"id": "a"}]}', "text must be non-empty"),
        ('{"beginnings": [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}]}', "duplicate id"),
        ('{"beginnings": [], "instructions": []}', "no prompts"),
        ('{"beginings": []}', "unknown key"),
        ('{"instructions": [{"id": "i", "instruction": "Words: a", "words": "a"}]}', "words must be a list"),
    ],
)
def test_bad_prompt_files_give_one_line_errors(tmp_path, content, message):
    from tinystories.eval.prompt_set import load_prompts

    f = tmp_path / "p.json"
    f.write_text(content)
    with pytest.raises(UserError) as err:
        load_prompts(f)
    assert message in str(err.value) and "\n" not in str(err.value) and str(f) in str(err.value)


# -- the stage ---------------------------------------------------------------------------------


def write_prompts(path: Path, n_begin: int = 3, n_instr: int = 2) -> Path:
    data = {
        "version": "test-1",
        "beginnings": [{"id": f"b{i}", "text": f"Max the dog ran to the park number {i}, but"} for i in range(n_begin)],
        "instructions": [{"id": f"i{i}", "instruction": f"Words: dog, ball, run\nFeatures: Dialogue {i}", "words": ["dog", "ball", "run"]} for i in range(n_instr)],
    }
    path.write_text(json.dumps(data))
    return path


def complete_args(run: Path, prompts: Path, *extra: str) -> list[str]:
    return [
        "complete",
        "--run-dir",
        str(run),
        "--set",
        "complete.models=[pretrain/1M, sft/1M]",
        "--set",
        f"complete.prompts_path={prompts}",
        "--set",
        "complete.samples=3",
        "--set",
        "complete.max_new_tokens=12",
        "--set",
        "complete.batch_size=4",
        "--set",
        "complete.device=cpu",
        *extra,
    ]


@pytest.fixture
def eval_run(tmp_path):
    run = tmp_path / "run"
    make_model_dir(run / "pretrain" / "1M", seed=0)
    make_model_dir(run / "sft" / "1M", seed=1)
    return run, write_prompts(tmp_path / "prompts.json")


def test_complete_writes_every_model_prompt_sample(eval_run):
    run, prompts = eval_run
    assert main(complete_args(run, prompts)) == 0
    recs = list(read_jsonl(run / "eval" / "completions.jsonl"))
    base = [r for r in recs if r["model"] == "pretrain/1M"]
    inst = [r for r in recs if r["model"] == "sft/1M"]
    # base models too get the instructions (complete.base_instructions defaults to on)
    assert len(base) == (3 + 2) * 3 and {r["task"] for r in base} == {"continue", "instruct"} and {r["kind"] for r in base} == {"base"}
    assert len(inst) == (3 + 2) * 3 and {r["task"] for r in inst} == {"continue", "instruct"}
    assert all(r["words"] == ["dog", "ball", "run"] for r in recs if r["task"] == "instruct")
    keys = [(r["model"], r["prompt_id"], r["sample_id"]) for r in recs]
    assert len(keys) == len(set(keys))
    for r in recs:
        assert 0 <= r["completion_tokens"] <= 12 and r["prompt_tokens"] > 0 and isinstance(r["text"], str)
        assert r["stopped_at_eos"] or r["completion_tokens"] == 12
    # samples of one prompt differ (own seeds); seeds are recorded
    assert len({r["seed"] for r in base}) == len(base)
    models = json.loads((run / "eval" / "models.json").read_text())["models"]
    assert models["pretrain/1M"]["params"] > 0 and models["sft/1M"]["kind"] == "instruct"


def test_complete_resumes_after_a_kill_without_duplicates(eval_run, monkeypatch):
    run, prompts = eval_run
    from tinystories.io.rundir import JsonlWriter

    original = JsonlWriter.write
    calls = {"n": 0}

    def dying_write(self, record):
        if calls["n"] == 7:
            raise KeyboardInterrupt("killed")
        calls["n"] += 1
        original(self, record)

    monkeypatch.setattr(JsonlWriter, "write", dying_write)
    assert main(complete_args(run, prompts)) == 130  # the CLI's exit code for an interrupt
    assert len(list(read_jsonl(run / "eval" / "completions.jsonl"))) == 7
    monkeypatch.setattr(JsonlWriter, "write", original)
    first_seven = list(read_jsonl(run / "eval" / "completions.jsonl"))

    assert main(complete_args(run, prompts)) == 0
    recs = list(read_jsonl(run / "eval" / "completions.jsonl"))
    keys = [(r["model"], r["prompt_id"], r["sample_id"]) for r in recs]
    assert len(recs) == 15 + 15 and len(set(keys)) == len(keys)
    assert recs[:7] == first_seven

    # a clean run from scratch gives the very same completions (seeds per sample, not per batch)
    import shutil

    fresh = run.parent / "fresh"
    (fresh / "pretrain").mkdir(parents=True)
    shutil.copytree(run / "pretrain" / "1M", fresh / "pretrain" / "1M")
    shutil.copytree(run / "sft" / "1M", fresh / "sft" / "1M")
    assert main(complete_args(fresh, prompts)) == 0
    by_key = {(r["model"], r["prompt_id"], r["sample_id"]): r["text"] for r in read_jsonl(fresh / "eval" / "completions.jsonl")}
    assert all(by_key[(r["model"], r["prompt_id"], r["sample_id"])] == r["text"] for r in recs)


def test_changed_settings_drop_stale_rows(eval_run):
    run, prompts = eval_run
    assert main(complete_args(run, prompts)) == 0
    assert main(complete_args(run, prompts, "--set", "complete.max_new_tokens=5")) == 0
    recs = list(read_jsonl(run / "eval" / "completions.jsonl"))
    assert len(recs) == 30 and all(r["completion_tokens"] <= 5 for r in recs)


def test_base_models_get_the_instructions_only_when_asked(eval_run):
    from transformers import AutoTokenizer

    from tinystories.text.prompts import instruction_prompt as instruct_prompt

    run, prompts = eval_run
    assert main(complete_args(run, prompts)) == 0
    recs = list(read_jsonl(run / "eval" / "completions.jsonl"))
    base_instr = [r for r in recs if r["model"] == "pretrain/1M" and r["task"] == "instruct"]
    sft_instr = [r for r in recs if r["model"] == "sft/1M" and r["task"] == "instruct"]
    assert sorted((r["prompt_id"], r["sample_id"]) for r in base_instr) == sorted((r["prompt_id"], r["sample_id"]) for r in sft_instr)
    assert len(base_instr) == 2 * 3 and all(r["kind"] == "base" for r in base_instr)
    # the same SFT prompt text for both; the base model reads it after an eos, as every training document
    tok = AutoTokenizer.from_pretrained(str(run / "pretrain" / "1M"))
    by_id = {x["prompt_id"]: x for x in sft_instr}
    for r in base_instr:
        n = len(tok(instruct_prompt(r["prompt"]), add_special_tokens=False).input_ids)
        assert r["prompt_tokens"] == n + 1 and by_id[r["prompt_id"]]["prompt_tokens"] == n
        assert r["prompt"] == by_id[r["prompt_id"]]["prompt"] and r["words"] == ["dog", "ball", "run"]

    assert main(complete_args(run, prompts, "--set", "complete.base_instructions=false")) == 0
    recs = list(read_jsonl(run / "eval" / "completions.jsonl"))
    assert {r["task"] for r in recs if r["model"] == "pretrain/1M"} == {"continue"}
    assert len([r for r in recs if r["model"] == "pretrain/1M"]) == 3 * 3
    assert len([r for r in recs if r["model"] == "sft/1M" and r["task"] == "instruct"]) == 2 * 3


def test_missing_model_is_a_one_line_error(tmp_path, capsys):
    prompts = write_prompts(tmp_path / "p.json")
    assert main(complete_args(tmp_path / "run", prompts)) == 2
    err = capsys.readouterr().err.strip()
    assert "missing input" in err and "pretrain/1M" in err and "\n" not in err


def test_complete_loads_checkpoints_written_by_the_training_code(tmp_path):
    """The real producer of pretrain/<size>/: tokenizer.py + model.save_hf, not our fixture."""
    model_mod = pytest.importorskip("tinystories.train.model")
    tok_mod = pytest.importorskip("tinystories.train.tokenizer")

    run = tmp_path / "run"
    tok = tok_mod.train_tokenizer(iter(STORY_TEXT), vocab_size=300, min_frequency=1)
    tok_mod.save_tokenizer(tok, run / "tokenizer")
    eos = tok.token_to_id("<|endoftext|>")
    torch.manual_seed(0)
    model = model_mod.FastGPTNeo(model_mod.Shape(hidden_size=32, num_layers=2, num_heads=4, max_position=128), tok.get_vocab_size())
    model_mod.save_hf(model, run / "pretrain" / "1M", tokenizer_dir=run / "tokenizer", eos_token_id=eos)
    prompts = write_prompts(tmp_path / "p.json", n_begin=2, n_instr=0)
    args = complete_args(run, prompts, "--set", "complete.models=[pretrain/1M]")
    assert main(args) == 0
    recs = list(read_jsonl(run / "eval" / "completions.jsonl"))
    assert len(recs) == 6 and all(r["prompt_tokens"] > 1 for r in recs)
