"""Write story completions for evaluation: every model x every prompt x N seeded samples.

    tinystories complete --run-dir runs/quickstart [--set complete.samples=10 --set complete.max_new_tokens=300]

Models: each pretrain/<size> of the config (kind "base"), each sft/<size> (kind "instruct"), and
the optional `complete.baselines` (kind "baseline"): a Hugging Face causal LM directory on disk,
or "embedded", the LLM layer's embedded model in completion mode.

Prompts (src/tinystories/data/evaluation_prompts.json, or `complete.prompts_path` with the same
shape): story beginnings that stop mid-sentence, and instructions in the instruct format
("Words: ...\\nFeatures: ..."). Who gets what, and why:
- base and baseline models continue every beginning (task "continue"); the prompt is the
  end-of-text token followed by the beginning, because in training every story follows one.
- instruct models get every instruction in the SFT format (task "instruct",
  `### Instruction:\\n{instruction}\\n\\n### Response:\\n`, tokenized exactly as sft.py does), AND
  the plain beginnings (task "continue") unless `complete.instruct_beginnings` is false: the
  beginnings are the one prompt set that every model sees, so base vs instruct is compared on
  the same prompts, and the instructions measure instruction following on top.
- base models also get every instruction (task "instruct") unless `complete.base_instructions`
  is false: the same `### Instruction:...### Response:` text, after the end-of-text token like
  any prompt they see. They never saw that format, so to them it is a plain prefix; their
  completions are the baseline for the judge-free word-compliance signal (how often a story
  contains the requested words), and the judge stage leaves them out of the LLM judge.

Sampling: nucleus (top_p 0.95, temperature 1.0), up to max_new_tokens, stopping at the eos token,
one seed per (model, prompt, sample), batched with a KV cache (tinystories.eval.sampler).

A correct run writes eval/completions.jsonl (one record per completion: model, kind, task
("continue" for a beginning, "instruct" for an instruction), prompt_id, sample_id, prompt (the
beginning, or the instruction without the SFT wrapper), words (instructions that request words), text, prompt_tokens, completion_tokens, stopped_at_eos, seed,
fingerprint) and eval/models.json (per model: kind, path, parameter counts, what it was
sampled with). The file is appended as batches finish; a rerun skips (model, prompt_id,
sample_id) already written with the same fingerprint (model weights, sampling settings, prompt
text) and drops rows whose fingerprint no longer matches.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from tinystories.errors import UserError
from tinystories.text.prompts import instruction_prompt
from tinystories.io.rundir import JsonlWriter, RunDir, read_jsonl, sha256_path, write_json, write_text

NAME = "complete"
SECTION = "complete"
USES = ("llm",)  # only the "embedded" baseline uses it; a change reruns the stage, and unchanged rows are kept

COMPLETIONS = "eval/completions.jsonl"
MODELS = "eval/models.json"
PROMPTS_SHAPE = '{"version": ..., "beginnings": [{"id": ..., "text": ...}], "instructions": [{"id": ..., "instruction": ..., "words": [...]}]}'

log = logging.getLogger("tinystories.eval.complete")


@dataclass
class Config:
    samples: int = 10  # completions per (model, prompt)
    max_new_tokens: int = 300  # longest completion, in the model's tokens
    temperature: float = 1.0  # sampling temperature
    top_p: float = 0.95  # nucleus sampling: draw from the smallest set of tokens holding this much probability
    batch_size: int = 32  # sequences decoded together (the KV cache grows with it)
    device: str = "auto"  # auto (cuda when available) | cpu | cuda | cuda:N
    models: list[str] = field(default_factory=list)  # run models to complete, e.g. [pretrain/1M, sft/8M]; empty = every pretrain and sft size of the config
    baselines: list[str] = field(default_factory=list)  # extra models: a path to a HF causal LM directory, or "embedded" (the LLM layer in completion mode)
    prompts_path: str = ""  # your own prompts file (same shape as the built-in one); empty = built-in
    max_beginnings: int = 0  # use only the first N beginnings (0 = all)
    max_instructions: int = 0  # use only the first N instructions (0 = all)
    instruct_beginnings: bool = True  # instruct models also continue the plain beginnings (so base vs instruct share prompts)
    base_instructions: bool = True  # base models also complete the instructions (SFT prompt text as a plain prefix): the baseline for word compliance
    llm: dict[str, Any] = field(default_factory=dict)  # overrides of the root llm section for the "embedded" baseline

    def check(self) -> list[str]:
        problems = []
        if self.samples < 1:
            problems.append("samples: must be at least 1")
        if self.max_new_tokens < 1:
            problems.append("max_new_tokens: must be at least 1")
        if self.temperature < 0:
            problems.append("temperature: must be 0 (greedy) or more")
        if not 0 < self.top_p <= 1:
            problems.append("top_p: must be in (0, 1]")
        if self.batch_size < 1:
            problems.append("batch_size: must be at least 1")
        if self.max_beginnings < 0 or self.max_instructions < 0:
            problems.append("max_beginnings / max_instructions: must be 0 (all) or more")
        for m in self.models:
            if not (m.startswith("pretrain/") or m.startswith("sft/")):
                problems.append(f"models: {m!r} is not pretrain/<size> or sft/<size>; put other models under complete.baselines")
        return problems


# -- prompts -----------------------------------------------------------------------------------


def load_prompts(path: str | Path | None = None) -> dict:
    """Read and validate a prompts file; every problem is a one-line UserError naming the entry."""
    if path:
        p = Path(path)
        where = str(p)
        if not p.exists():
            raise UserError(f"complete.prompts_path {p}: file not found; give a JSON file shaped {PROMPTS_SHAPE}")
        text = p.read_text(encoding="utf-8")
    else:
        where = "built-in evaluation_prompts.json"
        text = resources.files("tinystories").joinpath("resources/evaluation_prompts.json").read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{where}: line {exc.lineno}: not valid JSON ({exc.msg}); fix the syntax") from None
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected an object shaped {PROMPTS_SHAPE}")
    unknown = sorted(set(data) - {"version", "beginnings", "instructions", "description"})
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(unknown)}; expected version, beginnings, instructions")
    beginnings = data.get("beginnings", [])
    instructions = data.get("instructions", [])
    if not isinstance(beginnings, list) or not isinstance(instructions, list):
        raise UserError(f"{where}: beginnings and instructions must be lists")
    if not beginnings and not instructions:
        raise UserError(f"{where}: no prompts; add at least one entry to beginnings or instructions")
    seen: set[str] = set()
    for section, text_key in (("beginnings", "text"), ("instructions", "instruction")):
        for i, entry in enumerate(data.get(section, [])):
            at = f"{where}: {section}[{i}]"
            if not isinstance(entry, dict):
                raise UserError(f"{at}: expected an object with id and {text_key}")
            extra = sorted(set(entry) - {"id", text_key, "words"})
            if extra:
                raise UserError(f"{at}: unknown key(s) {', '.join(extra)}; allowed: id, {text_key}" + (", words" if section == "instructions" else ""))
            pid = entry.get("id")
            if not isinstance(pid, str) or not pid.strip() or any(c in pid for c in "|\n"):
                raise UserError(f"{at}: id must be a non-empty string without '|' or newlines")
            if pid in seen:
                raise UserError(f"{at}: duplicate id {pid!r}; ids must be unique across beginnings and instructions")
            seen.add(pid)
            body = entry.get(text_key)
            if not isinstance(body, str) or not body.strip():
                raise UserError(f"{at} ({pid}): {text_key} must be non-empty text")
            words = entry.get("words", [])
            if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
                raise UserError(f"{at} ({pid}): words must be a list of strings")
    return {
        "version": str(data.get("version", "")),
        "beginnings": [{"id": b["id"], "text": b["text"]} for b in beginnings],
        "instructions": [{"id": x["id"], "instruction": x["instruction"], "words": list(x.get("words", []))} for x in instructions],
    }


# -- models ------------------------------------------------------------------------------------


@dataclass
class ModelSpec:
    name: str  # how records and the report call it: pretrain/1M, sft/8M, baseline/<dir name>, baseline/embedded
    kind: str  # base | instruct | baseline
    path: str  # run-dir-relative for run models, absolute for baselines, "embedded"


def _sft_dirs(cfg) -> list[str]:
    """sft/<name> for every checkpoint the sft stage of this config writes (its own outputs())."""
    if getattr(cfg, "sft", None) is None:
        return []
    from tinystories.train import sft

    try:
        return [p for p in sft.outputs(cfg) if p.startswith("sft/")]
    except UserError:
        return []  # sft has nothing to tune in this config: no instruct model to complete


def model_specs(cfg) -> list[ModelSpec]:
    c: Config = cfg.complete
    specs: list[ModelSpec] = []
    if c.models:
        for m in c.models:
            specs.append(ModelSpec(m, "base" if m.startswith("pretrain/") else "instruct", m))
    else:
        pre = getattr(cfg, "pretrain", None)
        for size in getattr(pre, "sizes", []) or []:
            specs.append(ModelSpec(f"pretrain/{size}", "base", f"pretrain/{size}"))
        for rel in _sft_dirs(cfg):
            specs.append(ModelSpec(rel, "instruct", rel))
    for b in c.baselines:
        if b == "embedded":
            specs.append(ModelSpec("baseline/embedded", "baseline", "embedded"))
        else:
            specs.append(ModelSpec(f"baseline/{Path(b).name}", "baseline", str(Path(b).expanduser().resolve())))
    return specs


def inputs(cfg) -> list[str]:
    out = [s.path for s in model_specs(cfg) if s.kind != "baseline"]
    return out


def outputs(cfg) -> list[str]:
    return [COMPLETIONS, MODELS]


def _seed(stage_seed: int, *parts: Any) -> int:
    blob = "|".join(str(p) for p in (stage_seed, *parts)).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "little") & 0x7FFFFFFFFFFFFFFF


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"complete.device: {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"complete.device: {name} requested but no CUDA device is available; use cpu or auto")
    return dev


def load_causal_lm(path: Path, device):
    """A HF causal LM and its tokenizer from a save_pretrained directory (ours or any)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (path / "config.json").exists():
        raise UserError(f"{path}: no config.json; point to a save_pretrained directory of a causal LM (with its tokenizer files)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except Exception as exc:  # noqa: BLE001 - any loader failure is a setup problem the user fixes
        raise UserError(f"{path}: cannot load its tokenizer ({str(exc).splitlines()[0][:200]}); the directory needs tokenizer.json or equivalent files") from None
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path))
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"{path}: cannot load the model ({str(exc).splitlines()[0][:200]})") from None
    model.to(device).eval()
    return model, tokenizer


def _eos_id(model, tokenizer) -> int | None:
    eos = tokenizer.eos_token_id
    if eos is None:
        eos = getattr(model.config, "eos_token_id", None)
    if isinstance(eos, (list, tuple)):
        eos = eos[0] if eos else None
    return eos


# -- the stage ---------------------------------------------------------------------------------


def _plan(spec: ModelSpec, prompts: dict, c: Config) -> list[dict]:
    """The (task, prompt) pairs a model gets."""
    beginnings = prompts["beginnings"][: c.max_beginnings or None]
    instructions = prompts["instructions"][: c.max_instructions or None]
    plan = []
    if spec.kind != "instruct" or c.instruct_beginnings:
        plan += [{"task": "continue", "prompt_id": b["id"], "prompt": b["text"]} for b in beginnings]
    if spec.kind == "instruct" or (spec.kind == "base" and c.base_instructions):
        plan += [{"task": "instruct", "prompt_id": x["id"], "prompt": x["instruction"], "words": x["words"]} for x in instructions]
    return plan


def _load_done(path: Path, fingerprints: dict[str, str]) -> set[tuple]:
    """Keys already written with the current fingerprint; stale rows are dropped (atomic rewrite)."""
    if not path.exists():
        return set()
    keep, stale = [], 0
    seen: set[tuple] = set()
    for rec in read_jsonl(path):
        key = (rec.get("model"), rec.get("prompt_id"), rec.get("sample_id"))
        if fingerprints.get(f"{rec.get('model')}|{rec.get('prompt_id')}") != rec.get("fingerprint") or key in seen:
            stale += 1
            continue
        seen.add(key)
        keep.append(rec)
    if stale:
        log.info("dropping %d completions made with other settings or duplicated", stale)
        write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in keep))
    return seen


def run(cfg, rundir: RunDir, force: bool = False) -> dict:
    from tinystories.pipeline.config import derive_seed
    from tinystories.progress import progress_bar

    c: Config = cfg.complete
    prompts = load_prompts(c.prompts_path or None)
    specs = model_specs(cfg)
    if not specs:
        raise UserError("complete: no models to complete; train one (tinystories pretrain) or list complete.models / complete.baselines")
    for spec in specs:
        if spec.path != "embedded" and spec.kind == "baseline" and not Path(spec.path).exists():
            raise UserError(f"complete.baselines: {spec.path} does not exist; give a HF causal LM directory or 'embedded'")
    stage_seed = derive_seed(cfg.seed, NAME)
    sampling = {"temperature": c.temperature, "top_p": c.top_p, "max_new_tokens": c.max_new_tokens}

    # Fingerprint per (model, prompt): what the model is (weights hash / LLM settings), how it
    # samples, and the exact prompt text; a row made under another fingerprint is stale.
    identities: dict[str, Any] = {}
    plans: dict[str, list[dict]] = {}
    fingerprints: dict[str, str] = {}
    for spec in specs:
        if spec.path == "embedded":
            llm_cfg = _baseline_llm(cfg)
            identities[spec.name] = {"llm": asdict(llm_cfg)}
        else:
            identities[spec.name] = {"weights": sha256_path(rundir.path(spec.path) if spec.kind != "baseline" else Path(spec.path))}
        plans[spec.name] = _plan(spec, prompts, c)
        for item in plans[spec.name]:
            fingerprints[f"{spec.name}|{item['prompt_id']}"] = _fingerprint(identities[spec.name], sampling, item["task"], item["prompt"])

    out_path = rundir.path(COMPLETIONS)
    done = _load_done(out_path, fingerprints)
    total = sum(len(plans[s.name]) * c.samples for s in specs)
    todo_total = total - sum(1 for k in done if f"{k[0]}|{k[1]}" in fingerprints)
    models_info: dict[str, dict] = {}
    counters = {"written": 0, "tokens": 0, "eos": 0}
    per_model: dict[str, dict] = {}
    t_start = time.time()
    with JsonlWriter(out_path, sync_every=64) as writer, progress_bar("complete", todo_total, unit="story") as bar:
        for spec in specs:
            todo = [
                (item, k)
                for item in plans[spec.name]
                for k in range(c.samples)
                if (spec.name, item["prompt_id"], k) not in done
            ]
            t0 = time.time()
            info = {"kind": spec.kind, "path": spec.path, **sampling, "samples": c.samples}
            stats = {"completions": 0, "tokens": 0}

            def emit(item: dict, k: int, seed: int, text: str, prompt_tokens: int, new_tokens: int, at_eos: bool, truncated: bool) -> None:
                rec = {
                    "model": spec.name,
                    "kind": spec.kind,
                    "task": item["task"],
                    "prompt_id": item["prompt_id"],
                    "sample_id": k,
                    "prompt": item["prompt"],
                    "text": text,
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": new_tokens,
                    "stopped_at_eos": at_eos,
                    "prompt_truncated": truncated,
                    "seed": seed,
                    "fingerprint": fingerprints[f"{spec.name}|{item['prompt_id']}"],
                }
                if item.get("words"):
                    rec["words"] = item["words"]
                writer.write(rec)
                counters["written"] += 1
                counters["tokens"] += new_tokens
                counters["eos"] += int(at_eos)
                stats["completions"] += 1
                stats["tokens"] += new_tokens
                bar.advance(1, model=spec.name, tok_s=f"{counters['tokens'] / max(1e-9, time.time() - t_start):.0f}")

            if spec.path == "embedded":
                info.update(_complete_embedded(cfg, spec, todo, stage_seed, emit, rundir))
            else:
                info.update(_complete_hf(cfg, spec, todo, stage_seed, emit, rundir))
            wall = time.time() - t0
            info["weights_sha256"] = identities[spec.name].get("weights")
            models_info[spec.name] = info
            per_model[spec.name] = {**stats, "wall_s": round(wall, 3), "tok_s": round(stats["tokens"] / wall, 1) if wall > 0 and stats["tokens"] else 0.0}

    # Counts from the file itself, so a resumed run reports the whole set, not only this session.
    counts: dict[str, int] = {}
    for rec in read_jsonl(out_path):
        counts[rec["model"]] = counts.get(rec["model"], 0) + 1
    for name, n in counts.items():
        models_info.setdefault(name, {})["completions"] = n
    write_json(rundir.path(MODELS), {"prompts_version": prompts["version"], "prompts_source": c.prompts_path or "built-in", "models": models_info})
    return {
        "completions": sum(counts.values()),
        "written_now": counters["written"],
        "generated_tokens_now": counters["tokens"],
        "stopped_at_eos_now": counters["eos"],
        "models": len(specs),
        "per_model": per_model,
    }


def _complete_hf(cfg, spec: ModelSpec, todo: list, stage_seed: int, emit, rundir: RunDir) -> dict:
    import torch

    from tinystories.eval.sampler import iter_generate

    c: Config = cfg.complete
    path = rundir.path(spec.path) if spec.kind != "baseline" else Path(spec.path)
    device = _device(c.device)
    model, tokenizer = load_causal_lm(path, device)
    eos = _eos_id(model, tokenizer)
    if eos is None:
        raise UserError(f"{path}: the tokenizer has no eos token; completions could never stop (set eos_token in tokenizer_config.json)")
    params = sum(p.numel() for p in model.parameters())
    emb = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding))
    info = {"params": params, "params_non_embedding": params - emb, "eos_token_id": eos, "device": str(device)}
    if not todo:
        return info
    start = tokenizer.bos_token_id if spec.kind == "baseline" and tokenizer.bos_token_id is not None else eos
    encoded: dict[str, list[int]] = {}
    for item, _ in todo:
        if item["prompt_id"] in encoded:
            continue
        if item["task"] == "instruct":
            # sft.py tokenizes the prompt on its own, without a leading eos: do the same. A base
            # model gets the same text but, like every document it was trained on, after an eos.
            ids = tokenizer(instruction_prompt(item["prompt"]), add_special_tokens=False).input_ids
            if spec.kind != "instruct":
                ids = [start] + ids
        else:
            # In training every story follows an <|endoftext|>: the beginning does too here.
            ids = [start] + tokenizer(item["prompt"], add_special_tokens=False).input_ids
        encoded[item["prompt_id"]] = ids
    seeds = [_seed(stage_seed, spec.name, item["prompt_id"], k) for item, k in todo]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    for gen in iter_generate(
        model,
        [encoded[item["prompt_id"]] for item, _ in todo],
        c.max_new_tokens,
        seeds,
        eos_token_id=eos,
        pad_token_id=pad,
        temperature=c.temperature,
        top_p=c.top_p,
        batch_size=c.batch_size,
    ):
        item, k = todo[gen.index]
        text = tokenizer.decode(gen.tokens, skip_special_tokens=True)
        emit(item, k, seeds[gen.index], text, gen.prompt_tokens, len(gen.tokens), gen.stopped_at_eos, gen.truncated_prompt)
    del model
    return info


def _baseline_llm(cfg):
    import dataclasses

    llm_cfg = cfg.llm_for("complete")
    # The baseline continues raw text, like our models: completion mode whatever the root says.
    return dataclasses.replace(llm_cfg, mode="completion")


def _complete_embedded(cfg, spec: ModelSpec, todo: list, stage_seed: int, emit, rundir: RunDir) -> dict:
    from tinystories.llm import Request, make_client

    c: Config = cfg.complete
    llm_cfg = _baseline_llm(cfg)
    client = make_client(llm_cfg, rundir.path("cache/llm"))
    info = {"llm": client.describe()}
    if not todo:
        client.close()
        return info
    requests = []
    for i, (item, k) in enumerate(todo):
        prompt = instruction_prompt(item["prompt"]) if item["task"] == "instruct" else item["prompt"]
        requests.append(
            Request(
                key=str(i),
                prompt=prompt,
                max_tokens=c.max_new_tokens,
                temperature=c.temperature,
                top_p=c.top_p,
                seed=_seed(stage_seed, spec.name, item["prompt_id"], k) & 0x7FFFFFFF,
                template_version="complete-baseline-1",
            )
        )

    failures: list[str] = []

    def on_result(resp) -> None:
        item, k = todo[int(resp.key)]
        if not resp.ok:
            failures.append(f"{item['prompt_id']}#{k}: {resp.error}")
            return
        emit(item, k, resp.seed, resp.text, resp.prompt_tokens, resp.completion_tokens, resp.finish_reason == "stop", False)

    try:
        client.complete(requests, on_result=on_result, collect=False, total=len(requests), description="complete embedded")
    finally:
        client.close()
    if failures:
        log.warning("embedded baseline: %d completions failed, e.g. %s", len(failures), failures[0])
    info["failed"] = len(failures)
    return info
