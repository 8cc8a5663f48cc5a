"""data/README.md: the dataset card of a run's stories, with Hugging Face YAML metadata.

Written by the dataset writer when `generate` or `import` finishes, from the stats it has just
computed and the models that wrote the kept stories, so `huggingface-cli upload` of data/ (or
`datasets.load_dataset("json", data_files="data/stories.jsonl")`) comes with what the data is.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from tinystories.io.layout import EOS
from tinystories.io.rundir import write_text
from tinystories.publish.cards import DEFAULT_LICENSE

IMPORTED = "imported"  # the origin of a story no model of ours wrote (tinystories import)
SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M"))


def size_category(n: int) -> str:
    """The Hub's size bucket of a dataset of `n` records."""
    return next((name for limit, name in SIZE_CATEGORIES if n < limit), "10M<n<100M")


def dataset_metadata(stats: dict, license: str) -> dict:
    return {
        "license": license,
        "language": ["en"],
        "task_categories": ["text-generation"],
        "pretty_name": "TinyStories-style synthetic stories",
        "size_categories": [size_category(stats["kept"])],
        "tags": ["tinystories", "synthetic", "children-stories"],
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "stories.jsonl"}]}],
    }


def _origin_line(origins: Counter) -> str:
    written = {k: v for k, v in origins.items() if k != IMPORTED}
    parts = [f"{v:,} written by `{k}`" for k, v in sorted(written.items())]
    if origins.get(IMPORTED):
        parts.append(f"{origins[IMPORTED]:,} imported from the author's own files (`tinystories import`)")
    return "; ".join(parts) or "none kept"


def dataset_card(stats: dict, origins: Counter, license: str = DEFAULT_LICENSE) -> str:
    """README.md text for data/ from the dataset stats (data/stats.json) and the story origins."""
    import yaml

    front = yaml.safe_dump(dataset_metadata(stats, license), sort_keys=False, width=1000)
    words = stats["words_per_story"]
    rejected = ", ".join(f"{k} {v:,}" for k, v in stats["rejected_by_reason"].items()) or "none"
    return f"""---
{front}---

# TinyStories-style synthetic stories

Short, simple English stories in the style of the TinyStories paper (Eldan and Li, 2023), made
with the tinystories toolkit: each generated story was asked to use a noun, a verb and an
adjective from a vocabulary a young child knows, and to show a few story features.

## Contents

- stories: {stats['kept']:,} ({_origin_line(origins)})
- rejected: {stats['rejected']:,} of {stats['attempted']:,} attempted ({rejected})
- words per story: mean {words['mean']}, median {words['median']}, p95 {words['p95']}
- distinct 1/2/3-grams: {stats['distinct_1']} / {stats['distinct_2']} / {stats['distinct_3']}
- exact / near duplicates removed: {stats['exact_duplicate_rate']:.1%} / {stats['near_duplicate_rate']:.1%}

## Files

- `stories.jsonl`: one story a line: `id`, `story`, and how it was made (`words`, `features`, `prompt`,
  `model`, `seed` for generated stories; `words_used` says which requested words appear).
- `tinystories_dataset.txt`: the stories as one text, separated by `{EOS}` (what the tokenizer trains on).
- `rejected.jsonl` (when a story was rejected): what the checks and the deduplication removed, each with its reason.
- `stats.json`: the numbers above and more.

Later stages add `train.bin` / `val.bin` (token ids, uint16) with `meta.json`, and
`instruction_dataset.jsonl` (instruction and story pairs for instruction tuning).

## Load it

```python
from datasets import load_dataset

stories = load_dataset("json", data_files="data/stories.jsonl", split="train")
```

## Limitations

The stories were written by a language model (or imported): they can repeat themselves, hold
mistakes, and the terms of use of the model that wrote them may apply to them.
"""


def write_dataset_card(path: Path, stats: dict, origins: Counter, license: str = DEFAULT_LICENSE) -> None:
    write_text(path, dataset_card(stats, origins, license))
