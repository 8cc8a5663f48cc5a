"""Every run-directory path and the constants that several stages share.

A stage names its inputs and outputs with these constants and nothing else, so the contract
between stages (see docs/architecture.md) is readable in one place.
"""

from __future__ import annotations

# Run-dir bookkeeping.
LOCK = ".lock"
CONFIG = "config.yaml"
MANIFEST = "manifest.json"
LOGS_DIR = "logs"
LLM_CACHE_DIR = "cache/llm"  # what make_client gets: the answer cache lives in it
LLM_CACHE = "cache/llm/responses.sqlite"

# Phase 1: vocabulary and stories.
VOCABULARY = "data/vocabulary.json"
STORIES = "data/stories.jsonl"
REJECTED = "data/rejected.jsonl"
STORY_STATS = "data/stats.json"
DATASET_CARD = "data/README.md"  # the dataset card (Hugging Face metadata), written with the story file
STORY_FILE = "data/tinystories_dataset.txt"
GENERATE_STATE = "data/.generate_state.json"
GENERATE_BATCH = "data/.generate_batch.json"  # the OpenAI Batch API job of generate.batch_api, so a rerun resumes it
IMPORT_STATE = "data/.import_state.json"

# Phase 2: tokenizer and token files.
TOKENIZER_DIR = "tokenizer"
TOKENIZER_JSON = "tokenizer/tokenizer.json"
TRAIN_BIN = "data/train.bin"
VAL_BIN = "data/val.bin"
META = "data/meta.json"
VAL_STORIES = "data/val_stories.json"  # keys of the validation stories, so sft holds out the same ones
PRETRAIN_DIR = "pretrain"

# Phase 3-4: instruction data and tuning.
INSTRUCTIONS = "data/instruction_dataset.jsonl"
INSTRUCT_FAILED = "data/instruct_failed.jsonl"
INSTRUCT_STATS = "data/instruct_stats.json"
INSTRUCT_PROGRESS = "data/instruct_progress.json"  # fingerprint of the run the *.partial files belong to
SFT_DIR = "sft"

# Phase 5: evaluation and report.
COMPLETIONS = "eval/completions.jsonl"
EVAL_MODELS = "eval/models.json"
JUDGMENTS = "eval/judgments.jsonl"
SCORES = "eval/scores.json"
RESULTS = "report/results.md"
REPORT_DIR = "report"

# The end-of-text token: separates stories in the story file and ends every training example.
EOS = "<|endoftext|>"

# data/*.bin hold uint16 token ids (0..65535), so a vocabulary has at most this many tokens.
UINT16_VOCAB = 1 << 16

# Files a checkpoint directory holds besides the Hugging Face weights and config.
TRAIN_STATE = "train_state.pt"
CHECKPOINT_INFO = "tinystories.json"
METRICS_FILE = "metrics.jsonl"  # one record per logged training step


def checkpoint_dir(kind: str, size: str) -> str:
    """`pretrain/8M` or `sft/8M`: where a trained model of that kind and size lives."""
    return f"{kind}/{size}"
