"""The instruction pairs as training examples: tokenized, masked, batched (for the sft stage).

Every pair is trained as `instruction_prompt(instruction) + story + <|endoftext|>` with the
loss on the story and its end token only. The prompt and the response are tokenized
separately and their ids concatenated, so the boundary is exact whatever BPE would merge
across it, and generation from a prompt sees the very same prompt ids.
"""

from __future__ import annotations

import hashlib
import logging
import math
from pathlib import Path
from typing import Any, Iterator

from tinystories.errors import UserError
from tinystories.io.layout import UINT16_VOCAB
from tinystories.text.prompts import instruction_prompt

ENCODE_CHUNK = 8192  # pairs tokenized per batch call

log = logging.getLogger("tinystories.train.sft")


def build_example(prompt_ids, story_ids, eos_id: int, context: int, dtype: str = "int32"):
    """One pair as (input_ids, n_prompt), cut to `context` tokens; None when no token is supervised.

    Kept compact (a numpy array and the prompt length; labels are made per batch by `collate`)
    because a paper-scale dataset has millions of pairs. Labels follow the transformers
    convention (same length as the inputs, shifted inside the model): label i is what the model
    must predict after positions < i, so the prompt's labels, the marker's included, are -100
    and the first story token is predicted from the marker's last token.
    """
    import numpy as np

    ids = np.asarray((list(prompt_ids) + list(story_ids) + [eos_id])[:context], dtype=dtype)
    n_prompt = len(prompt_ids)
    if n_prompt >= len(ids):
        return None
    return ids, n_prompt


def labels_of(example) -> list[int]:
    """The label list of an example: -100 over the prompt, the token ids over the story and eos."""
    ids, n_prompt = example
    return [-100] * n_prompt + [int(t) for t in ids[n_prompt:]]


def collate(examples, pad_id: int, pad_to: int | None = None):
    """(input_ids, labels) LongTensors right-padded to the longest example (or `pad_to`):
    inputs with `pad_id`, labels -100 on the prompt and on the padding.

    No attention mask is needed: attention is causal and the padding comes after every real
    token, so no real position can see a pad.
    """
    import numpy as np
    import torch

    T = pad_to or max(len(ids) for ids, _ in examples)
    inp = np.full((len(examples), T), pad_id, dtype=np.int64)
    lab = np.full((len(examples), T), -100, dtype=np.int64)
    for i, (ids, n_prompt) in enumerate(examples):
        inp[i, : len(ids)] = ids
        lab[i, n_prompt : len(ids)] = ids[n_prompt:]
    return torch.from_numpy(inp), torch.from_numpy(lab)


def supervised_fraction(labels) -> float:
    """Share of the batch's label positions that count in the loss (the shifted-out first one excluded)."""
    counted = (labels[:, 1:] != -100).sum().item()
    return counted / max(1, labels[:, 1:].numel())


def val_story_ids(story_ids, seed: int, val_fraction: float) -> set[str]:
    """The held-out stories: round(val_fraction * stories), at least one when there are two or
    more, picked by a seeded hash of the id. Split by story, so the instruction sets of one
    story never sit on both sides, and independent of the order of the file."""
    unique = sorted({str(i) for i in story_ids})
    if val_fraction <= 0 or len(unique) < 2:
        return set()
    k = min(len(unique) - 1, max(1, round(val_fraction * len(unique))))
    key = lambda sid: hashlib.sha256(f"{seed}:{sid}".encode()).digest()  # noqa: E731
    return set(sorted(unique, key=key)[:k])


# -- the instruction pairs ------------------------------------------------------------------------


def read_pairs(path: Path, limit: int = 0) -> list[dict]:
    """The (instruction, story, id) records, each checked; a torn last line is ignored."""
    from tinystories.io.rundir import read_jsonl_numbered

    pairs: list[dict] = []
    for lineno, rec in read_jsonl_numbered(path):
        if not isinstance(rec, dict) or not isinstance(rec.get("instruction"), str) or not isinstance(rec.get("story"), str):
            raise UserError(f"{path}:{lineno}: needs text fields 'instruction' and 'story'; rerun `tinystories instruct-data --force`")
        if not rec["story"].strip():
            raise UserError(f"{path}:{lineno}: empty 'story'; remove the line or rerun `tinystories instruct-data --force`")
        pairs.append({"instruction": rec["instruction"], "story": rec["story"].strip(), "id": rec.get("id", lineno)})
        if limit and len(pairs) >= limit:
            break
    return pairs


def encode_pairs(tokenizer, pairs: list[dict], context: int) -> tuple[list, dict]:
    """Tokenize every pair (prompt and story separately) into an (input_ids, n_prompt) example.

    Returns one entry per pair (None where the prompt fills the context, so no token is
    supervised) and counts: skipped, truncated (story cut by the context), tokens and
    supervised tokens.
    """
    raw = tokenizer.backend_tokenizer  # batch encoding in Rust on all cores
    eos = tokenizer.eos_token_id
    if eos is None:
        raise UserError("sft: the checkpoint's tokenizer has no end-of-text token; use a tokenizer from `tinystories tokenizer`")
    examples: list = []
    counts = {"pairs": len(pairs), "skipped_no_supervised_token": 0, "truncated": 0, "tokens": 0, "supervised_tokens": 0}
    dtype = "uint16" if raw.get_vocab_size() <= UINT16_VOCAB else "int32"

    def encoded() -> Iterator[tuple[dict, Any, Any]]:
        # In chunks: an Encoding carries tokens, offsets and masks besides the ids, far too
        # much to hold for millions of pairs at once.
        for start in range(0, len(pairs), ENCODE_CHUNK):
            chunk = pairs[start : start + ENCODE_CHUNK]
            prompts = raw.encode_batch([instruction_prompt(p["instruction"]) for p in chunk], add_special_tokens=False)
            stories = raw.encode_batch([p["story"] for p in chunk], add_special_tokens=False)
            yield from zip(chunk, prompts, stories)

    for _, p, st in encoded():
        ex = build_example(p.ids, st.ids, eos, context, dtype)
        examples.append(ex)
        if ex is None:
            counts["skipped_no_supervised_token"] += 1
            continue
        if len(p.ids) + len(st.ids) + 1 > context:
            counts["truncated"] += 1
        counts["tokens"] += len(ex[0])
        counts["supervised_tokens"] += len(ex[0]) - len(p.ids)  # story tokens kept, plus the end token when it fits
    return examples, counts


# -- batch sources for the shared trainer ----------------------------------------------------------


class PairBatches:
    """Training batches: epochs of seeded permutations of the examples, cut into micro-batches.

    `batch(step, micro, rank, world)` is a pure function of its arguments (the trainer resumes
    by step alone): micro-batch g = (step * grad_accum + micro) * world + rank takes examples
    g*B .. g*B+B-1 of the endless sequence perm(epoch 0), perm(epoch 1), ...
    """

    def __init__(self, examples, batch_size: int, grad_accum: int, seed: int, pad_id: int, pad_to: int | None = None, log_interval: int = 0, name: str = "sft"):
        self.examples, self.batch_size, self.grad_accum = examples, batch_size, grad_accum
        self.seed, self.pad_id, self.pad_to = seed, pad_id, pad_to
        self.log_interval, self.name = log_interval, name
        self._perm_epoch, self._perm = -1, None

    def _perm_for(self, epoch: int):
        import numpy as np

        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.examples))
            self._perm_epoch = epoch
        return self._perm

    def indices(self, step: int, micro: int, rank: int, world: int) -> list[int]:
        n = len(self.examples)
        g = (step * self.grad_accum + micro) * world + rank
        out = []
        for k in range(g * self.batch_size, (g + 1) * self.batch_size):
            out.append(int(self._perm_for(k // n)[k % n]))
        return out

    def batch(self, step: int, micro: int, rank: int, world: int):
        x, y = collate([self.examples[i] for i in self.indices(step, micro, rank, world)], self.pad_id, self.pad_to)
        if self.log_interval and micro == 0 and rank == 0 and (step + 1) % self.log_interval == 0:
            log.info("%s step %d: supervised fraction %.3f of %d x %d tokens", self.name, step + 1, supervised_fraction(y), *y.shape)
        return x, y

    def fraction_stats(self, max_steps: int, world: int) -> dict:
        """Supervised share of every padded micro-batch of the run, from lengths alone (the
        batches are a pure function of their position, so this needs no forward pass)."""
        lengths = [len(ids) for ids, _ in self.examples]
        supervised = [len(ids) - n_prompt for ids, n_prompt in self.examples]  # n_prompt >= 1: label 0 is never counted
        fracs = []
        for step in range(max_steps):
            for micro in range(self.grad_accum):
                for rank in range(world):
                    idx = self.indices(step, micro, rank, world)
                    T = self.pad_to or max(lengths[i] for i in idx)
                    fracs.append(sum(supervised[i] for i in idx) / (len(idx) * max(1, T - 1)))
        if not fracs:
            return {}
        return {"mean": round(sum(fracs) / len(fracs), 4), "min": round(min(fracs), 4), "max": round(max(fracs), 4)}


class ValPairs:
    """Validation batches: every held-out example once, sorted by length so padding is small."""

    def __init__(self, examples, batch_size: int, pad_id: int, pad_to: int | None = None):
        self.examples = sorted(examples, key=lambda ex: len(ex[0]))
        self.batch_size, self.pad_id, self.pad_to = batch_size, pad_id, pad_to

    @property
    def n_batches(self) -> int:
        return math.ceil(len(self.examples) / self.batch_size)

    def batch(self, i: int):
        return collate(self.examples[i * self.batch_size : (i + 1) * self.batch_size], self.pad_id, self.pad_to)
