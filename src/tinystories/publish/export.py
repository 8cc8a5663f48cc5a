"""`tinystories export`: a finished checkpoint as a clean, self-contained model directory, and
optionally its upload to the Hugging Face Hub.

    tinystories export --run-dir runs/quickstart --model sft/8M --out exports/tinystories-8M-instruct
    tinystories export --run-dir runs/quickstart --model sft/8M --out exports/8M --push-to-hub USER/tinystories-8M-instruct

The directory holds what `from_pretrained` and the Hub need and nothing of the training:
config, weights, tokenizer (with the chat template of an instruct model) and a model card
rendered afresh from the checkpoint's files; no train_state.pt (optimizer state), tb/,
metrics.jsonl, samples or tinystories.json. It is assembled in a sibling temp dir and renamed
into place, so `--out` holds either the previous export or the new one, never a mix.

The upload goes through `huggingface_hub.HfApi`, which reads the token from HF_TOKEN (or a
`huggingface-cli login`); the token is never printed or logged. `push_to_hub` takes the client
factory as a parameter, so tests hand it a recorder and nothing reaches the network.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Callable

from tinystories.errors import UserError
from tinystories.io.layout import PRETRAIN_DIR, SFT_DIR
from tinystories.io.rundir import RunDir
from tinystories.publish.cards import CHAT_TEMPLATE_FILE, DEFAULT_LICENSE, MODEL_CARD, write_model_card
from tinystories.train.bpe import TOKENIZER_FILES

log = logging.getLogger("tinystories.publish.export")

# What an exported directory may hold: the Hugging Face files, the tokenizer and the card.
HF_FILES = ("config.json", "generation_config.json", "model.safetensors")
EXPORT_FILES = (*HF_FILES, *TOKENIZER_FILES, CHAT_TEMPLATE_FILE, MODEL_CARD)
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")
STAGE_OF_KIND = {PRETRAIN_DIR: "pretrain", SFT_DIR: "sft"}


def resolve_model(rundir: RunDir, model: str) -> Path:
    """The checkpoint dir `model` (pretrain/<size> or sft/<name>) names, if its stage finished it."""
    kind, _, name = model.strip("/").partition("/")
    if kind not in STAGE_OF_KIND or not name or "/" in name:
        raise UserError(f"--model {model}: name a checkpoint of the run as pretrain/<size> or sft/<name>, e.g. --model sft/8M")
    rel = f"{kind}/{name}"
    ckpt = rundir.path(rel)
    stage = STAGE_OF_KIND[kind]
    record = rundir.stage_record(stage) or {}
    status, made = record.get("status", "not run"), record.get("outputs") or {}
    if status != "done":
        raise UserError(f"--model {model}: stage {stage} is {status} in {rundir.manifest_path}, not done; run `tinystories {stage} --run-dir {rundir.root}` to the end first")
    if rel not in made:
        raise UserError(f"--model {model}: the last {stage} run made {', '.join(made) or 'nothing'}, not {rel}; add {name} to {stage}.sizes and rerun `tinystories {stage} --run-dir {rundir.root}`")
    missing = [f for f in REQUIRED_FILES if not (ckpt / f).is_file()]
    if missing:
        raise UserError(f"--model {model}: {ckpt} lacks {', '.join(missing)}; rerun `tinystories {stage} --run-dir {rundir.root} --force`")
    return ckpt


def _check_out(out: Path) -> None:
    """`out` may be new, empty or a previous export; anything else is not ours to replace."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file; name a directory")
    foreign = sorted(p.name for p in out.iterdir() if p.name not in EXPORT_FILES) if out.is_dir() else []
    if foreign:
        raise UserError(f"--out {out}: holds files an export does not write ({', '.join(foreign[:3])}); name a new or empty directory")


def export_model(rundir: RunDir, model: str, out: Path, license: str = DEFAULT_LICENSE, model_id: str | None = None) -> Path:
    """Copy the finished checkpoint `model` of `rundir` into `out` as a clean model directory;
    `model_id` (a Hub repo) is the name the card's usage example loads."""
    ckpt = resolve_model(rundir, model)
    out = Path(out)
    _check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.export-tmp.{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)  # left by a killed export of this process id
    tmp.mkdir()
    try:
        for name in EXPORT_FILES:
            if name != MODEL_CARD and (ckpt / name).is_file():
                shutil.copy2(ckpt / name, tmp / name)
        write_model_card(ckpt, out_dir=tmp, license=license, model_id=model_id or str(out))
        _swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("exported %s to %s", ckpt, out)
    return out


def _swap_in(tmp: Path, out: Path) -> None:
    """Rename `tmp` to `out`; a previous export is moved aside first and removed after."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old.{os.getpid()}")
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def hub_api():
    """The Hub client (the seam tests replace): HfApi reads HF_TOKEN or the saved login itself."""
    from huggingface_hub import HfApi

    return HfApi()


def check_repo_id(repo_id: str) -> None:
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise UserError(f"--push-to-hub {repo_id}: name the repository as OWNER/NAME, e.g. --push-to-hub your-name/tinystories-8M")


def push_to_hub(folder: Path, repo_id: str, private: bool = False, api_factory: Callable[[], object] | None = None) -> str:
    """Create `repo_id` on the Hub if needed and upload `folder` to it; the repo's URL."""
    check_repo_id(repo_id)
    api = (api_factory or hub_api)()
    try:
        url = api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=str(folder), commit_message=f"Upload {Path(folder).name} with tinystories export")
    except Exception as exc:  # noqa: BLE001 - any Hub failure is one line for the user
        raise UserError(f"--push-to-hub {repo_id}: the Hub refused the upload ({_hub_reason(exc)}); set HF_TOKEN to a token with write access and rerun") from None
    return str(url)


def publish(rundir: RunDir, model: str, out: Path, license: str = DEFAULT_LICENSE, repo_id: str | None = None, private: bool = False,
            api_factory: Callable[[], object] | None = None) -> tuple[Path, str | None]:
    """`tinystories export`: export, then upload when `repo_id` is given; (directory, repo URL)."""
    if repo_id is not None:
        check_repo_id(repo_id)  # before the copy: a typo costs nothing
    out = export_model(rundir, model, out, license=license, model_id=repo_id)
    return out, push_to_hub(out, repo_id, private, api_factory) if repo_id is not None else None


def _hub_reason(exc: Exception) -> str:
    """The first line of a Hub error, which names the status and never the token."""
    text = str(exc).strip().splitlines()
    return (text[0][:200] if text else type(exc).__name__)
