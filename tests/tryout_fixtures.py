"""A run directory with two tiny random checkpoints, pretrain/tiny and sft/tiny, for sample and serve.

Random weights are enough: these tests check framing, seeding and plumbing, not story quality.
The checkpoints are test_complete's (a GPT-Neo with a 256-token context and its own tokenizer).
"""

from __future__ import annotations

from pathlib import Path

from test_complete import make_model_dir, make_tokenizer

MODELS = ("pretrain/tiny", "sft/tiny")
CONTEXT = 256  # test_complete's tiny_config: max_position_embeddings


def make_tryout_run(root: Path) -> Path:
    """root/ with tokenizer/, pretrain/tiny/ and sft/tiny/ (different weights)."""
    (root / "tokenizer").mkdir(parents=True)
    make_tokenizer(root / "tokenizer")
    for seed, name in enumerate(MODELS):
        make_model_dir(root / name, seed)
    return root
