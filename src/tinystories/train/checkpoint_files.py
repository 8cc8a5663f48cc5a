"""A training checkpoint on disk: written whole or not at all, and read back for resume.

A checkpoint is first written whole into a sibling temp dir with a completion marker and then
moved in with train_state.pt last; a kill during the move is rolled forward on the next start
(`recover_checkpoint`), a kill before the marker leaves the previous checkpoint untouched.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tinystories.io.layout import METRICS_FILE, TRAIN_STATE
from tinystories.io.resume import keep_rows

COMPLETE_MARKER = ".complete"


def tmp_dir(out_dir: Path) -> Path:
    """Where a checkpoint of `out_dir` is assembled before it is moved in."""
    return out_dir.parent / f".{out_dir.name}.ckpt-tmp"


def recover_checkpoint(out_dir: Path) -> None:
    """Finish or discard a checkpoint write interrupted by a kill."""
    tmp = tmp_dir(out_dir)
    if not tmp.exists():
        return
    if (tmp / COMPLETE_MARKER).exists():
        _move_in(tmp, out_dir)
    else:
        shutil.rmtree(tmp, ignore_errors=True)


def _move_in(tmp: Path, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    names = sorted(p.name for p in tmp.iterdir() if p.name not in (COMPLETE_MARKER, TRAIN_STATE))
    # train_state.pt goes last: while it still names the previous step, a kill here is rolled
    # forward from the temp dir (which keeps its marker until every file is in place).
    for name in [*names, TRAIN_STATE]:
        src = tmp / name
        if src.exists():
            os.replace(src, out_dir / name)
    shutil.rmtree(tmp, ignore_errors=True)


def write_checkpoint(model, out_dir: Path, state: dict, tokenizer_dir, eos_token_id, extra: dict) -> None:
    import torch

    from tinystories.publish.cards import publish_checkpoint
    from tinystories.train.model import save_hf

    tmp = tmp_dir(out_dir)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_hf(model, tmp, tokenizer_dir=tokenizer_dir, eos_token_id=eos_token_id, extra=extra)
    # The card reads the live metrics.jsonl: every step up to this checkpoint is logged there.
    publish_checkpoint(tmp, metrics_path=out_dir / METRICS_FILE, name=out_dir.name)
    torch.save(state, tmp / TRAIN_STATE)
    for p in tmp.iterdir():
        with open(p, "rb") as fh:
            os.fsync(fh.fileno())
    with open(tmp / COMPLETE_MARKER, "w") as fh:
        fh.write(str(state["step"]))
        fh.flush()
        os.fsync(fh.fileno())
    _move_in(tmp, out_dir)


def load_state(out_dir: Path) -> dict | None:
    import torch

    path = out_dir / TRAIN_STATE
    if not path.exists():
        return None
    # weights_only=False: the state holds numpy/python RNG states, written by us.
    return torch.load(path, map_location="cpu", weights_only=False)


def load_weights(model, out_dir: Path) -> None:
    """The checkpoint's weights into `model` (a FastGPTNeo of the checkpoint's shape)."""
    from safetensors.torch import load_file

    from tinystories.train.model import from_hf_state_dict

    sd = load_file(str(out_dir / "model.safetensors"))
    sd.setdefault("lm_head.weight", sd["transformer.wte.weight"])
    model.load_state_dict(from_hf_state_dict(sd, model.shape.num_layers), strict=True)


def truncate_metrics(path: Path, last_step: int) -> None:
    """Drop records past the checkpoint step so a resumed curve has no duplicate steps."""
    keep_rows(path, lambda r: r.get("step", 0) <= last_step)
