"""The byte-level BPE tokenizer's files: saving, loading and what a token is worth in bytes.

The tokenizer stage writes tokenizer/ with `save_tokenizer`; prepare, sft (and anyone else)
load it with `load_tokenizer` / `load_raw_tokenizer`. A non-stage module, so those stages do
not import the tokenizer stage.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from tinystories.errors import UserError
from tinystories.io.layout import EOS, TOKENIZER_DIR
from tinystories.io.rundir import RunDir

SPECIAL_TOKENS = [EOS]
# The files of a tokenizer directory (and of a checkpoint, which carries a copy).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def new_tokenizer():
    """An untrained GPT-2 style byte-level BPE: no prefix space, so decode(encode(t)) == t."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # Offsets only; it adds no tokens (eos is appended by the prepare stage, not on every encode,
    # so prompts given to the model at generation time are not terminated by accident).
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def wrap_fast(tok):
    """A transformers `PreTrainedTokenizerFast` around a `tokenizers.Tokenizer`."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS,
        bos_token=EOS,
        unk_token=EOS,
        pad_token=EOS,
        add_prefix_space=False,
        clean_up_tokenization_spaces=False,
        model_max_length=1 << 30,
    )


def save_tokenizer(tok, directory: str | os.PathLike) -> None:
    """Write the HF tokenizer files into `directory`, replacing it as a whole.

    The files are written to a fresh sibling directory which is then swapped in, so readers
    never see a mix of an old tokenizer.json and a new tokenizer_config.json.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent))
    old = None
    try:
        fast = wrap_fast(tok)
        fast.save_pretrained(str(tmp))
        # transformers 5 writes its internal class name; the public alias loads in 4.x and 5.x alike.
        config_path = tmp / "tokenizer_config.json"
        tok_config = json.loads(config_path.read_text(encoding="utf-8"))
        tok_config["tokenizer_class"] = "PreTrainedTokenizerFast"
        config_path.write_text(json.dumps(tok_config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        # transformers 5 no longer writes special_tokens_map.json; older loaders and tools read it.
        specials = {"bos_token": EOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
        (tmp / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n", encoding="utf-8")
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old.{os.getpid()}")
            os.replace(directory, old)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not directory.exists():
            os.replace(old, directory)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def tokenizer_dir(rundir_or_path) -> Path:
    """The directory holding tokenizer.json for a RunDir, run directory, tokenizer or
    checkpoint directory, or the path of tokenizer.json itself."""
    p = Path(rundir_or_path.root if isinstance(rundir_or_path, RunDir) else rundir_or_path)
    if p.is_file():
        return p.parent
    if (p / "tokenizer.json").exists():
        return p
    return p / TOKENIZER_DIR


def load_tokenizer(rundir_or_path):
    """The trained tokenizer as a `PreTrainedTokenizerFast`.

    Accepts a RunDir, a run directory, a tokenizer directory (or a checkpoint directory
    holding the copied tokenizer files) or the path of tokenizer.json itself.
    """
    from transformers import PreTrainedTokenizerFast

    d = tokenizer_dir(rundir_or_path)
    if not (d / "tokenizer.json").exists():
        raise UserError(f"{d / 'tokenizer.json'}: tokenizer not found; run `tinystories tokenizer --run-dir RUN` first")
    if (d / "tokenizer_config.json").exists():
        return PreTrainedTokenizerFast.from_pretrained(str(d))
    return wrap_fast(load_raw_tokenizer(d))


def load_raw_tokenizer(rundir_or_path):
    """The bare `tokenizers.Tokenizer` (fast batch encoding without the transformers layer)."""
    from tokenizers import Tokenizer

    d = tokenizer_dir(rundir_or_path)
    path = d / "tokenizer.json"
    if not path.exists():
        raise UserError(f"{path}: tokenizer not found; run `tinystories tokenizer --run-dir RUN` first")
    return Tokenizer.from_file(str(path))


def token_byte_lengths(raw_tokenizer, vocab_size: int | None = None) -> list[int]:
    """UTF-8 bytes each token id stands for (special tokens: 0), indexed by id.

    Summed over the tokens a loss was computed on, this gives the bytes of exactly that text,
    so bits per byte needs no split-wide average. For byte-level BPE a token's string holds one
    alphabet character per byte; a character outside that alphabet (a tokenizer of another
    kind) counts its own UTF-8 length. Ids past the tokenizer's vocabulary (a model's padded
    embedding table) get 0.
    """
    from tokenizers import pre_tokenizers

    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    special = {t.content for t in raw_tokenizer.get_added_tokens_decoder().values() if t.special}
    n = max(vocab_size or 0, raw_tokenizer.get_vocab_size())
    out = [0] * n
    for token, i in raw_tokenizer.get_vocab(with_added_tokens=True).items():
        if token not in special and i < n:
            out[i] = sum(1 if ch in alphabet else len(ch.encode("utf-8")) for ch in token)
    return out


def bytes_per_token(tok, stories: list[str]) -> float:
    """UTF-8 bytes per token of `stories` (the tokenizer's compression)."""
    if not stories:
        return 0.0
    encs = tok.encode_batch_fast(stories, add_special_tokens=False)
    n_tokens = sum(len(e.ids) for e in encs)
    n_bytes = sum(len(s.encode("utf-8")) for s in stories)
    return n_bytes / max(1, n_tokens)
