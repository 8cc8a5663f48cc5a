"""Data-parallel pretraining: `torchrun --nproc_per_node 2` (gloo on CPU) runs the same command."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from pretrain_fixtures import read_metrics, make_run_dir, write_config

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_torchrun_two_ranks_train_identical_weights(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    assert torchrun, "torchrun not installed"
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
