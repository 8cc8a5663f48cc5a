"""What a training run logs besides its checkpoints: metrics.jsonl rows, TensorBoard scalars
and a few text samples per evaluation (used by train/trainer.py, main process only).

metrics.jsonl has one schema: every row carries every key of METRIC_KEYS, a value that is
absent on that step (validation between evaluations, a NaN loss without validation data) is
null, so `datasets` and pandas read the file as plain columns. TensorBoard gets the same
numbers under `train/...` and `val/...` tags (TB_TAGS), so its dashboard keeps the two apart.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

from tinystories.io.rundir import JsonlWriter, read_jsonl, rewrite_jsonl, schema_row
from tinystories.train.checkpoint_files import METRICS_FILE, truncate_metrics

# The keys of every metrics.jsonl row, in the order they are written.
METRIC_KEYS = ("step", "train_loss", "train_bpb", "lr", "tokens", "tok_s", "grad_norm", "time_s", "val_loss", "val_bpb")
# metrics.jsonl key -> TensorBoard tag.
TB_TAGS = {
    "train_loss": "train/loss",
    "train_bpb": "train/bpb",
    "lr": "train/lr",
    "tok_s": "train/tokens_per_s",
    "grad_norm": "train/grad_norm",
    "val_loss": "val/loss",
    "val_bpb": "val/bpb",
}
# Fixed story beginnings of the text samples: the same at every evaluation, so samples show
# what the model learned between them (TrainArgs.eval_samples takes the first N).
SAMPLE_BEGINNINGS = ("Once upon a time", "One day, a little", "Tom and his mom", "The big dog")
SAMPLE_TOKENS = 40  # new tokens per text sample: a sentence or two, cheap next to validation


def finite_or_none(value):
    """NaN or infinity as None: JSON has no NaN, and null reads as a missing value everywhere."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def metrics_row(**values) -> dict:
    """One metrics.jsonl row with every key of METRIC_KEYS (absent or non-finite ones None)."""
    return {k: finite_or_none(v) for k, v in schema_row(values, METRIC_KEYS, "METRIC_KEYS").items()}


def _upgrade_rows(path: Path) -> None:
    """Give the rows a resumed run keeps every key of METRIC_KEYS (a run begun before the file
    had one schema lacks the val keys on most rows), and leave no empty file."""
    if not path.exists():
        return
    rows = list(read_jsonl(path))
    if not rows:
        path.unlink()
    elif any(set(row) != set(METRIC_KEYS) for row in rows):
        rewrite_jsonl(path, [metrics_row(**{k: row.get(k) for k in METRIC_KEYS}) for row in rows])


class TrainingLog:
    """metrics.jsonl and tb/ of one run directory, continued from `start_step`."""

    def __init__(self, out_dir: Path, start_step: int):
        from torch.utils.tensorboard import SummaryWriter

        out_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = out_dir / METRICS_FILE
        truncate_metrics(self.metrics_path, start_step)
        _upgrade_rows(self.metrics_path)
        if start_step == 0:
            # Events of a run killed before its first checkpoint would duplicate steps.
            shutil.rmtree(out_dir / "tb", ignore_errors=True)
        # purge_step drops TensorBoard events past the checkpoint, like truncate_metrics.
        self.tb = SummaryWriter(str(out_dir / "tb"), purge_step=start_step + 1 if start_step else None)
        self._rows = None  # the metrics.jsonl appender, opened with the first row: no empty file

    def write(self, row: dict) -> None:
        """A metrics.jsonl row and its values as TensorBoard scalars."""
        if self._rows is None:
            self._rows = JsonlWriter(self.metrics_path, sync_every=10)
        self._rows.write(row)
        for key, tag in TB_TAGS.items():
            if row.get(key) is not None:
                self.tb.add_scalar(tag, row[key], row["step"])

    def samples(self, texts: list[str], step: int) -> None:
        for i, text in enumerate(texts):
            self.tb.add_text(f"samples/{i}", text, step)

    def close(self) -> None:
        if self._rows is not None:
            self._rows.close()
        self.tb.close()


class TextSamples:
    """Greedy continuations of the first `n` SAMPLE_BEGINNINGS, each after the end-of-text
    token when there is one (in training every story follows one). Greedy: no random numbers
    drawn, so sampling leaves the training run's RNG state (and its resume) untouched."""

    def __init__(self, tokenizer_dir, eos_token_id: int | None, n: int):
        from tinystories.train.bpe import load_tokenizer

        self.tokenizer = load_tokenizer(tokenizer_dir)
        self.eos = eos_token_id
        start = [eos_token_id] if eos_token_id is not None else []
        self.prompts = [(text, start + self.tokenizer(text, add_special_tokens=False).input_ids) for text in SAMPLE_BEGINNINGS[:n]]

    def generate(self, model, device) -> list[str]:
        """Each beginning followed by its continuation, as text."""
        return [text + self.tokenizer.decode(greedy_continuation(model, ids, SAMPLE_TOKENS, self.eos, device)) for text, ids in self.prompts]


def greedy_continuation(model, prompt: list[int], max_new_tokens: int, eos_token_id: int | None, device) -> list[int]:
    """Up to `max_new_tokens` greedy tokens after `prompt` from a FastGPTNeo (no KV cache: a
    few dozen short forwards cost less than one validation batch); stops at the eos."""
    import torch

    ids = list(prompt)
    window = model.shape.max_position
    with torch.no_grad():
        for _ in range(max_new_tokens):
            x = torch.tensor([ids[-window:]], dtype=torch.long, device=device)
            token = int(model(x)[0, -1].argmax())
            if token == eos_token_id:
                break
            ids.append(token)
    return ids[len(prompt):]
