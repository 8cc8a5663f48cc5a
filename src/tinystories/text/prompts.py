"""Every prompt format the toolkit writes or reads, each with its version.

A version is part of every cache key and fingerprint that depends on the format, so editing a
template here invalidates exactly the answers and checkpoints it changes.
Sections: the instruction-tuning format (SFT and completion), then the story, summary and
judge templates.
"""

from __future__ import annotations

from tinystories.io.layout import EOS

# --- instruction tuning (phase 4) and instruct completions (phase 5) ------------------------

SFT_FORMAT_VERSION = "sft-v1"
INSTRUCTION_MARKER = "### Instruction:\n"
RESPONSE_MARKER = "### Response:\n"


def instruction_prompt(instruction: str) -> str:
    """The text an instruct model sees before its story: the paper's instruction format."""
    return f"{INSTRUCTION_MARKER}{instruction}\n\n{RESPONSE_MARKER}"


def sft_example(instruction: str, story: str) -> str:
    """One whole training example as text: prompt, the story (the supervised part), end-of-text."""
    return instruction_prompt(instruction) + story + EOS
