import json

import pytest

from tinystories.text.prompts import instruction_prompt
from tinystories.train import sft_data
from tinystories.train.bpe import save_tokenizer, wrap_fast
from tinystories.train.tokenizer import train_tokenizer

STORIES = [
    'Once upon a time, Tom found a red ball in the park. He was very happy. "Look!" said Tom.',
    "Lily liked to jump. One day she saw a big dog. The dog wanted to play, so they played all day.",
    "Ben had a small boat. He put it in the water. The boat went far away and Ben was sad.",
]


@pytest.fixture(scope="module")
def tokenizer():
    text = STORIES * 10 + ["### Instruction:\nWords: jump, ball, happy\n\n### Response:\n"] * 5
    return wrap_fast(train_tokenizer(iter(text), vocab_size=330, min_frequency=1))


def test_masking_matches_hand_computed_ids(tokenizer):
    instruction = "Words: jump, ball, happy\nFeatures: Dialogue"
    story = STORIES[0]
    eos = tokenizer.eos_token_id
    prompt_ids = tokenizer.encode("### Instruction:\n" + instruction + "\n\n### Response:\n", add_special_tokens=False)
    story_ids = tokenizer.encode(story, add_special_tokens=False)
    examples, counts = sft_data.encode_pairs(tokenizer, [{"instruction": instruction, "story": story, "id": 1}], context=512)
    inp, lab = sft_data.collate(examples + [sft_data.build_example([7, 8], [9], eos, 512)], pad_id=eos)  # a shorter second row pads the first
    ids, labels = inp[0].tolist(), lab[0].tolist()
    assert ids == prompt_ids + story_ids + [eos]
    assert labels == [-100] * len(prompt_ids) + story_ids + [eos]
    assert lab[1].tolist() == [-100, -100, 9, eos] + [-100] * (len(ids) - 4)
    assert inp[1].tolist() == [7, 8, 9, eos] + [eos] * (len(ids) - 4)
    # The marker is the last thing masked: the first supervised label is the story's first token.
    first = labels.index(story_ids[0])
    assert tokenizer.decode(ids[:first]).endswith("### Response:\n") and first == len(prompt_ids)
    assert tokenizer.decode(ids) == instruction_prompt(instruction) + story + "<|endoftext|>"
    assert counts["supervised_tokens"] == len(story_ids) + 1 and counts["skipped_no_supervised_token"] == 0


def test_context_cut_and_skip(tokenizer):
    eos = tokenizer.eos_token_id
    p, s = [5, 6, 7], [8, 9, 10, 11]
    ex = sft_data.build_example(p, s, eos, 5)
    assert ex[0].tolist() == [5, 6, 7, 8, 9] and sft_data.labels_of(ex) == [-100, -100, -100, 8, 9]
    ex = sft_data.build_example(p, s, eos, 8)
    assert ex[0].tolist() == [5, 6, 7, 8, 9, 10, 11, eos] and sft_data.labels_of(ex) == [-100, -100, -100, 8, 9, 10, 11, eos]
    assert sft_data.build_example(p, s, eos, 3) is None  # the prompt fills the context: nothing to learn
    long_instruction = "Summary: " + " ".join(["Tom found a red ball."] * 40)
    pairs = [{"instruction": long_instruction, "story": STORIES[1], "id": 1}, {"instruction": "Words: a, b, c", "story": STORIES[2], "id": 2}]
    examples, counts = sft_data.encode_pairs(tokenizer, pairs, context=48)
    assert counts["skipped_no_supervised_token"] == 1 and examples[0] is None
    assert counts["truncated"] == 1 and len(examples[1][0]) == 48
    assert counts["supervised_tokens"] == sum(t != -100 for t in sft_data.labels_of(examples[1]))


def test_collate_pads_inputs_and_masks_padding(tokenizer):
    import numpy as np

    batch = [(np.array([1, 2, 3, 4]), 2), (np.array([5, 6]), 1)]
    inp, lab = sft_data.collate(batch, pad_id=0)
    assert inp.tolist() == [[1, 2, 3, 4], [5, 6, 0, 0]]
    assert lab.tolist() == [[-100, -100, 3, 4], [-100, 6, -100, -100]]
    assert sft_data.supervised_fraction(lab) == pytest.approx(3 / 6)


def test_val_split_is_seeded_by_story():
    ids = [f"g{i:07d}" for i in range(2000)]
    a = sft_data.val_story_ids(ids, 7, 0.1)
    assert len(a) == 200 and a <= set(ids)
    assert a == sft_data.val_story_ids(list(reversed(ids)) + ids[:50], 7, 0.1)  # order and repeats do not matter
    assert a != sft_data.val_story_ids(ids, 8, 0.1)
    assert len(sft_data.val_story_ids(ids[:3], 7, 0.01)) == 1  # at least one held-out story
    assert sft_data.val_story_ids(ids[:1], 7, 0.5) == set() and sft_data.val_story_ids(ids, 7, 0.0) == set()


# -- training ------------------------------------------------------------------------------------

TINY = {"hidden_size": 16, "num_layers": 2, "num_heads": 2, "window_size": 8, "max_position": 256}


def make_base(tmp_path, tokenizer):
    """A random tiny GPT-Neo exported as a HF checkpoint with the tokenizer: a stand-in pretrain/<size>."""
    import torch

    from tinystories.train.model import FastGPTNeo, Shape, save_hf

    tok_dir = tmp_path / "tok"
    save_tokenizer(tokenizer.backend_tokenizer, tok_dir)
    torch.manual_seed(0)
    model = FastGPTNeo(Shape(**TINY), len(tokenizer))
    base = tmp_path / "base"
    save_hf(model, base, tokenizer_dir=tok_dir, eos_token_id=tokenizer.eos_token_id)
    return base


def test_trainer_loss_is_response_only_cross_entropy(tmp_path, tokenizer):
    """The loss the shared trainer logs for step 1 equals cross-entropy over the story tokens
    of that batch, computed by hand from transformers' GPT-Neo logits."""
    import torch
    import torch.nn.functional as F
    from transformers import GPTNeoForCausalLM

    from tinystories.train.args import TrainArgs
    from tinystories.train.model import load_hf
    from tinystories.train.trainer import train

    base = make_base(tmp_path, tokenizer)
    pairs = [{"instruction": f"Words: jump, ball, happy\nSentence: {s.split('.')[0]}.", "story": s, "id": i} for i, s in enumerate(STORIES)]
    examples, _ = sft_data.encode_pairs(tokenizer, pairs, context=256)
    batches = sft_data.PairBatches(examples, batch_size=3, grad_accum=1, seed=5, pad_id=tokenizer.eos_token_id)
    settings = TrainArgs(max_steps=1, batch_size=3, context=256, lr=1e-3, min_lr=1e-4, warmup_steps=0, eval_interval=0, eval_batches=0, checkpoint_interval=0, log_interval=1, dtype="fp32", compile=False)
    out = tmp_path / "out"
    train(load_hf(base), settings, 1, out, batches, None, tokenizer_dir=base, eos_token_id=tokenizer.eos_token_id, stage="sft")
    logged = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["train_loss"]

    x, y = batches.batch(0, 0, 0, 1)
    assert (y != -100).sum() < (x != tokenizer.eos_token_id).sum()  # the prompt really is masked
    hf = GPTNeoForCausalLM.from_pretrained(base).eval()
    with torch.no_grad():
        logits = hf(x).logits
    losses = []
    for b in range(x.shape[0]):
        for t in range(x.shape[1] - 1):
            if y[b, t + 1] != -100:
                losses.append(-F.log_softmax(logits[b, t].double(), -1)[y[b, t + 1]])
    manual = torch.stack(losses).mean().item()
    assert logged == pytest.approx(manual, rel=1e-4)


def _sft_config(tmp_path, sft_train: dict | None = None, **sft_opts):
    import yaml

    sft_train = sft_train or {}
    conf = {
        "seed": 7,
        "pretrain": {
            "sizes": ["tiny"], "shapes": {"tiny": dict(TINY)},
            "train": {"context": 32, "batch_size": 4, "max_steps": 3, "warmup_steps": 1, "eval_interval": 3, "eval_batches": 1,
                      "checkpoint_interval": 0, "log_interval": 1, "dtype": "fp32"},
        },
        "instruct_data": {"sets_per_story": 2},
        "sft": {"epochs": 1, "samples": 2, "sample_tokens": 12, "val_fraction": 0.2, **sft_opts,
                "train": {"batch_size": 2, "context": 200, "lr": 3e-3, "min_lr": 3e-4, "eval_interval": 2, "log_interval": 1,
                          "checkpoint_interval": 2, "dtype": "fp32", **sft_train}},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(conf))
    return path


@pytest.fixture(scope="module")
def _pretrained_template(tmp_path_factory):
    """stories.jsonl -> instruct-data (scripted LLM summaries) -> tokenizer + bins -> pretrain (tiny), built once."""
    from fake_llm import ScriptedBackend
    from pretrain_fixtures import make_run_dir
    from test_instruct_data import summary_reply, write_stories

    from tinystories.cli import main
    from tinystories.llm import backend_registered

    tmp = tmp_path_factory.mktemp("sft")
    run = tmp / "run"
    write_stories(run, n=6)
    backend = ScriptedBackend(summary_reply)
    cfg = _sft_config(tmp)
    with backend_registered("embedded", lambda cfg: backend):
        assert main(["instruct-data", "--run-dir", str(run), "--config", str(cfg)]) == 0
    stories = [json.loads(line)["story"] for line in open(run / "data" / "stories.jsonl")]
    make_run_dir(run, stories=stories + [instruction_prompt("Words: jump, ball, shiny")], repeats=12, vocab_size=300)
    assert main(["pretrain", "--run-dir", str(run), "--config", str(cfg)]) == 0
    return run


@pytest.fixture
def pretrained_run(_pretrained_template, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(_pretrained_template, run)
    return run, _sft_config(tmp_path)


def test_end_to_end_sft_checkpoint_loads_and_follows_the_format(pretrained_run, capsys):
    import torch
    from transformers import AutoTokenizer, GPTNeoForCausalLM

    from tinystories.cli import main
    from tinystories.io.rundir import RunDir

    run, cfg = pretrained_run
    assert main(["sft", "--run-dir", str(run), "--config", str(cfg)]) == 0
    out = run / "sft" / "tiny"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "metrics.jsonl", "samples.json", "tinystories.json"):
        assert (out / name).exists(), name
    m = RunDir(run).stage_record("sft")["metrics"]["tiny"]
    assert m["pairs_train"] + m["pairs_val"] == 12 and m["pairs_val"] >= 2
    assert m["steps"] == 5  # ceil(1 epoch * 10 train pairs / batch 2)
    assert 0 < m["supervised_fraction"]["min"] <= m["supervised_fraction"]["mean"] < 1
    assert m["skipped_no_supervised_token"] == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    assert all(r["val_loss"] > 0 for r in records if r["val_loss"] is not None) and records[-1]["val_loss"] == pytest.approx(m["val_loss"])

    # Every parameter moved away from the pretrained weights.
    base = GPTNeoForCausalLM.from_pretrained(run / "pretrain" / "tiny")
    tuned = GPTNeoForCausalLM.from_pretrained(out)
    for (name, p0), (_, p1) in zip(base.named_parameters(), tuned.named_parameters()):
        assert not torch.equal(p0, p1), name

    # The checkpoint stands alone: its own tokenizer, generation from an instruction prompt.
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok(instruction_prompt("Words: jump, ball, shiny\nSummary: A kid finds a ball."), return_tensors="pt").input_ids
    gen = tuned.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False, pad_token_id=tok.eos_token_id)
    assert gen.shape[1] > ids.shape[1]
    samples = json.loads((out / "samples.json").read_text())
    assert len(samples) == 2 and all(s["instruction"] and isinstance(s["generated"], str) for s in samples)
    assert [s["held_out"] for s in samples] == [True, False]  # one held-out story (6 x 0.2), then a training one

    # Unchanged config and inputs: the stage is current and skipped.
    capsys.readouterr()
    assert main(["sft", "--run-dir", str(run), "--config", str(cfg)]) == 0
    assert "sft: skipped" in capsys.readouterr().out


def test_sft_resumes_after_a_kill_to_the_same_weights(pretrained_run, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from tinystories.cli import main

    run, cfg = pretrained_run
    assert main(["sft", "--run-dir", str(run), "--config", str(cfg)]) == 0
    straight = load_file(run / "sft" / "tiny" / "model.safetensors")

    original = sft_data.PairBatches.batch

    def dying(self, step, micro, rank, world):
        if step == 3:  # after the checkpoint at step 2
            raise KeyboardInterrupt
        return original(self, step, micro, rank, world)

    monkeypatch.setattr(sft_data.PairBatches, "batch", dying)
    assert main(["sft", "--run-dir", str(run), "--config", str(cfg), "--force"]) == 130
    monkeypatch.setattr(sft_data.PairBatches, "batch", original)
    assert main(["sft", "--run-dir", str(run), "--config", str(cfg)]) == 0
    out = run / "sft" / "tiny"
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4, 5]
    resumed = load_file(out / "model.safetensors")
    assert all(torch_equal(straight[k], resumed[k]) for k in straight)


def torch_equal(a, b):
    import torch

    return torch.equal(a, b)


def test_bad_inputs_name_the_fix(pretrained_run, tmp_path, capsys):
    import shutil

    from tinystories.cli import main

    run, cfg = pretrained_run
    # Every prompt longer than the context: a clear error naming sft.train.context, never a NaN loss.
    assert main(["sft", "--run-dir", str(run), "--config", str(cfg), "--set", "sft.train.context=12"]) == 2
    err = capsys.readouterr().err
    assert "sft.train.context" in err and "instruction_dataset.jsonl" in err and len(err.strip().splitlines()) == 1

    shutil.rmtree(run / "pretrain" / "tiny")
    assert main(["sft", "--run-dir", str(run), "--config", str(cfg)]) == 2
    assert "tinystories pretrain" in capsys.readouterr().err

    (run / "data" / "instruction_dataset.jsonl").unlink()
    assert main(["sft", "--run-dir", str(run), "--config", str(cfg)]) == 2
    assert "tinystories instruct-data" in capsys.readouterr().err

    assert main(["sft", "--run-dir", str(run), "--config", str(cfg), "--set", "sft.val_fraction=1.5"]) == 2
    assert "sft.val_fraction" in capsys.readouterr().err


def test_tunes_a_checkpoint_given_by_path(pretrained_run, tmp_path):
    import shutil

    from transformers import GPTNeoForCausalLM

    from tinystories.cli import main
    from tinystories.io.rundir import RunDir

    run, cfg = pretrained_run
    external = tmp_path / "models" / "my-neo"
    shutil.copytree(run / "pretrain" / "tiny", external, ignore=shutil.ignore_patterns("train_state.pt", "metrics.jsonl", "tb"))
    args = ["sft", "--run-dir", str(run), "--config", str(cfg), "--set", f"sft.sizes=[{external}]", "--set", "sft.train.max_steps=1", "--set", "sft.samples=0"]
    assert main(args) == 0
    assert GPTNeoForCausalLM.from_pretrained(run / "sft" / "my-neo") is not None
    rec = RunDir(run).stage_record("sft")
    assert rec["metrics"]["my-neo"]["steps"] == 1 and str(external / "config.json") not in rec["inputs"]
    assert str(external) in rec["inputs"]  # the executor hashes the external checkpoint too


def test_pairs_without_a_story_token_are_skipped_and_counted(pretrained_run):
    from tinystories.cli import main
    from tinystories.io.rundir import RunDir, read_jsonl
    from tinystories.train.bpe import load_tokenizer

    run, cfg = pretrained_run
    tok = load_tokenizer(run / "pretrain" / "tiny")
    rows = list(read_jsonl(run / "data" / "instruction_dataset.jsonl"))
    lengths = [len(tok.encode(instruction_prompt(r["instruction"]), add_special_tokens=False)) for r in rows]
    context = max(lengths)  # the longest prompts fill the context exactly: nothing left to learn
    assert min(lengths) < context
    args = ["sft", "--run-dir", str(run), "--config", str(cfg), "--set", f"sft.train.context={context}", "--set", "sft.train.max_steps=1", "--set", "sft.samples=0"]
    assert main(args) == 0
    m = RunDir(run).stage_record("sft")["metrics"]["tiny"]
    skipped = sum(n >= context for n in lengths)
    assert m["skipped_no_supervised_token"] == skipped and m["pairs_train"] + m["pairs_val"] == len(rows) - skipped
    assert f"{skipped} of {len(rows)} pairs skipped" in (run / "logs" / "sft.log").read_text()


def test_batches_cover_each_epoch_once_and_split_across_ranks():
    import numpy as np

    examples = [(np.arange(i + 2), 1) for i in range(10)]
    b = sft_data.PairBatches(examples, batch_size=2, grad_accum=1, seed=3, pad_id=0)
    # One process: 5 steps are one epoch, every example exactly once; the next epoch reshuffles.
    epoch0 = [i for step in range(5) for i in b.indices(step, 0, 0, 1)]
    epoch1 = [i for step in range(5, 10) for i in b.indices(step, 0, 0, 1)]
    assert sorted(epoch0) == sorted(epoch1) == list(range(10)) and epoch0 != epoch1
    # Two ranks: disjoint halves of the same sequence, so together they see what one process sees.
    r0, r1 = b.indices(0, 0, 0, 2), b.indices(0, 0, 1, 2)
    assert not set(r0) & set(r1) and r0 + r1 == epoch0[:4]
    # Pure function of the position: asking again (as a resumed run does) gives the same batch.
    x1, y1 = b.batch(3, 0, 0, 1)
    x2, y2 = sft_data.PairBatches(examples, 2, 1, 3, 0).batch(3, 0, 0, 1)
    assert x1.equal(x2) and y1.equal(y2)


def test_held_out_pairs_are_the_pretraining_validation_stories(pretrained_run):
    """With prepare's record of the validation stories, sft holds out exactly the pairs of those
    stories: none of its validation stories was a pretraining training story."""
    from tinystories.cli import main
    from tinystories.io.rundir import RunDir, read_jsonl
    from tinystories.train.heldout import story_key, write_val_stories

    run, cfg = pretrained_run
    rows = list(read_jsonl(run / "data" / "instruction_dataset.jsonl"))
    stories = sorted({r["story"] for r in rows})
    val_stories = stories[:2]  # 2 of 6 stories: not what the seeded 20% share (one story) would pick
    write_val_stories(run / "data" / "val_stories.json", [story_key(s) for s in val_stories])
    assert main(["sft", "--run-dir", str(run), "--config", str(cfg)]) == 0
    m = RunDir(run).stage_record("sft")["metrics"]["tiny"]
    assert m["pairs_val"] == sum(r["story"] in val_stories for r in rows) == 4
    samples = json.loads((run / "sft" / "tiny" / "samples.json").read_text())
    held_out = [s for s in samples if s["held_out"]]
    assert held_out and all(s["reference"] in val_stories for s in held_out)
