"""A tiny run directory with everything `pretrain` reads: tokenizer/, data/{train,val}.bin, meta.json.

Built here with `tokenizers` directly (not through the tokenizer/prepare stages) so the
pretrain tests depend only on the run-directory contract.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from tinystories.io.layout import EOS

STORIES = [
    "Once upon a time there was a little cat. The cat liked to play with a red ball.",
    "One day a boy named Tim went to the park. He saw a big dog and they played all day.",
    "Lily had a small bird. The bird sang a happy song every morning and Lily smiled.",
    "The sun was hot. Sam and his mom went to the sea. They built a castle of sand.",
]


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


# Keys of the pretrain section itself; every other key given to write_config is a training
# setting and goes under pretrain.train.
PRETRAIN_KEYS = ("sizes", "shapes", "max_tokens")


def write_config(path: Path, **pretrain) -> Path:
    base = {"sizes": ["tiny"], "shapes": {"tiny": dict(TINY_SHAPE)}}
    train = {
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
    for key, value in pretrain.items():
        (base if key in PRETRAIN_KEYS else train)[key] = value
    path.write_text(yaml.safe_dump({"seed": 7, "pretrain": {**base, "train": train}}))
    return path


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# -- a run directory ready for sft: tokenizer, instruction pairs and a base checkpoint ---------

SFT_SHAPE = {**TINY_SHAPE, "max_position": 256}


def make_sft_run(root: Path, pairs: list[dict]) -> Path:
    """root/ with tokenizer/, data/instruction_dataset.jsonl (`pairs`) and pretrain/tiny, a
    random tiny GPT-Neo standing in for a pretrained checkpoint."""
    import torch

    from tinystories.text.prompts import instruction_prompt
    from tinystories.train.model import FastGPTNeo, Shape, save_hf

    texts = [p["story"] for p in pairs] + [instruction_prompt(p["instruction"]) for p in pairs]
    make_run_dir(root, stories=texts, repeats=8)
    with open(root / "data" / "instruction_dataset.jsonl", "w", encoding="utf-8") as fh:
        for p in pairs:
            fh.write(json.dumps(p) + "\n")
    meta = json.loads((root / "data" / "meta.json").read_text())
    torch.manual_seed(0)
    save_hf(FastGPTNeo(Shape(**SFT_SHAPE), meta["vocab_size"]), root / "pretrain" / "tiny", tokenizer_dir=root / "tokenizer", eos_token_id=meta["eos_id"])
    return root


def write_sft_config(path: Path, **train) -> Path:
    """One step of sft on pretrain/tiny, every pair trained (none held out), no samples."""
    settings = {"max_steps": 1, "batch_size": 2, "context": 128, "lr": 1e-3, "min_lr": 1e-4, "eval_interval": 0,
                "checkpoint_interval": 0, "log_interval": 1, "dtype": "fp32", **train}
    sft = {"sizes": ["tiny"], "val_fraction": 0.0, "samples": 0, "train": settings}
    pretrain = {"sizes": ["tiny"], "shapes": {"tiny": dict(SFT_SHAPE)}, "train": {"context": 32}}
    path.write_text(yaml.safe_dump({"seed": 7, "pretrain": pretrain, "sft": sft}))
    return path
