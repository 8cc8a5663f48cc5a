"""Data-parallel training: `torchrun --nproc_per_node 2` (gloo on CPU) runs the same command."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pretrain_fixtures import make_run_dir, make_sft_run, read_metrics, write_config, write_sft_config

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun() -> str:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    assert torchrun, "torchrun not installed"
    return torchrun


def test_torchrun_two_ranks_train_identical_weights(tmp_path):
    torchrun = _torchrun()
    run_dir = make_run_dir(tmp_path / "run")
    cfg = write_config(tmp_path / "c.yaml", max_steps=4, checkpoint_interval=2, eval_interval=2, grad_accum=2)
    debug = tmp_path / "ranks"
    env = dict(os.environ, TINYSTORIES_NO_PROGRESS="1", TINYSTORIES_DEBUG_DIR=str(debug), OMP_NUM_THREADS="1")
    cmd = [
        torchrun, "--nproc_per_node", "2", "--master_port", str(_free_port()), "-m", "tinystories.cli",
        "pretrain", "--run-dir", str(run_dir), "--config", str(cfg),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    ranks = [json.loads((debug / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world"] == 2 for r in ranks)
    assert ranks[0]["pid"] != ranks[1]["pid"]
    assert all(r["step"] == 4 for r in ranks), ranks
    # Gradients were averaged: both ranks hold the very same weights after every step.
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]

    out = run_dir / "pretrain" / "tiny"
    assert len(list(out.glob("*.safetensors"))) == 1
    assert not list(out.parent.glob(".*ckpt-tmp"))
    # Exactly one writer: one record per step, tokens counting both ranks' batches.
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert records[-1]["tokens"] == 4 * (2 * 4 * 32 * 2)  # steps * (ranks * batch * context * accum)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["stages"]["pretrain"]["metrics"]["tiny"]["steps"] == 4


# Pairs whose supervision differs a lot: long instructions before short stories, and the reverse.
UNEVEN_PAIRS = [
    {"instruction": "Words: cat, ball, red\nSummary: " + "A cat plays with a red ball all day. " * 3, "story": "The cat played.", "id": i}
    if i % 2 else
    {"instruction": "Words: sun", "story": "Once upon a time the sun was hot and Sam went to the sea with his mom. " * 2, "id": i}
    for i in range(8)
]


def test_two_ranks_weigh_every_supervised_token_equally(tmp_path):
    """SFT over two ranks whose batches hold very different numbers of supervised tokens logs
    the loss and gradient of one process training on both batches at once: every supervised
    token weighs the same, not each rank's mean."""
    from tinystories.cli import main
    from tinystories.pipeline.ids import derive_seed
    from tinystories.train.bpe import load_tokenizer
    from tinystories.train.sft_data import PairBatches, encode_pairs

    template = make_sft_run(tmp_path / "template", UNEVEN_PAIRS)
    tokenizer = load_tokenizer(template / "tokenizer")
    examples, _ = encode_pairs(tokenizer, UNEVEN_PAIRS, context=128)
    batches = PairBatches(examples, batch_size=2, grad_accum=1, seed=derive_seed(7, "sft"), pad_id=tokenizer.eos_token_id)
    supervised = [sum(len(examples[i][0]) - examples[i][1] for i in batches.indices(0, 0, rank, 2)) for rank in (0, 1)]
    assert max(supervised) > 1.5 * min(supervised), f"the ranks' supervision is too even to tell the weightings apart: {supervised}"

    one, two = tmp_path / "one", tmp_path / "two"
    shutil.copytree(template, one)
    shutil.copytree(template, two)
    assert main(["sft", "--run-dir", str(one), "--config", str(write_sft_config(tmp_path / "one.yaml", batch_size=4))]) == 0
    env = dict(os.environ, TINYSTORIES_NO_PROGRESS="1", OMP_NUM_THREADS="1")
    cmd = [
        _torchrun(), "--nproc_per_node", "2", "--master_port", str(_free_port()), "-m", "tinystories.cli",
        "sft", "--run-dir", str(two), "--config", str(write_sft_config(tmp_path / "two.yaml", batch_size=2)),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    alone = read_metrics(one / "sft" / "tiny" / "metrics.jsonl")[0]
    ranks = read_metrics(two / "sft" / "tiny" / "metrics.jsonl")[0]
    assert ranks["train_loss"] == pytest.approx(alone["train_loss"], rel=1e-4)
    assert ranks["grad_norm"] == pytest.approx(alone["grad_norm"], rel=1e-3)
    assert ranks["train_bpb"] == pytest.approx(alone["train_bpb"], rel=1e-4)
