"""`tinystories sample`: completions of one prompt by several models, side by side in the terminal.

    tinystories sample --run-dir runs/quickstart --model pretrain/8M --model sft/8M "Once upon a time"
    tinystories sample --run-dir runs/quickstart --instruct "Words: dog, ball, happy"
    tinystories sample --run-dir runs/quickstart --file prompts.txt --jsonl > samples.jsonl

On a terminal each model's column fills in as its tokens are drawn (models take turns: one
model samples at a time); piped, the finished table is printed once per prompt; with --jsonl
every completion is one JSON line (the fields of tryout.sample.Completion) instead.
"""

from __future__ import annotations

import json
import sys

from tinystories.errors import UserError
from tinystories.tryout.sample import PLAIN, Completion, Prompt, Sampling, TryModel, load_models, read_prompt_file, sample_one


def prompts_from_args(args) -> list[Prompt]:
    """Exactly one of: the positional beginning, --instruct, --file."""
    given = [name for name, value in (("a beginning", args.text), ("--instruct", args.instruct), ("--file", args.file)) if value is not None]
    if len(given) != 1:
        what = "nothing" if not given else " and ".join(given)
        raise UserError(f"sample: got {what}; give exactly one of a beginning (\"Once upon a time\"), --instruct \"Words: dog, ball, happy\" or --file prompts.txt")
    if args.file is not None:
        return read_prompt_file(args.file)
    if args.instruct is not None:
        if not args.instruct.strip():
            raise UserError('--instruct: empty instruction; e.g. --instruct "Words: dog, ball, happy"')
        return [Prompt(args.instruct.strip(), instruct=True)]
    return [Prompt(args.text)]


def settings_from_args(args) -> Sampling:
    settings = Sampling(temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_tokens, seed=args.seed)
    settings.check()
    return settings


def run_sample(args) -> int:
    from rich.console import Console

    prompts = prompts_from_args(args)
    settings = settings_from_args(args)
    models = load_models(args.run_dir, args.models, args.device)
    console = Console(file=sys.stdout, highlight=False)
    for prompt in prompts:
        if args.jsonl:
            for m in models:
                print(json.dumps(sample_one(m, prompt, settings).as_dict()), flush=True)
        else:
            show_side_by_side(console, models, prompt, settings)
    return 0


def show_side_by_side(console, models: list[TryModel], prompt: Prompt, settings: Sampling) -> list[Completion]:
    """Sample every model for one prompt; stream into a live table on a terminal."""
    from rich.live import Live

    texts = {m.name: "" for m in models}
    done: dict[str, Completion] = {}
    console.print(prompt_heading(prompt, settings))
    if not console.is_terminal:
        for m in models:
            done[m.name] = sample_one(m, prompt, settings)
            texts[m.name] = done[m.name].text
        console.print(side_by_side(models, prompt, texts, done))
        return list(done.values())
    with Live(side_by_side(models, prompt, texts, done), console=console, refresh_per_second=12) as live:
        for m in models:

            def grow(piece: str, name: str = m.name) -> None:
                texts[name] += piece
                live.update(side_by_side(models, prompt, texts, done))

            done[m.name] = sample_one(m, prompt, settings, on_text=grow)
            texts[m.name] = done[m.name].text
            live.update(side_by_side(models, prompt, texts, done))
    return list(done.values())


def prompt_heading(prompt: Prompt, settings: Sampling) -> str:
    what = f"Instruction: {prompt.text}" if prompt.instruct else f"Beginning: {prompt.text or '(none: a story from scratch)'}"
    return (
        f"[bold]{escape(what)}[/bold]\n"
        f"[dim]temperature {settings.temperature} · top_p {settings.top_p} · seed {settings.seed} · max {settings.max_new_tokens} tokens[/dim]"
    )


def escape(text: str) -> str:
    from rich.markup import escape as rich_escape

    return rich_escape(text)


def side_by_side(models: list[TryModel], prompt: Prompt, texts: dict[str, str], done: dict[str, Completion]):
    """One column per model: how it was prompted, its text (what it continued in bold, then the
    continuation; an instruction in the SFT format is not repeated), and, once finished, its
    length and why it stopped."""
    from rich.table import Table
    from rich.text import Text

    table = Table(show_lines=False, expand=True, show_footer=True)
    for m in models:
        table.add_column(f"{m.name}\n[dim]{m.kind}, {m.framing(prompt)}[/dim]", footer=footer(done.get(m.name)), ratio=1, overflow="fold")
    cells = []
    for m in models:
        cell = Text()
        if m.framing(prompt) == PLAIN:
            cell.append(prompt.text, style="bold")  # the model continued this very text
        cell.append(texts[m.name])
        cells.append(cell)
    table.add_row(*cells)
    return table


def footer(completion: Completion | None) -> str:
    if completion is None:
        return "[dim]sampling…[/dim]"
    ending = "ended the story" if completion.stopped_at_eos else "hit --max-tokens"
    return f"[dim]{completion.completion_tokens} tokens, {ending}[/dim]"
