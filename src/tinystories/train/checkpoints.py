"""Which checkpoints a config trains: the pretrain sizes and the sft checkpoint names.

The pretrain and sft stages name their outputs with these, and eval/complete lists the models
it completes with them, so no stage imports another to learn what the other writes. No torch.
"""

from __future__ import annotations

from pathlib import Path

from tinystories.errors import UserError
from tinystories.io.layout import PRETRAIN_DIR, SFT_DIR, checkpoint_dir


def pretrain_sizes(cfg) -> list[str]:
    """The sizes `pretrain` trains (pretrain/<size>); empty when the config has no pretrain section."""
    return list(getattr(getattr(cfg, "pretrain", None), "sizes", []) or [])


def pretrain_dirs(cfg) -> list[str]:
    return [checkpoint_dir(PRETRAIN_DIR, size) for size in pretrain_sizes(cfg)]


def _is_path(entry: str) -> bool:
    return "/" in entry or "\\" in entry or entry.startswith((".", "~"))


def sft_checkpoints(cfg) -> list[tuple[str, str]]:
    """(name, source) per checkpoint `sft` tunes: source is pretrain/<size> (run-relative) or an
    absolute path to a Hugging Face GPT-Neo directory; the output goes to sft/<name>."""
    sizes = list(cfg.sft.sizes) or pretrain_sizes(cfg)
    if not sizes:
        raise UserError("sft.sizes: no checkpoint to tune; name one, e.g. --set sft.sizes=[1M] (pretrain/1M) or a path to a GPT-Neo directory")
    out = []
    for entry in sizes:
        if _is_path(entry):
            path = Path(entry).expanduser().resolve()
            out.append((path.name, str(path)))
        else:
            out.append((entry, checkpoint_dir(PRETRAIN_DIR, entry)))
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise UserError(f"sft.sizes: two checkpoints would both be written to sft/<name> ({', '.join(names)}); rename one directory")
    return out


def sft_dirs(cfg) -> list[str]:
    """sft/<name> for every checkpoint `sft` writes under this config."""
    return [checkpoint_dir(SFT_DIR, name) for name, _ in sft_checkpoints(cfg)]
