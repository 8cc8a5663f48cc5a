"""Judge-free evaluation signals: they cost no LLM request and do not depend on the judge.

- perplexity of each completion given its beginning under a reference LM (a HF causal LM
  directory, or the LLM layer's embedded model when its backend can score tokens), and the same
  discrimination check the judge gets: the share of (original, damaged) pairs where the
  original has the lower perplexity;
- contamination: word n-gram overlap between every evaluation prompt and the training stories;
- word compliance (the paper's instruction-following signal without a judge): per model, the
  share of its instruction completions that contain every requested word, and the mean share
  of requested words present (any inflection counts: "jumped" for jump, "mice" for mouse).
"""

from __future__ import annotations

import math
import random
import re
import statistics
from pathlib import Path
from typing import Callable, Iterable

from tinystories.errors import UserError
from tinystories.eval.damage import DAMAGES
from tinystories.eval.grading import completion_key, discrimination_table
from tinystories.eval.stats import mean_ci, proportion_ci

# -- contamination -----------------------------------------------------------------------------

_WORD = re.compile(r"[a-z0-9']+")


def words_of(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def ngrams(words: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def contamination(prompts: dict[str, str], stories: Iterable[dict], n: int) -> dict:
    """Word n-gram overlap between each prompt and the training stories (streamed once)."""
    wanted: dict[tuple[str, ...], set[str]] = {}
    per_prompt: dict[str, dict] = {}
    for pid, text in prompts.items():
        grams = ngrams(words_of(text), n)
        per_prompt[pid] = {"ngrams": len(grams), "matched": set(), "example_story": None}
        for g in grams:
            wanted.setdefault(g, set()).add(pid)
    scanned = 0
    for story in stories:
        scanned += 1
        text = story.get("text") or story.get("story") or ""
        w = words_of(text)
        for i in range(len(w) - n + 1):
            gram = tuple(w[i : i + n])
            for pid in wanted.get(gram, ()):
                rec = per_prompt[pid]
                rec["matched"].add(gram)
                if rec["example_story"] is None:
                    rec["example_story"] = story.get("id", scanned - 1)
    out = {}
    for pid, rec in per_prompt.items():
        matched = len(rec["matched"])
        out[pid] = {
            "ngrams": rec["ngrams"],
            "matched": matched,
            "share": round(matched / rec["ngrams"], 4) if rec["ngrams"] else None,
            "example_story": rec["example_story"],
        }
    return {"n": n, "stories_scanned": scanned, "prompts": out, "flagged": sorted(p for p, r in out.items() if r["matched"])}


def prompt_contamination(completions: Iterable[dict], stories: Iterable[dict], n: int) -> dict:
    """`contamination` of every distinct evaluation prompt the completions answer."""
    prompts: dict[str, str] = {}
    for rec in completions:
        prompts.setdefault(rec["prompt_id"], rec["prompt"])
    return contamination(prompts, stories, n)


# -- word compliance ---------------------------------------------------------------------------


def word_compliance(completions: Iterable[dict], words_used: Callable[[str, list[str]], dict | None] | None = None) -> dict:
    """Per model, over its instruction completions whose instruction requests words: the share
    containing ALL of them (with its 95% Wilson interval) and the mean share of them present (mean
    and 95% CI half-width over completions).

    A word counts in any inflection under any part of speech, decided by the same check the data
    filters apply to generated stories (`text.words.words_used`), so "present" means the same here
    as in data/stats.json.
    """
    models: dict[str, dict] = {}
    for rec in completions:
        if rec["task"] != "instruct":
            continue
        m = models.setdefault(rec["model"], {"kind": rec["kind"], "instruction_completions": 0, "all": [], "shares": []})
        m["instruction_completions"] += 1
        words = [w for w in rec.get("words") or [] if str(w).strip()]
        if not words:
            continue  # e.g. a Summary-only instruction: nothing to count
        if words_used is None:
            from tinystories.text.words import words_used
        used = words_used(rec["text"], words) or {}
        present = sum(bool(used.get(w)) for w in dict.fromkeys(words))
        total = len(dict.fromkeys(words))
        m["all"].append(1.0 if present == total else 0.0)
        m["shares"].append(present / total)
    out = {
        name: {
            "kind": m["kind"],
            "instruction_completions": m["instruction_completions"],
            "n": len(m["all"]),
            "all_words": proportion_ci(int(sum(m["all"])), len(m["all"])),
            "words_present": mean_ci(m["shares"]),
        }
        for name, m in sorted(models.items())
    }
    return {"method": "a requested word is present when the completion contains it or any of its inflections as noun, verb or adjective", "models": out}


# -- reference perplexity ----------------------------------------------------------------------

Scorer = Callable[[str, str], list[float]]


def hf_scorer(path: str | Path, device: str = "cpu") -> tuple[Scorer, dict]:
    """log p(token | prefix, earlier tokens) for the continuation's tokens under a HF causal LM."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not (path / "config.json").exists():
        raise UserError(f"judge.reference: {path} is not a HF causal LM directory (no config.json); use embedded, none or a save_pretrained path")
    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path)).to(device).eval()
    start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    limit = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None) or 2048

    def score(prefix: str, continuation: str) -> list[float]:
        ctx = ([start] if start is not None else []) + tok(prefix, add_special_tokens=False).input_ids
        target = tok(continuation, add_special_tokens=False).input_ids
        if not target or not ctx:
            return []
        ids = (ctx + target)[-limit:]
        n_target = min(len(target), len(ids) - 1)
        with torch.inference_mode():
            logits = model(torch.tensor([ids], device=device)).logits[0].float()
        logp = torch.log_softmax(logits[-n_target - 1 : -1], dim=-1)
        picked = logp.gather(-1, torch.tensor(ids[-n_target:], device=device).unsqueeze(-1)).squeeze(-1)
        return picked.tolist()

    return score, {"reference": "hf", "path": str(path)}


def embedded_scorer(llm_cfg) -> tuple[Scorer | None, dict]:
    """The embedded model's token log-probabilities, when its backend can give them."""
    import dataclasses

    from tinystories.llm import client as client_mod
    from tinystories.llm.config import LLMConfig

    if llm_cfg.backend != "embedded":
        llm_cfg = dataclasses.replace(LLMConfig(), n_threads=llm_cfg.n_threads)  # the judge is remote; score with the default embedded model
    # Through make_backend, like every LLM use, so a test's scripted backend replaces it too.
    backend = client_mod.make_backend(llm_cfg)
    score = getattr(backend, "token_logprobs", None)
    if score is None:
        return None, {"reference": "embedded", "unavailable": f"the {backend.name} backend cannot score tokens"}
    return score, {"reference": "embedded", **backend.identity()}


def make_scorer(reference: str, llm_cfg) -> tuple[Scorer | None, dict]:
    """The scorer `judge.reference` names (embedded | none | a HF directory), and its identity."""
    if reference == "none":
        return None, {"reference": "none"}
    if reference == "embedded":
        return embedded_scorer(llm_cfg)
    return hf_scorer(Path(reference).expanduser())


def perplexity(logprobs: list[float]) -> float | None:
    return math.exp(-sum(logprobs) / len(logprobs)) if logprobs else None


def perplexity_section(scorer: Scorer | None, info: dict, completions: list[dict], damaged: list[dict], max_per_model: int, seed: int) -> dict:
    """Perplexity per model over a seeded sample of its completions, and the share of the judge's
    damaged pairs (`damaged`: plan items with source, key, damage, text) where the original wins."""
    if scorer is None:
        return {**info, "models": {}, "discrimination": {}}
    chosen = perplexity_sample(completions, max_per_model, seed)
    sources = {completion_key(item["source"]): item["source"] for item in damaged}
    jobs = [(completion_key(r), r["prompt"], r["text"]) for r in chosen]
    jobs += [(k, s["prompt"], s["text"]) for k, s in sources.items()]
    jobs += [(item["key"], item["source"]["prompt"], item["text"]) for item in damaged]
    logprobs = score_texts(scorer, jobs)
    return {**info, "models": model_perplexities(chosen, logprobs), "discrimination": perplexity_discrimination(damaged, logprobs)}


def perplexity_sample(completions: list[dict], max_per_model: int, seed: int) -> list[dict]:
    """Every non-empty completion, or a seeded sample of `max_per_model` per model (0 = all)."""
    by_model: dict[str, list[dict]] = {}
    for rec in completions:
        if rec["text"].strip():
            by_model.setdefault(rec["model"], []).append(rec)
    chosen: list[dict] = []
    for model, recs in sorted(by_model.items()):
        if max_per_model and len(recs) > max_per_model:
            recs = random.Random(f"{seed}|ppl|{model}").sample(recs, max_per_model)
        chosen.extend(recs)
    return chosen


def score_texts(scorer: Scorer, jobs: list[tuple[str, str, str]]) -> dict[str, list[float]]:
    """Token log-probabilities per job key, each distinct key scored once."""
    from tinystories.progress import progress_bar

    out: dict[str, list[float]] = {}
    with progress_bar("perplexity", len(jobs), unit="text") as bar:
        for key, prefix, text in jobs:
            if key not in out:
                out[key] = scorer(prefix, text)
            bar.advance(1)
    return out


def model_perplexities(chosen: list[dict], logprobs: dict[str, list[float]]) -> dict:
    """Per model: token-weighted perplexity, median per completion, completions and tokens scored."""
    models: dict[str, dict] = {}
    for rec in chosen:
        lp = logprobs[completion_key(rec)]
        m = models.setdefault(rec["model"], {"nll": 0.0, "tokens": 0, "per": []})
        if lp:
            m["nll"] -= sum(lp)
            m["tokens"] += len(lp)
            m["per"].append(perplexity(lp))
    return {
        name: {
            "ppl": round(math.exp(m["nll"] / m["tokens"]), 4) if m["tokens"] else None,
            "median_ppl": round(statistics.median(m["per"]), 4) if m["per"] else None,
            "n": len(m["per"]),
            "tokens": m["tokens"],
        }
        for name, m in sorted(models.items())
    }


def perplexity_discrimination(damaged: list[dict], logprobs: dict[str, list[float]]) -> dict:
    """Per damage: the share of pairs where the original has the lower perplexity."""
    disc: dict[str, dict] = {}
    for kind in DAMAGES:
        pairs = []
        for item in damaged:
            if item["damage"] != kind:
                continue
            a, b = perplexity(logprobs[completion_key(item["source"])]), perplexity(logprobs[item["key"]])
            if a is not None and b is not None:
                pairs.append(({"ppl": a}, {"ppl": b}))
        table = discrimination_table(pairs, lower_is_better=True, keys=("ppl",))
        disc[kind] = {"n_pairs": table["n_pairs"], "share_original_lower": table["share_original_better"].get("ppl")}
    return disc
