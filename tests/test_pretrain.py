"""The pretrain stage end to end through the CLI: checkpoint, learning, resume after SIGKILL, errors."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pretrain_fixtures import TINY_SHAPE, make_run_dir, read_metrics, write_config
from tinystories.cli import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny models: a second OpenMP thread only adds synchronisation on a shared machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def run_dir(tmp_path):
    return make_run_dir(tmp_path / "run")


def _pretrain(run_dir, cfg, *extra):
    return main(["pretrain", "--run-dir", str(run_dir), "--config", str(cfg), *extra])


def test_end_to_end_checkpoint_loads_and_generates(run_dir, tmp_path, capsys):
    from transformers import AutoTokenizer, GPTNeoForCausalLM

    from tinystories.pipeline.ids import derive_seed
    from tinystories.train.model import FastGPTNeo, Shape

    cfg = write_config(tmp_path / "c.yaml")
    assert _pretrain(run_dir, cfg) == 0
    out = run_dir / "pretrain" / "tiny"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "train_state.pt", "metrics.jsonl"):
        assert (out / name).exists(), name
    assert list((out / "tb").iterdir()), "no TensorBoard events"
    assert not list(out.parent.glob(".*ckpt-tmp")), "temp checkpoint left behind"

    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert all(r["tokens"] == 4 * 32 * r["step"] for r in records)
    evals = [r for r in records if r["val_loss"] is not None]
    assert [r["step"] for r in evals] == [3, 6]
    assert all(r["val_bpb"] > 0 and r["train_bpb"] > 0 and r["lr"] > 0 for r in evals)

    manifest = json.loads((run_dir / "manifest.json").read_text())
    m = manifest["stages"]["pretrain"]["metrics"]["tiny"]
    assert m["steps"] == 6 and m["tokens_seen"] == 6 * 4 * 32 and m["params"] > 0 and m["tokens_per_s"] > 0
    assert m["val_bpb"] == pytest.approx(evals[-1]["val_bpb"])

    # Parameters changed: rebuild the initial model with the stage's seed and compare.
    torch.manual_seed(derive_seed(7, "pretrain"))
    init = FastGPTNeo(Shape(**TINY_SHAPE), json.loads((run_dir / "data" / "meta.json").read_text())["vocab_size"])
    hf = GPTNeoForCausalLM.from_pretrained(out)
    assert not torch.equal(init.h[0].c_fc.weight, hf.transformer.h[0].mlp.c_fc.weight)
    assert not torch.equal(init.wte.weight, hf.transformer.wte.weight)

    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("Once upon a time", return_tensors="pt").input_ids
    gen = hf.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.eos_token_id)
    assert gen.shape[1] == ids.shape[1] + 5
    assert isinstance(tok.decode(gen[0]), str)

    # A rerun with the same config is skipped by the executor; adding a size trains only it.
    assert _pretrain(run_dir, cfg) == 0
    assert "pretrain: skipped" in capsys.readouterr().out
    cfg2 = write_config(tmp_path / "c2.yaml", sizes=["tiny", "tiny2"], shapes={"tiny": TINY_SHAPE, "tiny2": {**TINY_SHAPE, "hidden_size": 8}})
    assert _pretrain(run_dir, cfg2) == 0
    manifest = json.loads((run_dir / "manifest.json").read_text())
    sizes = manifest["stages"]["pretrain"]["metrics"]
    assert sizes["tiny"]["skipped"] is True and sizes["tiny2"]["skipped"] is False
    assert len(read_metrics(out / "metrics.jsonl")) == 6


def test_loss_decreases_on_repetitive_data(tmp_path):
    run_dir = make_run_dir(tmp_path / "run", stories=["the cat sat on the mat. " * 3], repeats=60)
    cfg = write_config(tmp_path / "c.yaml", max_steps=30, eval_interval=30, checkpoint_interval=0, lr=1e-2, min_lr=1e-3, warmup_steps=3)
    assert _pretrain(run_dir, cfg) == 0
    records = read_metrics(run_dir / "pretrain" / "tiny" / "metrics.jsonl")
    first, last = records[0]["train_loss"], records[-1]["train_loss"]
    assert last < 0.5 * first, (first, last)
    assert records[-1]["val_loss"] < 0.5 * first


def test_resume_after_sigkill(run_dir, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", max_steps=300, checkpoint_interval=10, eval_interval=50)
    cmd = [sys.executable, "-m", "tinystories.cli", "pretrain", "--run-dir", str(run_dir), "--config", str(cfg)]
    env = dict(os.environ, TINYSTORIES_NO_PROGRESS="1", OMP_NUM_THREADS="1")
    out = run_dir / "pretrain" / "tiny"
    err_log = open(tmp_path / "stderr.txt", "w+")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err_log)
    try:
        deadline = time.time() + 240
        # The step-10 checkpoint is in place before step 11 is logged, so a log past step 11
        # means: a checkpoint exists and steps after it were logged. Reading the log is cheap,
        # so polling is fast enough to catch even a quick machine mid-run.
        while time.time() < deadline and proc.poll() is None:
            metrics_path = out / "metrics.jsonl"
            if metrics_path.exists():
                lines = metrics_path.read_text().splitlines()
                if len(lines) >= 12:
                    break
            time.sleep(0.01)
        assert proc.poll() is None, f"run ended before it could be killed: {(tmp_path / 'stderr.txt').read_text()[-2000:]}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        err_log.close()
    ckpt_step = torch.load(out / "train_state.pt", weights_only=False)["step"]
    before = read_metrics(out / "metrics.jsonl")
    assert before[-1]["step"] > ckpt_step  # steps past the checkpoint were logged and must be cut
    assert ckpt_step % 10 == 0 and 0 < ckpt_step < 300

    # Rerun the same command (in-process here): it continues from the checkpoint.
    assert _pretrain(run_dir, cfg) == 0
    steps = [r["step"] for r in read_metrics(out / "metrics.jsonl")]
    assert steps == sorted(set(steps)), "duplicate or unordered steps"
    assert steps[-1] == 300
    assert steps == list(range(1, 301))
    after = read_metrics(out / "metrics.jsonl")
    assert after[ckpt_step]["step"] == ckpt_step + 1  # the first step after the resume
    # Records up to the checkpoint are the originals, untouched by the resume.
    assert after[:ckpt_step] == before[:ckpt_step]
    state = torch.load(out / "train_state.pt", weights_only=False)
    assert state["step"] == 300 and state["finished"] and state["tokens_seen"] == 300 * 4 * 32


def test_force_restarts_and_shape_change_is_refused(run_dir, tmp_path, capsys):
    cfg = write_config(tmp_path / "c.yaml", max_steps=3)
    assert _pretrain(run_dir, cfg) == 0
    bigger = write_config(tmp_path / "b.yaml", max_steps=3, shapes={"tiny": {**TINY_SHAPE, "hidden_size": 32}})
    capsys.readouterr()
    assert _pretrain(run_dir, bigger) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "another shape" in err and "--force pretrain" in err
    assert _pretrain(run_dir, bigger, "--force") == 0
    from transformers import GPTNeoConfig

    assert GPTNeoConfig.from_pretrained(run_dir / "pretrain" / "tiny").hidden_size == 32
    assert [r["step"] for r in read_metrics(run_dir / "pretrain" / "tiny" / "metrics.jsonl")] == [1, 2, 3]


@pytest.mark.parametrize(
    "kind, overrides, needle",
    [
        ("small data", {"batch_size": 64, "context": 64}, "fewer than one batch"),
        ("context", {"context": 128}, "pretrain.train.context: 128 is longer than the position table"),
        ("unknown size", {"sizes": ["2M"]}, "pretrain.sizes: unknown size '2M'"),
        ("vocab", {}, "does not fit the uint16"),
        ("short val", {"context": 64, "batch_size": 1}, "shorter than one window (pretrain.train.context 64); lower pretrain.train.context or raise prepare.val_fraction"),
    ],
)
def test_bad_inputs_are_one_line_user_errors(run_dir, tmp_path, capsys, kind, overrides, needle):
    if kind == "short val":
        run_dir = make_run_dir(tmp_path / "short", stories=["The cat sat on a mat."], repeats=16)  # 2 validation stories, ~16 tokens
    if kind == "vocab":
        meta_path = run_dir / "data" / "meta.json"
        meta = json.loads(meta_path.read_text())
        meta["vocab_size"] = 70000
        meta_path.write_text(json.dumps(meta))
    cfg = write_config(tmp_path / "c.yaml", **overrides)
    assert _pretrain(run_dir, cfg) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert needle in err, err
    assert not (run_dir / "pretrain" / "tiny" / "model.safetensors").exists()


@pytest.mark.slow
def test_compiled_training_runs_compiled(run_dir, tmp_path, caplog):
    """pretrain.train.compile=true really trains through torch.compile (no silent eager fallback)."""
    cfg = write_config(tmp_path / "c.yaml", max_steps=3, compile=True, dtype="bf16")
    with caplog.at_level("WARNING", logger="tinystories.train.trainer"):
        assert _pretrain(run_dir, cfg) == 0
    assert "torch.compile failed" not in caplog.text
    records = read_metrics(run_dir / "pretrain" / "tiny" / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(r["train_loss"] == r["train_loss"] for r in records)  # not NaN


def test_changed_data_retrains_instead_of_keeping_a_stale_checkpoint(run_dir, tmp_path):
    """After new tokens (here: meta.json changes), rerunning pretrain must not keep the old model."""
    import json

    cfg = write_config(tmp_path / "c.yaml")
    run = run_dir
    argv = ["pretrain", "--run-dir", str(run), "--config", str(cfg)]
    assert main(argv) == 0
    info = json.loads((run / "pretrain" / "tiny" / "tinystories.json").read_text())
    meta_path = run / "data" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["note"] = "re-prepared"
    meta_path.write_text(json.dumps(meta))
    assert main(argv) == 0
    info2 = json.loads((run / "pretrain" / "tiny" / "tinystories.json").read_text())
    assert info2["data_id"] != info["data_id"]
    steps = [json.loads(line)["step"] for line in (run / "pretrain" / "tiny" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # a fresh curve, not an appended one


def test_bits_per_byte_count_the_bytes_of_the_evaluated_tokens(tmp_path):
    """val_bpb (train_bpb) divide the loss by the UTF-8 bytes of exactly the target tokens
    evaluated (trained), not by the split's mean bytes per token: with one validation batch
    of two, the two differ."""
    import math

    import numpy as np
    from transformers import AutoTokenizer

    from tinystories.pipeline.ids import derive_seed
    from tinystories.train.pretrain import RandomWindows

    stories = ["A cat.", "Tim and his big brown dog ran all the way to the old wooden bridge by the river."]
    run_dir = make_run_dir(tmp_path / "run", stories=stories, repeats=96)
    cfg = write_config(tmp_path / "c.yaml", max_steps=2, eval_interval=2, eval_batches=1, checkpoint_interval=0)
    assert _pretrain(run_dir, cfg) == 0
    records = read_metrics(run_dir / "pretrain" / "tiny" / "metrics.jsonl")
    tok = AutoTokenizer.from_pretrained(run_dir / "tokenizer")
    meta = json.loads((run_dir / "data" / "meta.json").read_text())

    def nbytes(rows) -> int:  # targets: every position of a window but its first
        return sum(len(tok.decode(row[1:].tolist(), skip_special_tokens=True).encode("utf-8")) for row in rows)

    val = np.fromfile(run_dir / "data" / "val.bin", dtype=np.uint16).astype(np.int64)
    windows = val[: 4 * 32].reshape(4, 32)  # validation batch 0: batch_size 4 windows of context 32
    assert len(val) // 32 > 4, "validation must hold more than the one batch evaluated"
    last = records[-1]
    expected = last["val_loss"] * windows[:, 1:].size / nbytes(windows) / math.log(2)
    assert last["val_bpb"] == pytest.approx(expected, rel=1e-4)
    split_mean = last["val_loss"] * meta["val"]["tokens"] / meta["val"]["bytes"] / math.log(2)
    assert abs(split_mean - expected) > 0.01 * expected, "the split mean must differ here, or the test tells nothing"

    x, _ = RandomWindows(np.memmap(run_dir / "data" / "train.bin", dtype=np.uint16, mode="r"), 4, 32, derive_seed(7, "pretrain")).batch(0, 0, 0, 1)
    first = records[0]
    assert first["train_bpb"] == pytest.approx(first["train_loss"] * x[:, 1:].numel() / nbytes(x.numpy()) / math.log(2), rel=1e-4)


def test_tensorboard_tags_text_samples_and_the_bar_show_validation(run_dir, tmp_path, monkeypatch):
    """TensorBoard keeps train and val apart (train/..., val/...), logs the gradient norm and
    a text sample per validation pass; the progress bar shows the last validation loss."""
    import contextlib

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    import tinystories.progress as progress

    bars = []
    real_bar = progress.progress_bar

    @contextlib.contextmanager
    def recording_bar(*args, **kwargs):
        with real_bar(*args, **kwargs) as bar:
            bars.append(bar)
            yield bar

    monkeypatch.setattr(progress, "progress_bar", recording_bar)
    assert _pretrain(run_dir, write_config(tmp_path / "c.yaml", eval_samples=2)) == 0
    out = run_dir / "pretrain" / "tiny"
    records = read_metrics(out / "metrics.jsonl")

    events = EventAccumulator(str(out / "tb"), size_guidance={"tensors": 0, "scalars": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    for tag in ("train/loss", "train/bpb", "train/lr", "train/tokens_per_s", "train/grad_norm", "val/loss", "val/bpb"):
        assert tag in scalars, f"{tag} missing from {sorted(scalars)}"
    assert not {"train_loss", "val_loss"} & scalars, "flat tags are gone"
    assert [e.step for e in events.Scalars("val/loss")] == [3, 6], "one val/loss point per validation pass"
    grad_norms = [e.value for e in events.Scalars("train/grad_norm")]
    assert grad_norms == pytest.approx([r["grad_norm"] for r in records], rel=1e-3), "the grad norm of every logged step"

    texts = sorted(tag for tag in events.Tags()["tensors"] if tag.startswith("samples/"))
    assert len(texts) == 2, f"two text samples, got {texts}"
    sample_events = events.Tensors(texts[0])
    assert [e.step for e in sample_events] == [3, 6], "a text sample at each validation pass"
    first = sample_events[-1].tensor_proto.string_val[0].decode("utf-8")
    assert first.startswith("Once upon a time") and len(first) > len("Once upon a time"), first

    assert len(bars) == 1, "one bar for the one size"
    counters = bars[0].fields
    assert counters["val_loss"] == f"{records[-1]['val_loss']:.3f}", counters
    assert counters["val_bpb"] == f"{records[-1]['val_bpb']:.3f}", counters


def test_grad_norm_is_logged_without_clipping(run_dir, tmp_path):
    assert _pretrain(run_dir, write_config(tmp_path / "c.yaml", max_steps=2, grad_clip=0.0, eval_samples=0)) == 0
    out = run_dir / "pretrain" / "tiny"
    records = read_metrics(out / "metrics.jsonl")
    assert all(r["grad_norm"] > 0 for r in records), records

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tb"))
    events.Reload()
    assert not [t for t in events.Tags()["tensors"] if t.startswith("samples/")], "eval_samples 0 writes no text"


def test_eval_samples_has_one_beginning_each():
    from tinystories.train.args import MAX_EVAL_SAMPLES
    from tinystories.train.training_log import SAMPLE_BEGINNINGS

    assert len(SAMPLE_BEGINNINGS) == MAX_EVAL_SAMPLES, "the eval_samples bound is the number of beginnings"


def test_resumed_metrics_of_an_older_layout_get_one_schema(tmp_path):
    """Rows written before metrics.jsonl had one schema (val keys only on validation steps)
    are given every key when a run resumes; an empty file is not kept."""
    from tinystories.train.training_log import METRIC_KEYS, TrainingLog

    out = tmp_path / "tiny"
    out.mkdir()
    old = [{"step": 1, "train_loss": 5.0}, {"step": 2, "train_loss": 4.0, "val_loss": 4.5, "val_bpb": 2.0}, {"step": 3, "train_loss": 3.0}]
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old))
    TrainingLog(out, start_step=2).close()
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2], "rows past the checkpoint are cut"
    assert all(list(r) == list(METRIC_KEYS) for r in rows), rows
    assert rows[0]["val_loss"] is None and rows[1]["val_loss"] == 4.5, rows

    (out / "metrics.jsonl").write_text("")
    TrainingLog(out, start_step=2).close()
    assert not (out / "metrics.jsonl").exists(), "an empty metrics.jsonl is removed"
