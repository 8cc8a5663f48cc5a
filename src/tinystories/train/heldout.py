"""The validation stories, shared by pretraining and SFT so neither validates on trained text.

prepare picks the validation stories and writes their keys to data/val_stories.json; sft
holds out exactly the instruction pairs whose story is one of them. Were sft to draw its own
split, almost every held-out SFT story would be a pretraining training story (the model has
seen it), and the SFT validation loss would look better than it is.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from tinystories.errors import UserError
from tinystories.io.rundir import read_json, write_json


def story_key(story: str) -> str:
    """A short stable key of a story's text (whitespace around it ignored)."""
    return hashlib.sha256(story.strip().encode("utf-8")).hexdigest()[:16]


def write_val_stories(path: str | Path, keys: list[str]) -> None:
    write_json(path, {"note": "story_key (sha256[:16] of the stripped text) of every validation story of data/val.bin", "keys": sorted(keys)})


def read_val_stories(path: str | Path) -> set[str] | None:
    """The keys prepare recorded, or None when the run has no such file (data not prepared here)."""
    path = Path(path)
    if not path.exists():
        return None
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise UserError(f"{path}: not a list of validation story keys; rerun `tinystories prepare --force`")
    return set(data["keys"])
