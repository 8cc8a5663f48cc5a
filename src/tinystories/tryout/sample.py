"""One completion from one run model, framed and sampled exactly as the evaluation does.

    models = load_models(Path("runs/quickstart"), ["pretrain/8M", "sft/8M"])
    done = sample_one(models[0], Prompt("Once upon a time"), Sampling(seed=1), on_text=print)

Framing follows eval/complete.py, so what you try is what gets graded: a beginning follows the
end-of-text token, as every training story does; an instruction is wrapped in the SFT format
(text/prompts.py `instruction_prompt`, tokenized without a leading eos, as sft.py does) for
instruct models (sft/<size>) only. A base model never saw that format, so it gets the bare
instruction text as a plain beginning instead.

Sampling is the evaluation's sampler (eval/sampler.py: nucleus sampling, KV cache, one seed per
row). The seed of a completion is derived from --seed and the prompt, not from its position,
so a prompt gives the same story whichever other prompts or models share the command, and
every model draws from the same random stream.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from tinystories.errors import UserError
from tinystories.io.layout import PRETRAIN_DIR, SFT_DIR
from tinystories.pipeline.ids import derive_seed
from tinystories.text.prompts import instruction_prompt

# A run model's kind from its top directory, named as eval/complete.py names them.
MODEL_KINDS = {PRETRAIN_DIR: "base", SFT_DIR: "instruct"}

PLAIN, INSTRUCTION_FORMAT = "plain text", "instruction format"


@dataclass
class Sampling:
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 0.95  # nucleus: draw from the smallest set of tokens holding this much probability
    max_new_tokens: int = 200  # longest completion, in the model's tokens
    seed: int = 0  # with the prompt, fixes the completion

    def check(self) -> None:
        if self.temperature < 0:
            raise UserError(f"--temperature {self.temperature}: must be 0 (greedy) or more")
        if not 0 < self.top_p <= 1:
            raise UserError(f"--top-p {self.top_p}: must be above 0 and at most 1")
        if self.max_new_tokens < 1:
            raise UserError(f"--max-tokens {self.max_new_tokens}: must be at least 1")


@dataclass
class Prompt:
    text: str  # a story beginning, or the instruction itself (without the SFT wrapper)
    instruct: bool = False  # True: an instruction ("Words: dog, ball, happy")

    @property
    def task(self) -> str:
        """The task name completions and judgments use: instruct or continue."""
        return "instruct" if self.instruct else "continue"


@dataclass
class Completion:
    model: str
    kind: str  # base | instruct
    task: str  # continue | instruct
    prompt: str
    framing: str  # PLAIN or INSTRUCTION_FORMAT: what the model was actually shown
    text: str
    completion_tokens: int
    stopped_at_eos: bool
    prompt_truncated: bool
    seed: int
    temperature: float
    top_p: float
    max_new_tokens: int

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class TryModel:
    """A loaded run model and what sampling it needs."""

    name: str  # pretrain/<size> or sft/<size>
    kind: str  # base | instruct
    model: object
    tokenizer: object
    eos: int
    context: int | None  # the model's context window in tokens (None: unknown)

    def framing(self, prompt: Prompt) -> str:
        """How this model is shown the prompt: only instruct models get the instruction format."""
        return INSTRUCTION_FORMAT if prompt.instruct and self.kind == "instruct" else PLAIN

    def encode(self, prompt: Prompt) -> list[int]:
        """Token ids of the prompt as this model sees it (see the module docstring)."""
        if self.framing(prompt) == INSTRUCTION_FORMAT:
            return self.tokenizer(instruction_prompt(prompt.text), add_special_tokens=False).input_ids
        return [self.eos] + self.tokenizer(prompt.text, add_special_tokens=False).input_ids


def available_models(run_dir: Path) -> list[str]:
    """pretrain/<size> and sft/<size> checkpoints of a run directory, base models first."""
    found = []
    for top in MODEL_KINDS:
        base = run_dir / top
        if base.is_dir():
            found += [f"{top}/{d.name}" for d in sorted(base.iterdir()) if (d / "config.json").is_file()]
    return found


def check_model_names(run_dir: Path, names: list[str]) -> list[str]:
    """The models to load: those named (each must exist in the run), or every one the run has."""
    if not run_dir.is_dir():
        raise UserError(f"--run-dir {run_dir}: no such run directory")
    available = available_models(run_dir)
    if not available:
        raise UserError(f"--run-dir {run_dir}: no trained model (pretrain/<size> or sft/<size>) yet; train one with `tinystories pretrain --run-dir {run_dir}`")
    listed = ", ".join(available)
    for name in names:
        if name.split("/", 1)[0] not in MODEL_KINDS:
            raise UserError(f"--model {name}: not pretrain/<size> or sft/<size>; this run has {listed}")
        if name not in available:
            raise UserError(f"--model {name}: {run_dir / name} has no trained model; this run has {listed}")
    return list(dict.fromkeys(names)) or available


def load_model(run_dir: Path, name: str, device) -> TryModel:
    from tinystories.eval.complete import eos_id, load_causal_lm
    from tinystories.eval.sampler import context_limit

    model, tokenizer = load_causal_lm(run_dir / name, device)
    eos = eos_id(model, tokenizer)
    if eos is None:
        raise UserError(f"{run_dir / name}: the tokenizer has no eos token; set eos_token in its tokenizer_config.json")
    return TryModel(name, MODEL_KINDS[name.split("/", 1)[0]], model, tokenizer, eos, context_limit(model))


def load_models(run_dir: Path, names: list[str], device: str = "auto") -> list[TryModel]:
    from tinystories.eval.complete import resolve_device

    dev = resolve_device(device, "--device")
    return [load_model(run_dir, name, dev) for name in check_model_names(run_dir, names)]


class TextStream:
    """Turns tokens into text pieces as they are drawn: a byte-level token can end mid-character,
    so the whole completion is decoded each time and only a stable new tail is passed on."""

    def __init__(self, tokenizer, on_text: Callable[[str], None]):
        self.tokenizer = tokenizer
        self.on_text = on_text
        self.tokens: list[int] = []
        self.shown = ""

    def push(self, _index: int, token: int) -> None:
        self.tokens.append(token)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if text.endswith("\ufffd") or not text.startswith(self.shown):
            return  # an unfinished character: wait for the token that completes it
        piece, self.shown = text[len(self.shown) :], text
        if piece:
            self.on_text(piece)


def completion_seed(settings: Sampling, prompt: Prompt) -> int:
    return derive_seed(settings.seed, prompt.task, prompt.text)


def sample_one(m: TryModel, prompt: Prompt, settings: Sampling, on_text: Callable[[str], None] | None = None) -> Completion:
    """One completion; on_text(piece) gets the text as it is drawn."""
    from tinystories.eval.sampler import generate_batch

    ids = m.encode(prompt)
    if m.context is not None and settings.max_new_tokens >= m.context:
        raise UserError(f"--max-tokens {settings.max_new_tokens}: {m.name} has a context of {m.context} tokens; ask for fewer than that")
    seed = completion_seed(settings, prompt)
    stream = TextStream(m.tokenizer, on_text) if on_text is not None else None
    pad = m.tokenizer.pad_token_id if m.tokenizer.pad_token_id is not None else m.eos
    [gen] = generate_batch(
        m.model,
        [ids],
        settings.max_new_tokens,
        [seed],
        eos_token_id=m.eos,
        pad_token_id=pad,
        temperature=settings.temperature,
        top_p=settings.top_p,
        on_token=stream.push if stream is not None else None,
    )
    return Completion(
        model=m.name,
        kind=m.kind,
        task=prompt.task,
        prompt=prompt.text,
        framing=m.framing(prompt),
        text=m.tokenizer.decode(gen.tokens, skip_special_tokens=True),
        completion_tokens=len(gen.tokens),
        stopped_at_eos=gen.stopped_at_eos,
        prompt_truncated=gen.truncated_prompt,
        seed=seed,
        temperature=settings.temperature,
        top_p=settings.top_p,
        max_new_tokens=settings.max_new_tokens,
    )


INSTRUCT_PREFIX = "instruct:"


def read_prompt_file(path: Path) -> list[Prompt]:
    """One prompt per line: a story beginning, or `instruct: <instruction>`; blank lines and
    lines starting with # are skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(f"--file {path}: no such file; give a text file with one beginning (or `instruct: ...` line) per line") from None
    except UnicodeDecodeError:
        raise UserError(f"--file {path}: not UTF-8 text; save it as UTF-8") from None
    prompts = []
    for line in lines:
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.lower().startswith(INSTRUCT_PREFIX):
            prompts.append(Prompt(stripped[len(INSTRUCT_PREFIX) :].strip(), instruct=True))
        else:
            prompts.append(Prompt(line.rstrip()))
    if not prompts:
        raise UserError(f"--file {path}: no prompt in it; write one beginning per line (or `instruct: Words: dog, ball, happy`)")
    return prompts
