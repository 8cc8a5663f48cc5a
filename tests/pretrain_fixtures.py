"""A tiny run directory with everything `pretrain` reads: tokenizer/, data/{train,val}.bin, meta.json.

Built here with `tokenizers` directly (not through the tokenizer/prepare stages) so the
pretrain tests depend only on the run-directory contract.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

STORIES = [
    "Once upon a time there was a little cat. The cat liked to play with a red ball.",
    "One day a boy named Tim went to the park. He saw a big dog and they played all day.",
    "Lily had a small bird. The bird sang a happy song every morning and Lily smiled.",
    "The sun was hot. Sam and his mom went to the sea. They built a castle of sand.",
]
EOS = "<|endoftext|>"


def make_tokenizer(directory: Path, texts: list[str], vocab_size: int = 300) -> "object":
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=EOS, pad_token=EOS)
    directory.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(directory))
    return fast


def make_run_dir(root: Path, stories: list[str] | None = None, repeats: int = 40, vocab_size: int = 300) -> Path:
    """root/ as a run directory with tokenizer/ and data/{train,val}.bin + meta.json."""
    stories = stories or STORIES
    fast = make_tokenizer(root / "tokenizer", stories, vocab_size)
    eos = fast.convert_tokens_to_ids(EOS)
    (root / "data").mkdir(parents=True, exist_ok=True)
    meta = {"vocab_size": len(fast), "eos_id": eos, "dtype": "uint16"}
    for split, n in (("train", repeats), ("val", max(2, repeats // 8))):
        ids, nbytes = [], 0
        for i in range(n):
            text = stories[i % len(stories)]
            ids.extend(fast.encode(text) + [eos])
            nbytes += len(text.encode("utf-8"))
        np.asarray(ids, dtype=np.uint16).tofile(root / "data" / f"{split}.bin")
        meta[split] = {"tokens": len(ids), "bytes": nbytes, "stories": n}
    (root / "data" / "meta.json").write_text(json.dumps(meta))
    return root


TINY_SHAPE = {"hidden_size": 16, "num_layers": 2, "num_heads": 2, "window_size": 8, "max_position": 64}


def write_config(path: Path, **pretrain) -> Path:
    base = {
        "sizes": ["tiny"],
        "shapes": {"tiny": dict(TINY_SHAPE)},
        "context": 32,
        "batch_size": 4,
        "max_steps": 6,
        "warmup_steps": 2,
        "lr": 3e-3,
        "min_lr": 3e-4,
        "eval_interval": 3,
        "eval_batches": 2,
        "checkpoint_interval": 3,
        "log_interval": 1,
        "dtype": "fp32",
        "compile": False,
    }
    base.update(pretrain)
    path.write_text(yaml.safe_dump({"seed": 7, "pretrain": base}))
    return path


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
