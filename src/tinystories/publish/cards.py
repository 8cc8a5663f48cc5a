"""A checkpoint's model card: README.md with Hugging Face YAML metadata, and the chat template
of instruct checkpoints.

    publish_checkpoint(ckpt_dir, metrics_path)   # what the trainer calls for every checkpoint
    write_model_card(ckpt_dir, out_dir=..., license=..., model_id=...)   # what export calls

Everything on the card comes from the checkpoint's own files: config.json and the weights (the
real parameter count), tinystories.json (stage, preset, settings, data, prompt format) and
metrics.jsonl (tokens seen, the last validation loss and bits per byte), so the card of an
exported or copied checkpoint says what the trainer said.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from tinystories.io.layout import CHECKPOINT_INFO, EOS, METRICS_FILE
from tinystories.io.rundir import read_json, read_jsonl, write_text
from tinystories.text.prompts import SFT_FORMAT_VERSION, instruction_chat_template, sft_example
from tinystories.train.shapes import PRESETS

MODEL_CARD = "README.md"
CHAT_TEMPLATE_FILE = "chat_template.jinja"  # where transformers 5 saves and loads a chat template
TOKENIZER_CONFIG = "tokenizer_config.json"
DEFAULT_LICENSE = "mit"  # the toolkit's license; export --license names another
EMBEDDINGS = ("transformer.wte.weight", "transformer.wpe.weight", "lm_head.weight")
EXAMPLE_INSTRUCTION = "Words: dog, ball"


# --- facts from the checkpoint's files ------------------------------------------------------------


def count_weights(weights: Path, tied: bool) -> tuple[int, int]:
    """(parameters, parameters without token and position embeddings) of a safetensors file,
    read from the tensor shapes; a tied output layer is the embedding, counted once."""
    from safetensors import safe_open

    total = non_embedding = 0
    with safe_open(str(weights), framework="np") as fh:
        for name in fh.keys():
            if tied and name == "lm_head.weight":
                continue
            n = math.prod(fh.get_slice(name).get_shape())
            total += n
            non_embedding += 0 if name in EMBEDDINGS else n
    return total, non_embedding


def _finite(value):
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def read_metrics(path: Path | None) -> dict:
    """Tokens seen and training loss at the last logged step, and the last validation, of a metrics.jsonl."""
    rows = list(read_jsonl(path)) if path is not None and path.is_file() else []
    last = rows[-1] if rows else {}
    val = next((r for r in reversed(rows) if _finite(r.get("val_loss")) is not None), {})
    return {
        "training_tokens": last.get("tokens"),
        "train_loss": _finite(last.get("train_loss")),
        "val_loss": _finite(val.get("val_loss")),
        "val_bpb": _finite(val.get("val_bpb")),
        "val_step": val.get("step"),
    }


def checkpoint_facts(ckpt_dir: Path, metrics_path: Path | None = None, name: str | None = None) -> dict:
    """What the card states, gathered from the files of `ckpt_dir` (metrics from `metrics_path`,
    default the checkpoint's own metrics.jsonl); `name` is the checkpoint's directory name
    when `ckpt_dir` is the temp dir it is assembled in."""
    name = name or ckpt_dir.name
    config = read_json(ckpt_dir / "config.json")
    info = read_json(ckpt_dir / CHECKPOINT_INFO) if (ckpt_dir / CHECKPOINT_INFO).is_file() else {}
    params, non_embedding = count_weights(ckpt_dir / "model.safetensors", bool(config.get("tie_word_embeddings", True)))
    stage = info.get("stage", "pretrain")
    settings = info.get("settings") or info.get("sft") or {}
    step, max_steps = info.get("step"), settings.get("max_steps")
    return {
        "name": name,
        "stage": stage,
        "preset": info.get("size") or name,
        "base": _base_name(info.get("base")),
        "parameters": params,
        "parameters_non_embedding": non_embedding,
        "vocab_size": config.get("vocab_size"),
        "hidden_size": config.get("hidden_size"),
        "num_layers": config.get("num_layers"),
        "num_heads": config.get("num_heads"),
        "window_size": config.get("window_size"),
        "max_position": config.get("max_position_embeddings"),
        "attention_layers": config.get("attention_layers"),
        "context": settings.get("context"),
        "step": step,
        "max_steps": max_steps,
        "finished": step is not None and max_steps is not None and step >= max_steps,
        "settings": {k: settings[k] for k in ("batch_size", "grad_accum", "lr", "min_lr", "warmup_steps", "schedule", "weight_decay", "dtype", "seed") if k in settings},
        "data": info.get("data") or {},
        "prompt_format": info.get("prompt_format") or (sft_example("{instruction}", "{story}") if stage == "sft" else "{story}" + EOS),
        **read_metrics(metrics_path if metrics_path is not None else ckpt_dir / METRICS_FILE),
    }


def _base_name(base: str | None) -> str | None:
    """The base checkpoint as the card shows it: a run-relative name as is, a path by its last
    part (the card may be published; the author's directories are not part of it)."""
    if not base:
        return None
    return base if not Path(base).is_absolute() else Path(base).name


# --- the card ---------------------------------------------------------------------------------------


def card_metadata(f: dict, license: str) -> dict:
    """The YAML front matter: what the Hub indexes (library, task, license, language, tags,
    model-index results) and the facts under `tinystories` for tools that compare runs."""
    meta = {
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "license": license,
        "language": ["en"],
        "tags": ["tinystories", "gpt-neo", "stories", *(["instruction-tuned"] if f["stage"] == "sft" else [])],
    }
    metrics = [
        {"type": "loss", "name": "validation loss (nats/token)", "value": f["val_loss"]},
        {"type": "bits_per_byte", "name": "validation bits per byte", "value": f["val_bpb"]},
    ]
    metrics = [m for m in metrics if m["value"] is not None]
    if metrics:
        held_out = "held-out instruction pairs" if f["stage"] == "sft" else "held-out stories"
        meta["model-index"] = [{
            "name": _title(f),
            "results": [{
                "task": {"type": "text-generation", "name": "Story generation"},
                "dataset": {"type": "tinystories-run", "name": f"{held_out} of the training run"},
                "metrics": metrics,
            }],
        }]
    meta["tinystories"] = {
        k: f[k]
        for k in ("stage", "preset", "base", "parameters", "parameters_non_embedding", "vocab_size", "training_tokens",
                  "step", "max_steps", "finished", "val_loss", "val_bpb", "data", "prompt_format")
        if f[k] is not None
    }
    if f["stage"] == "sft":
        meta["tinystories"]["prompt_format_version"] = SFT_FORMAT_VERSION
    return meta


def _title(f: dict) -> str:
    return f"TinyStories {f['preset']}" + (" (instruction-tuned)" if f["stage"] == "sft" else "")


def _millions(n: int | None) -> str:
    return f"{n / 1e6:.2f}M" if n is not None else "unknown"


def model_card(f: dict, license: str = DEFAULT_LICENSE, model_id: str | None = None) -> str:
    """README.md for a checkpoint with facts `f` (checkpoint_facts)."""
    import yaml

    front = yaml.safe_dump(card_metadata(f, license), sort_keys=False, allow_unicode=True, width=1000)
    sections = [f"---\n{front}---", f"# {_title(f)}", _summary(f), _usage(f, model_id or "PATH_TO_THIS_DIRECTORY"),
                _prompt_section(f), _model_section(f), _training_section(f), _evaluation_section(f), _limits()]
    return "\n\n".join(sections) + "\n"


def _summary(f: dict) -> str:
    what = "tuned to write a story that follows an instruction" if f["stage"] == "sft" else "pretrained to continue a story"
    state = "" if f["finished"] else f" This checkpoint is not final: step {f['step']} of {f['max_steps']}."
    return (
        f"A {_millions(f['parameters'])}-parameter GPT-Neo language model {what}, trained from scratch with the "
        "tinystories toolkit on simple synthetic children's stories, after the TinyStories paper "
        f"(Eldan and Li, 2023).{state}"
    )


def _usage(f: dict, model_id: str) -> str:
    if f["stage"] == "sft":
        call = f'messages = [{{"role": "user", "content": {json.dumps(EXAMPLE_INSTRUCTION)}}}]\nprint(generator(messages, max_new_tokens=200)[0]["generated_text"][-1]["content"])'
    else:
        call = 'print(generator("Once upon a time", max_new_tokens=200)[0]["generated_text"])'
    return f'## Use it\n\n```python\nfrom transformers import pipeline\n\ngenerator = pipeline("text-generation", model={json.dumps(model_id)})\n{call}\n```'


def _prompt_section(f: dict) -> str:
    fence = "```"
    if f["stage"] != "sft":
        return (
            "## Prompt format\n\nPlain text: give the beginning of a story and the model continues it. "
            f"Training text is stories separated by `{EOS}`, so the model ends a story with that token.\n\n"
            f"{fence}text\n{f['prompt_format']}\n{fence}"
        )
    return (
        f"## Prompt format\n\nThe instruction format ({SFT_FORMAT_VERSION}); the loss was on the story and its end token only:\n\n"
        f"{fence}text\n{f['prompt_format']}\n{fence}\n\n"
        "The instruction holds any of the lines `Words: ...` (words the story must use), `Features: ...` (e.g. dialogue, "
        "a twist), `Summary: ...` (the plot) and `Sentence: ...` (a sentence the story must contain). "
        f"The tokenizer's chat template renders a user message as this prompt, so "
        f"`tokenizer.apply_chat_template(messages, add_generation_prompt=True)` and the chat call above give the model "
        "exactly the text it was tuned on; a system message is refused (it never saw one)."
    )


def _model_section(f: dict) -> str:
    rows = [
        ("parameters", f"{f['parameters']:,} ({f['parameters_non_embedding']:,} without token and position embeddings)"),
        ("vocabulary", f"{f['vocab_size']:,} tokens (byte-level BPE trained on the stories)"),
        ("width x layers x heads", f"{f['hidden_size']} x {f['num_layers']} x {f['num_heads']}"),
        ("attention", f"{', '.join(f['attention_layers'] or [])} (local window {f['window_size']})"),
        ("context", f"trained on {f['context']} tokens; position table {f['max_position']}"),
    ]
    table = "\n".join(["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])
    embedded = 1 - f["parameters_non_embedding"] / f["parameters"]
    named = "the paper's name for a model of this width and depth" if f["preset"] in PRESETS else "the name of a shape defined in the run's config"
    return (
        f"## Model\n\n{table}\n\n"
        f"The preset name `{f['preset']}` is {named}, not a parameter count: "
        f"this model has {_millions(f['parameters'])} parameters, {embedded:.0%} of them in the token and position "
        f"embeddings, whose size follows the vocabulary ({f['vocab_size']:,} tokens here; the paper's models use "
        f"GPT-Neo's 50,257) and the position table ({f['max_position']:,} positions)."
    )


def _training_section(f: dict) -> str:
    lines = ["## Training", ""]
    if f["base"]:
        lines.append(f"- tuned from: `{f['base']}`")
    lines.append(f"- steps: {f['step']} of {f['max_steps']}" + ("" if f["finished"] else " (not finished)"))
    tokens = f["training_tokens"]
    lines.append(f"- tokens processed: {tokens:,}" + (" (prompts and padding included)" if f["stage"] == "sft" else "") if tokens is not None else "- tokens processed: not logged")
    data = f["data"]
    if data:
        lines.append("- data: " + ", ".join(f"{k.replace('_', ' ')} {v:,}" if isinstance(v, int) else f"{k.replace('_', ' ')} {v}" for k, v in data.items()))
    if f["settings"]:
        lines.append("- settings: " + ", ".join(f"{k} {v}" for k, v in f["settings"].items()))
    return "\n".join(lines)


def _evaluation_section(f: dict) -> str:
    if f["val_loss"] is None:
        return "## Evaluation\n\nNo validation loss was logged (the run held out no data)."
    held_out = "held-out instruction pairs (response tokens only)" if f["stage"] == "sft" else "held-out validation stories"
    lines = [f"## Evaluation\n\nOn {held_out}, at step {f['val_step']}:", "",
             f"- validation loss: {f['val_loss']:.4f} nats/token", f"- validation bits per byte: {f['val_bpb']:.4f}" if f["val_bpb"] is not None else "- validation bits per byte: not logged"]
    if f["train_loss"] is not None:
        lines.append(f"- last training loss: {f['train_loss']:.4f} nats/token")
    lines.append("\nBits per byte divide the loss by the UTF-8 bytes of the scored text, so they compare models with different tokenizers.")
    return "\n".join(lines)


def _limits() -> str:
    return (
        "## Limitations\n\nA small model for simple English children's stories: it knows little outside them, makes "
        "mistakes of logic and grammar, and had no safety tuning. Its data was written by a language model, whose "
        "terms of use may apply to the stories and so to this model."
    )


# --- writing -----------------------------------------------------------------------------------------


def write_model_card(ckpt_dir: Path, out_dir: Path | None = None, metrics_path: Path | None = None, license: str = DEFAULT_LICENSE,
                     model_id: str | None = None, name: str | None = None) -> Path:
    """README.md for the checkpoint in `ckpt_dir`, written (atomically) into `out_dir` (default the checkpoint)."""
    path = Path(out_dir or ckpt_dir) / MODEL_CARD
    write_text(path, model_card(checkpoint_facts(Path(ckpt_dir), metrics_path, name), license, model_id))
    return path


def add_chat_template(ckpt_dir: Path) -> None:
    """The instruction format as the tokenizer's chat template: chat_template.jinja (what
    transformers 5 reads) and the `chat_template` key of tokenizer_config.json (what 4.x reads)."""
    template = instruction_chat_template()
    write_text(ckpt_dir / CHAT_TEMPLATE_FILE, template)
    config_path = ckpt_dir / TOKENIZER_CONFIG
    config = read_json(config_path) if config_path.is_file() else {}
    config["chat_template"] = template
    write_text(config_path, json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def publish_checkpoint(ckpt_dir: Path, metrics_path: Path | None = None, name: str | None = None) -> None:
    """The publishing files of a checkpoint being written (in `ckpt_dir`, for the checkpoint
    directory `name`): the chat template (sft) and the card."""
    info = read_json(ckpt_dir / CHECKPOINT_INFO) if (ckpt_dir / CHECKPOINT_INFO).is_file() else {}
    if info.get("stage") == "sft":
        add_chat_template(ckpt_dir)
    write_model_card(ckpt_dir, metrics_path=metrics_path, name=name)
