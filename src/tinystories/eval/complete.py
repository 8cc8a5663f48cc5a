"""Write story completions for evaluation: every model x every prompt x N seeded samples.

    tinystories complete --run-dir runs/quickstart [--set complete.samples=10 --set complete.max_new_tokens=300]

Models: each pretrain/<size> of the config (kind "base"), each sft/<size> (kind "instruct"), and
the optional `complete.baselines` (kind "baseline"): a Hugging Face causal LM directory on disk,
or "embedded", the LLM layer's embedded model in completion mode.

Prompts (src/tinystories/resources/evaluation_prompts.json, or `complete.prompts_path` with the
same shape; read and checked by eval/prompt_set.py): story beginnings that stop mid-sentence,
and instructions in the instruct format ("Words: ...\\nFeatures: ..."). Who gets what, and why:
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
beginning, or the instruction without the SFT wrapper), words (what an instruction requests; null for a beginning), text, prompt_tokens, completion_tokens, stopped_at_eos, seed,
fingerprint) and eval/models.json (per model: kind, path, parameter counts, what it was
sampled with). The file is appended as batches finish; a rerun skips (model, prompt_id,
sample_id) already written with the same fingerprint (model weights, sampling settings, prompt
text) and drops rows whose fingerprint no longer matches.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from tinystories.errors import UserError
from tinystories.eval.prompt_set import load_prompts
from tinystories.io.layout import COMPLETIONS, EVAL_MODELS, LLM_CACHE_DIR
from tinystories.io.resume import keep_rows
from tinystories.io.rundir import JsonlWriter, RunDir, read_jsonl, sha256_path, write_json
from tinystories.pipeline.ids import derive_seed, fingerprint
from tinystories.text.prompts import instruction_prompt

NAME = "complete"
SECTION = "complete"
# llm: only the "embedded" baseline uses it (a change reruns the stage; unchanged rows are kept).
# pretrain, sft: with complete.models empty, every size they train is completed.
USES = ("llm", "pretrain", "sft")

BASELINE_TEMPLATE_VERSION = "complete-baseline-1"  # the embedded baseline's prompt is the raw beginning

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


# -- models ------------------------------------------------------------------------------------


@dataclass
class ModelSpec:
    name: str  # how records and the report call it: pretrain/1M, sft/8M, baseline/<dir name>, baseline/embedded
    kind: str  # base | instruct | baseline
    path: str  # run-dir-relative for run models, absolute for baselines, "embedded"


def _sft_dirs(cfg) -> list[str]:
    """sft/<name> for every checkpoint the sft stage of this config writes."""
    if getattr(cfg, "sft", None) is None:
        return []
    from tinystories.train.checkpoints import sft_dirs

    try:
        return sft_dirs(cfg)
    except UserError:
        return []  # sft has nothing to tune in this config: no instruct model to complete


def model_specs(cfg) -> list[ModelSpec]:
    c: Config = cfg.complete
    specs: list[ModelSpec] = []
    if c.models:
        for m in c.models:
            specs.append(ModelSpec(m, "base" if m.startswith("pretrain/") else "instruct", m))
    else:
        from tinystories.train.checkpoints import pretrain_dirs

        for rel in pretrain_dirs(cfg):
            specs.append(ModelSpec(rel, "base", rel))
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
    return [COMPLETIONS, EVAL_MODELS]


def resolve_device(name: str, option: str = "complete.device"):
    """auto | cpu | cuda | cuda:N as a torch device; `option` names the setting in the error."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"{option}: {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{option}: {name} requested but no CUDA device is available; use cpu or auto")
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


def eos_id(model, tokenizer) -> int | None:
    eos = tokenizer.eos_token_id
    if eos is None:
        eos = getattr(model.config, "eos_token_id", None)
    if isinstance(eos, (list, tuple)):
        eos = eos[0] if eos else None
    return eos


# -- the plan and its fingerprints -------------------------------------------------------------


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


def sample_seed(stage_seed: int, model: str, prompt_id: str, sample_id: int, bits: int = 63) -> int:
    """The seed of one (model, prompt, sample): the same whatever batch, or run, it lands in."""
    return derive_seed(stage_seed, model, prompt_id, sample_id, bits=bits)


def _model_path(rundir: RunDir, spec: ModelSpec) -> Path:
    return rundir.path(spec.path) if spec.kind != "baseline" else Path(spec.path)


def _check_baselines(specs: list[ModelSpec]) -> None:
    if not specs:
        raise UserError("complete: no models to complete; train one (tinystories pretrain) or list complete.models / complete.baselines")
    for spec in specs:
        if spec.path != "embedded" and spec.kind == "baseline" and not Path(spec.path).exists():
            raise UserError(f"complete.baselines: {spec.path} does not exist; give a HF causal LM directory or 'embedded'")


def model_identity(cfg, rundir: RunDir, spec: ModelSpec) -> dict:
    """What the model is: the hash of its weights, or the LLM settings of the embedded baseline."""
    if spec.path == "embedded":
        return {"llm": asdict(_baseline_llm(cfg))}
    return {"weights": sha256_path(_model_path(rundir, spec))}


def _prompt_key(model: str | None, prompt_id: str | None) -> str:
    return f"{model}|{prompt_id}"


def plan_fingerprints(identities: dict[str, dict], plans: dict[str, list[dict]], sampling: dict) -> dict[str, str]:
    """Per (model, prompt): what the model is, how it samples, and the exact prompt text; a row
    made under another fingerprint is stale."""
    return {
        _prompt_key(name, item["prompt_id"]): fingerprint(identities[name], sampling, item["task"], item["prompt"], length=16)
        for name, plan in plans.items()
        for item in plan
    }


def resume_completions(path: Path, fingerprints: dict[str, str]) -> set[tuple]:
    """(model, prompt_id, sample_id) already written with the current fingerprint; stale and
    duplicated rows are dropped (atomic rewrite)."""
    seen: set[tuple] = set()

    def keep(rec: dict) -> bool:
        key = (rec.get("model"), rec.get("prompt_id"), rec.get("sample_id"))
        if fingerprints.get(_prompt_key(rec.get("model"), rec.get("prompt_id"))) != rec.get("fingerprint") or key in seen:
            return False
        seen.add(key)
        return True

    _, dropped = keep_rows(path, keep)
    if dropped:
        log.info("dropping %d completions made with other settings or duplicated", dropped)
    return seen


# -- writing rows ------------------------------------------------------------------------------


class CompletionRecorder:
    """Appends completion rows as the samplers produce them, and counts them: in all, and per model."""

    def __init__(self, writer: JsonlWriter, bar, fingerprints: dict[str, str]):
        self.writer = writer
        self.bar = bar
        self.fingerprints = fingerprints
        self.totals = {"written": 0, "tokens": 0, "eos": 0}
        self.per_model: dict[str, dict] = {}
        self._t_start = time.time()

    def emitter(self, spec: ModelSpec) -> Callable:
        """The `emit(item, k, seed, text, prompt_tokens, new_tokens, at_eos, truncated)` a sampler calls for `spec`."""
        stats = self.per_model.setdefault(spec.name, {"completions": 0, "tokens": 0})

        def emit(item: dict, k: int, seed: int, text: str, prompt_tokens: int, new_tokens: int, at_eos: bool, truncated: bool) -> None:
            rec = {
                "model": spec.name,
                "kind": spec.kind,
                "task": item["task"],
                "prompt_id": item["prompt_id"],
                "sample_id": k,
                "prompt": item["prompt"],
                "words": item.get("words") or None,  # the words an instruction requests; null for a beginning (one schema per file)
                "text": text,
                "prompt_tokens": prompt_tokens,
                "completion_tokens": new_tokens,
                "stopped_at_eos": at_eos,
                "prompt_truncated": truncated,
                "seed": seed,
                "fingerprint": self.fingerprints[_prompt_key(spec.name, item["prompt_id"])],
            }
            self.writer.write(rec)
            self.totals["written"] += 1
            self.totals["tokens"] += new_tokens
            self.totals["eos"] += int(at_eos)
            stats["completions"] += 1
            stats["tokens"] += new_tokens
            self.bar.advance(1, model=spec.name, tok_s=f"{self.totals['tokens'] / max(1e-9, time.time() - self._t_start):.0f}")

        return emit

    def model_done(self, name: str, wall: float) -> None:
        stats = self.per_model[name]
        stats["wall_s"] = round(wall, 3)
        stats["tok_s"] = round(stats["tokens"] / wall, 1) if wall > 0 and stats["tokens"] else 0.0


def complete_model(cfg, rundir: RunDir, spec: ModelSpec, todo: list, stage_seed: int, recorder: CompletionRecorder, sampling: dict, identity: dict) -> dict:
    """Sample the (item, sample_id) pairs of `todo` from one model; returns its eval/models.json entry."""
    c: Config = cfg.complete
    t0 = time.time()
    info = {"kind": spec.kind, "path": spec.path, **sampling, "samples": c.samples}
    sample = _complete_embedded if spec.path == "embedded" else _complete_hf
    info.update(sample(cfg, spec, todo, stage_seed, recorder.emitter(spec), rundir))
    info["weights_sha256"] = identity.get("weights")
    recorder.model_done(spec.name, time.time() - t0)
    return info


def count_rows(path: Path) -> dict[str, int]:
    """Completions per model in the file itself, so a resumed run reports the whole set, not only this session."""
    counts: dict[str, int] = {}
    for rec in read_jsonl(path):
        counts[rec["model"]] = counts.get(rec["model"], 0) + 1
    return counts


# -- the stage ---------------------------------------------------------------------------------


def run(cfg, rundir: RunDir, force: bool = False) -> dict:
    from tinystories.progress import progress_bar

    c: Config = cfg.complete
    prompts = load_prompts(c.prompts_path or None)
    specs = model_specs(cfg)
    _check_baselines(specs)
    stage_seed = derive_seed(cfg.seed, NAME)
    sampling = {"temperature": c.temperature, "top_p": c.top_p, "max_new_tokens": c.max_new_tokens}
    identities = {spec.name: model_identity(cfg, rundir, spec) for spec in specs}
    plans = {spec.name: _plan(spec, prompts, c) for spec in specs}
    fingerprints = plan_fingerprints(identities, plans, sampling)

    out_path = rundir.path(COMPLETIONS)
    done = resume_completions(out_path, fingerprints)
    total = sum(len(plans[s.name]) * c.samples for s in specs)
    todo_total = total - sum(1 for model, prompt_id, _ in done if _prompt_key(model, prompt_id) in fingerprints)
    models_info: dict[str, dict] = {}
    with JsonlWriter(out_path, sync_every=64) as writer, progress_bar("complete", todo_total, unit="story") as bar:
        recorder = CompletionRecorder(writer, bar, fingerprints)
        for spec in specs:
            todo = [(item, k) for item in plans[spec.name] for k in range(c.samples) if (spec.name, item["prompt_id"], k) not in done]
            models_info[spec.name] = complete_model(cfg, rundir, spec, todo, stage_seed, recorder, sampling, identities[spec.name])

    counts = count_rows(out_path)
    for name, n in counts.items():
        models_info.setdefault(name, {})["completions"] = n
    write_json(rundir.path(EVAL_MODELS), {"prompts_version": prompts["version"], "prompts_source": c.prompts_path or "built-in", "models": models_info})
    return {
        "completions": sum(counts.values()),
        "written_now": recorder.totals["written"],
        "generated_tokens_now": recorder.totals["tokens"],
        "stopped_at_eos_now": recorder.totals["eos"],
        "models": len(specs),
        "per_model": recorder.per_model,
    }


# -- the samplers: our checkpoints and any HF causal LM, or the LLM layer's embedded model -------


def _encode_prompts(tokenizer, spec: ModelSpec, todo: list, start: int) -> dict[str, list[int]]:
    """Token ids per prompt id, framed as the model saw text in training."""
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
    return encoded


def _parameter_counts(model) -> dict:
    import torch

    params = sum(p.numel() for p in model.parameters())
    emb = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding))
    return {"params": params, "params_non_embedding": params - emb}


def _complete_hf(cfg, spec: ModelSpec, todo: list, stage_seed: int, emit, rundir: RunDir) -> dict:
    from tinystories.eval.sampler import iter_generate

    c: Config = cfg.complete
    path = _model_path(rundir, spec)
    device = resolve_device(c.device)
    model, tokenizer = load_causal_lm(path, device)
    eos = eos_id(model, tokenizer)
    if eos is None:
        raise UserError(f"{path}: the tokenizer has no eos token; completions could never stop (set eos_token in tokenizer_config.json)")
    info = {**_parameter_counts(model), "eos_token_id": eos, "device": str(device)}
    if not todo:
        return info
    start = tokenizer.bos_token_id if spec.kind == "baseline" and tokenizer.bos_token_id is not None else eos
    encoded = _encode_prompts(tokenizer, spec, todo, start)
    seeds = [sample_seed(stage_seed, spec.name, item["prompt_id"], k) for item, k in todo]
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

    llm_cfg = cfg.llm_for(SECTION)
    # The baseline continues raw text, like our models: completion mode whatever the root says.
    return dataclasses.replace(llm_cfg, mode="completion")


def _embedded_requests(c: Config, spec: ModelSpec, todo: list, stage_seed: int) -> list:
    """One request per (item, sample_id) of `todo`, keyed by its position there."""
    from tinystories.llm import Request

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
                seed=sample_seed(stage_seed, spec.name, item["prompt_id"], k, bits=31),  # the LLM layer takes 31-bit seeds
                template_version=BASELINE_TEMPLATE_VERSION,
            )
        )
    return requests


def _complete_embedded(cfg, spec: ModelSpec, todo: list, stage_seed: int, emit, rundir: RunDir) -> dict:
    from tinystories.llm import make_client

    client = make_client(_baseline_llm(cfg), rundir.path(LLM_CACHE_DIR))
    info = {"llm": client.describe()}
    if not todo:
        client.close()
        return info
    failures: list[str] = []

    def on_result(resp) -> None:
        item, k = todo[int(resp.key)]
        if not resp.ok:
            failures.append(f"{item['prompt_id']}#{k}: {resp.error}")
            return
        emit(item, k, resp.seed, resp.text, resp.prompt_tokens, resp.completion_tokens, resp.finish_reason == "stop", False)

    requests = _embedded_requests(cfg.complete, spec, todo, stage_seed)
    try:
        client.complete(requests, on_result=on_result, collect=False, total=len(requests), description="complete embedded")
    finally:
        client.close()
    if failures:
        log.warning("embedded baseline: %d completions failed, e.g. %s", len(failures), failures[0])
    info["failed"] = len(failures)
    return info
