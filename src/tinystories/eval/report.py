"""Write the run's report: report/results.md and PNG charts, every number read from the run directory.

    tinystories report --run-dir runs/quickstart

Reads eval/scores.json and eval/completions.jsonl (required), and when present eval/models.json,
pretrain/<size>/metrics.jsonl, sft/<size>/metrics.jsonl, data/stats.json, data/stories.jsonl,
config.yaml and manifest.json. A missing optional input gives a section that says what is
missing and which stage makes it, never a failure. A correct run writes report/results.md and,
where the data exist, report/scores_by_model.png, report/scores_vs_params.png,
report/val_loss.png and report/instruct_scores.png (drawn by eval/charts.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinystories.errors import UserError
from tinystories.eval.charts import draw_charts
from tinystories.eval.grading import CATEGORIES as CATS
from tinystories.eval.report_judge import category_heading, grades_preamble, reliability_section, trust_banner
from tinystories.eval.markdown import fmt, fmt_params, fmt_proportion, fmt_score, fmt_share, fmt_share_ci, table  # noqa: F401 (fmt_* and table are the report's API)
from tinystories.io.layout import COMPLETIONS, EVAL_MODELS, PRETRAIN_DIR, REPORT_DIR, RESULTS, SCORES, SFT_DIR, STORIES, STORY_STATS
from tinystories.io.rundir import RunDir, read_json, read_jsonl, write_text

NAME = "report"
SECTION = "report"
USES = ()  # reads no other config section: every number comes from the run directory's files

SMALL_RUN_STORIES = 100_000  # below this many stories a run is a demonstration, not a reproduction

log = logging.getLogger("tinystories.eval.report")


@dataclass
class Config:
    samples_per_model: int = 3  # sample completions shown per model (all for the same prompt)
    sample_chars: int = 700  # cut shown completions after this many characters
    dpi: int = 120  # chart resolution


def inputs(cfg) -> list[str]:
    return [SCORES, COMPLETIONS]


def outputs(cfg) -> list[str]:
    return [RESULTS]


# -- reading -----------------------------------------------------------------------------------


def _read_metrics(path: Path) -> list[dict]:
    return list(read_jsonl(path)) if path.exists() else []


def model_dirs(rundir: RunDir) -> dict[str, Path]:
    out = {}
    for group in (PRETRAIN_DIR, SFT_DIR):
        root = rundir.path(group)
        if root.is_dir():
            for d in sorted(root.iterdir()):
                if d.is_dir():
                    out[f"{group}/{d.name}"] = d
    return out


def _last_val(metrics: list[dict]) -> dict | None:
    vals = [m for m in metrics if m.get("val_loss") is not None]
    return vals[-1] if vals else None


def read_scores(rundir: RunDir) -> dict:
    scores = read_json(rundir.path(SCORES))
    for key in ("models", "reliability", "judge"):
        if key not in scores:
            raise UserError(f"{rundir.path(SCORES)}: no {key!r} section; rerun `tinystories judge --force --run-dir {rundir.root}`")
    return scores


# -- the stage ---------------------------------------------------------------------------------


def run(cfg, rundir: RunDir, force: bool = False) -> dict:
    c: Config = cfg.report
    scores = read_scores(rundir)
    completions = list(read_jsonl(rundir.path(COMPLETIONS)))
    models_info = read_json(rundir.path(EVAL_MODELS)).get("models", {}) if rundir.path(EVAL_MODELS).exists() else {}
    out_dir = rundir.path(REPORT_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    models = scores["models"]
    params = {name: info.get("params") for name, info in models_info.items() if info.get("params")}
    curves = {name: _read_metrics(d / "metrics.jsonl") for name, d in model_dirs(rundir).items()}
    charts = draw_charts(models, params, curves, out_dir, c.dpi, scores)
    md = render(scores, completions, models_info, curves, rundir.manifest(), rundir, charts, c)
    write_text(rundir.path(RESULTS), md)
    return {"charts": sorted(k for k, v in charts.items() if v), "models": len(models), "unreliable_judge": bool(scores["reliability"].get("unreliable"))}


def render(scores: dict, completions: list[dict], models_info: dict, curves: dict[str, list[dict]], manifest: dict, rundir: RunDir, charts: dict, c: Config) -> str:
    """results.md: a warning when the judge is unreliable, then one section per heading."""
    models = scores["models"]
    ppl = scores.get("perplexity", {})
    sections = [
        ("Scale of this run", scale_section(rundir, curves, completions, models)),
        ("Judge scores: story completions", continue_scores_section(scores, models_info, charts) + age_groups_section(scores)),
        ("Instruction following", instruct_section(scores, charts)),
        ("Instruction following (judge-free)", compliance_section(scores.get("word_compliance"))),
        ("Base vs instruct", base_vs_instruct_section(scores)),
        ("Judge reliability", reliability_section(scores["reliability"], ppl)),
        ("Perplexity under a reference model", perplexity_section(ppl)),
        ("Validation loss", val_loss_section(curves, charts)),
        ("Sample completions", sample_section(completions, c)),
        ("Contamination check", contamination_section(scores.get("contamination", {}))),
        ("Dataset", dataset_section(rundir)),
        ("Who wrote, trained and judged", provenance_section(rundir, scores, models_info)),
        ("Stages: wall time and key metrics", stages_section(manifest)),
    ]
    L = header_section(scores, rundir)
    for title, lines in sections:
        L += [f"## {title}", "", *lines]
    return "\n".join(L).rstrip() + "\n"


# -- the sections, in report order; each returns its lines, blank-line separated ----------------


def header_section(scores: dict, rundir: RunDir) -> list[str]:
    return ["# TinyStories run report", "", *trust_banner(scores), f"Run directory: `{rundir.root}`.", ""]


def scale_section(rundir: RunDir, curves: dict[str, list[dict]], completions: list[dict], models: dict) -> list[str]:
    """How big this run is, and whether its figures can be compared with the paper's."""
    stories = rundir.path(STORIES)
    n_stories = sum(1 for _ in read_jsonl(stories)) if stories.exists() else None
    tokens_seen = {name: (m[-1].get("tokens") if m else None) for name, m in curves.items() if name.startswith(f"{PRETRAIN_DIR}/")}
    scale = [f"{fmt(n_stories)} stories in {STORIES}" if n_stories is not None else f"no {STORIES} in this run directory (stories were not generated here)"]
    scale += [f"{name} trained on {fmt(tok)} tokens" for name, tok in sorted(tokens_seen.items())]
    scale.append(f"{fmt(len(completions))} completions from {fmt(len(models))} models")
    L = ["This run: " + "; ".join(scale) + ".", ""]
    if n_stories is None or n_stories < SMALL_RUN_STORIES:
        return L + ["**This is a small run: it demonstrates that the pipeline works end to end, not the paper's quality** (the paper trains on a synthetic corpus of millions of stories). Read the figures below as a test of the machinery.", ""]
    return L + ["The figures below describe this run only; compare them with the paper's only where the data, model sizes and judge match.", ""]


def scoring_note(judge: dict) -> list[str]:
    """How a grade was read from the judge: the tables mean different things under the two."""
    if judge.get("scoring") == "expected":
        return [f"Grades are expected grades (G-Eval): the judge's probability for each grade 1-10 where it writes the grade, averaged; a grade with less than {fmt_share(judge.get('min_grade_mass'))} of the probability on 1-10 is a failure, not a score.", ""]
    if judge.get("scoring") == "sampled":
        return ["Grades are the numbers the judge wrote in its reply (one sample each).", ""]
    return []


def grade_headings(scores: dict) -> list[str]:
    """The grade columns' headings, each with its category's reliability (eval/report_judge.py)."""
    return [category_heading(cat, scores["reliability"]) for cat in CATS]


def continue_scores_section(scores: dict, models_info: dict, charts: dict) -> list[str]:
    """Every model's grades on the shared story beginnings, with parse failures and charts."""
    models = scores["models"]
    rows = []
    for name, m in models.items():
        t = m["tasks"].get("continue")
        if t:
            rows.append([name, m["kind"], fmt_params(models_info.get(name, {}).get("params")), *[fmt_score(t["categories"].get(cat)) for cat in CATS], fmt(t["n_judged"]), fmt(t["n_failed"])])
    L: list[str] = []
    if rows:
        L += ["Mean grade out of 10 ± the half-width of its 95% confidence interval (over completions), for every model on the same story beginnings.", "", *grades_preamble(scores)]
        L += table(["model", "kind", "params", *grade_headings(scores), "judged", "failed"], rows)
        L += [""]
        if charts.get("scores_by_model.png"):
            L += ["![scores per model](scores_by_model.png)", ""]
        failed = {name: m["tasks"]["continue"]["failure_reasons"] for name, m in models.items() if m["tasks"].get("continue", {}).get("failure_reasons")}
        if failed:
            L += ["Judge replies that could not be parsed (after retries) are counted as failures above, not as zeros. Reasons: " + "; ".join(f"{n}: " + ", ".join(f"{r} ({k})" for r, k in v.items()) for n, v in failed.items()) + ".", ""]
    else:
        L += ["No model completed the story beginnings (see `complete.models`).", ""]
    if charts.get("scores_vs_params.png"):
        return L + ["![scores vs parameters](scores_vs_params.png)", ""]
    return L + [f"No scores-vs-parameters chart: it needs judged models with known parameter counts ({EVAL_MODELS} from `tinystories complete`).", ""]


def age_groups_section(scores: dict) -> list[str]:
    age_names = scores.get("age_groups", {})
    rows = []
    for name, m in scores["models"].items():
        for task, t in m["tasks"].items():
            if t.get("age_groups"):
                total = sum(t["age_groups"].values())
                rows.append([name, task] + [fmt_share(t["age_groups"].get(g, 0) / total) for g in age_names])
    missing = sum(t.get("age_group_failed", 0) for m in scores["models"].values() for t in m["tasks"].values())
    note = [f"{fmt(missing)} judged completions got no age group: the judge put too little probability on the letters A-F (their grades stand).", ""] if missing else []
    if not rows:
        return note
    return ["Age group the judge guessed for the writer (share of judged completions with one):", "", *table(["model", "task"] + [f"{g} ({v})" for g, v in age_names.items()], rows), "", *note]


def instruct_section(scores: dict, charts: dict) -> list[str]:
    models = scores["models"]
    rows = []
    for name, m in models.items():
        t = m["tasks"].get("instruct")
        if t:
            rows.append([name, *[fmt_score(t["categories"].get(cat)) for cat in CATS], fmt(t["n_judged"]), fmt(t["n_failed"])])
    if not rows:
        return ["No instruct (SFT) model in this run: run `tinystories instruct-data` and `tinystories sft`, then `complete` again.", ""]
    L = [*grades_preamble(scores, first=False), *table(["model", *grade_headings(scores), "judged", "failed"], rows), ""]
    if charts.get("instruct_scores.png"):
        L += ["![instruction following](instruct_scores.png)", ""]
    return L


def base_vs_instruct_section(scores: dict) -> list[str]:
    """sft/<size> next to pretrain/<size> on the same beginnings: what instruction tuning changed."""
    models = scores["models"]
    pairs = []
    for name, m in models.items():
        if m["kind"] == "instruct" and name.startswith(f"{SFT_DIR}/"):
            base = f"{PRETRAIN_DIR}/{name.split('/', 1)[1]}"
            if base in models and "continue" in models[base]["tasks"] and "continue" in m["tasks"]:
                pairs.append((base, name))
    if not pairs:
        return ["No base/instruct pair of the same size completed the story beginnings, so there is nothing to compare.", ""]
    rows = []
    for base, inst in pairs:
        bt, it = models[base]["tasks"]["continue"]["categories"], models[inst]["tasks"]["continue"]["categories"]
        rows.append([f"{base} → {inst}", *[f"{fmt_score(bt.get(cat))} → {fmt_score(it.get(cat))}" for cat in CATS]])
    return ["The same story beginnings, before and after instruction tuning:", "", *grades_preamble(scores, first=False), *table(["models", *grade_headings(scores)], rows), ""]


def perplexity_section(ppl: dict) -> list[str]:
    if not ppl.get("models"):
        why = f": {ppl['unavailable']}" if ppl.get("unavailable") else ""
        return [f"Not measured (judge.reference is {ppl.get('reference', 'not set')}{why}).", ""]
    rows = [[name, fmt(p.get("ppl")), fmt(p.get("median_ppl")), fmt(p.get("n")), fmt(p.get("tokens"))] for name, p in ppl["models"].items()]
    return [
        f"Perplexity of each model's completions given their beginnings, under {ppl.get('reference')} {ppl.get('model') or ppl.get('path') or ''} (lower = more like the reference model's idea of a likely continuation):",
        "",
        *table(["model", "perplexity (token-weighted)", "median per completion", "completions", "tokens"], rows),
        "",
    ]


def val_loss_section(curves: dict[str, list[dict]], charts: dict) -> list[str]:
    rows = []
    for name, m in sorted(curves.items()):
        last = _last_val(m)
        if last:
            rows.append([name, fmt(last.get("val_loss"), 4), fmt(last.get("val_bpb"), 4), fmt(last.get("tokens")), fmt(last.get("step"))])
    if not rows:
        return [f"No metrics.jsonl with validation passes under {PRETRAIN_DIR}/ or {SFT_DIR}/ (run `tinystories pretrain`).", ""]
    L = ["Last validation pass of each model: loss in nats per token, and in bits per byte (comparable across tokenizers).", ""]
    L += table(["model", "val loss (nats/token)", "val bits/byte", "tokens seen", "step"], rows)
    L += [""]
    if charts.get("val_loss.png"):
        L += ["![validation loss](val_loss.png)", ""]
    return L


def contamination_section(cont: dict) -> list[str]:
    if not cont.get("n"):
        return ["Not checked (judge.contamination_n is 0).", ""]
    flagged = cont.get("flagged", [])
    L = [f"Word {cont['n']}-grams of every evaluation prompt searched in {fmt(cont.get('stories_scanned'))} training stories: {fmt(len(flagged))} of {fmt(len(cont.get('prompts', {})))} prompts share at least one.", ""]
    if flagged:
        L += table(["prompt", "shared n-grams", "share of its n-grams", "e.g. story"], [[p, fmt(cont["prompts"][p]["matched"]), fmt_share(cont["prompts"][p]["share"]), str(cont["prompts"][p]["example_story"])] for p in flagged])
        L += [""]
    return L


def stages_section(manifest: dict) -> list[str]:
    rows = []
    for name, rec in manifest.get("stages", {}).items():
        if name == NAME:
            continue  # this stage is still running while it writes the report
        metrics = _flat_numbers(rec.get("metrics") or {})
        keys = list(metrics)[:5]
        rows.append([name, rec.get("status", "-"), fmt(rec.get("wall_s")), ", ".join(f"{k} {fmt(metrics[k])}" for k in keys)])
    if not rows:
        return ["manifest.json records no stages.", ""]
    return [*table(["stage", "status", "wall s", "metrics"], rows), ""]


def _flat_numbers(metrics: dict) -> dict:
    """Numbers of a stage's metrics, one level of nesting flattened: training stages report per size
    ({"1M": {"val_loss": ...}}), which would otherwise leave their row empty."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            for sub in ("val_loss", "tokens_per_s", "wall_s"):
                v = value.get(sub)
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    out[f"{key} {sub}"] = v
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = value
    return out


def compliance_section(wc: dict | None) -> list[str]:
    """Word compliance per model from scores.json's word_compliance block (made by the judge stage)."""
    if wc is None:
        return ["Not measured: eval/scores.json has no word_compliance block (it was made by an older judge stage; rerun `tinystories judge --force`).", ""]
    rows = [
        [name, m.get("kind", "n/a"), fmt(m.get("n")), fmt_proportion(m.get("all_words")), fmt_share_ci(m.get("words_present"))]
        for name, m in (wc.get("models") or {}).items()
        if m.get("n")
    ]
    if not rows:
        return ["No model completed an instruction that requests words, so word compliance was not measured (run `tinystories complete` with instructions that carry a words list).", ""]
    L = [
        "The paper's instruction-following signal, counted without a judge: how often a story contains the words its instruction asked for. "
        "A word counts in any of its inflections (\"jumped\" for jump, \"mice\" for mouse). Over each model's completions of instructions that list words: how many contain every requested word (count/n = share, [95% Wilson interval]), and the mean share of the requested words present (± the half-width of its 95% confidence interval, in percentage points).",
        "",
    ]
    L += table(["model", "kind", "instruction completions with words", "contain all requested words", "mean share of requested words present"], rows)
    L += [""]
    if not any(m.get("kind") == "base" and m.get("n") for m in wc["models"].values()):
        L += ["No base model completed the instructions (`complete.base_instructions` is off, or no base model was completed), so there is no baseline to compare with.", ""]
    else:
        L += ["Base (pretrained) models got the same `### Instruction: ... ### Response:` text as the instruct models, as a plain prefix: they never saw that format in training, so their row is the baseline that instruction tuning should beat (base-model instruction completions are not sent to the LLM judge).", ""]
    return L


def sample_section(completions: list[dict], c: Config) -> list[str]:
    cont = [r for r in completions if r["task"] == "continue"]
    if not cont:
        return ["No story completions to show.", ""]
    models = sorted({r["model"] for r in cont})
    # The first prompt every model completed, so the samples can be compared side by side.
    common = sorted(set.intersection(*({r["prompt_id"] for r in cont if r["model"] == m} for m in models)))
    prompt_id = common[0] if common else sorted({r["prompt_id"] for r in cont})[0]
    prompt = next(r["prompt"] for r in cont if r["prompt_id"] == prompt_id)
    L = [f"Prompt `{prompt_id}`: *{prompt}*", ""]
    for m in models:
        recs = sorted((r for r in cont if r["model"] == m and r["prompt_id"] == prompt_id), key=lambda r: r["sample_id"])[: c.samples_per_model]
        L += [f"**{m}**", ""]
        if not recs:
            L += ["(no completion of this prompt)", ""]
        for r in recs:
            text = r["text"].strip()
            if len(text) > c.sample_chars:
                text = text[: c.sample_chars] + " …"
            L += [f"> {r['sample_id']}: …{text}".replace("\n", " "), ""]
    return L


def dataset_section(rundir: RunDir) -> list[str]:
    path = rundir.path(STORY_STATS)
    if not path.exists():
        return [f"No {STORY_STATS} (made by `tinystories generate`).", ""]
    stats = read_json(path)
    rows = []

    def walk(prefix: str, obj: Any, depth: int) -> None:
        if isinstance(obj, dict) and depth < 2:
            for k, v in obj.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v, depth + 1)
        elif isinstance(obj, (int, float, str, bool)) or obj is None:
            rows.append([prefix, fmt(obj) if not isinstance(obj, str) else obj])
        elif isinstance(obj, list) and len(obj) <= 8 and all(isinstance(x, (int, float, str)) for x in obj):
            rows.append([prefix, ", ".join(str(x) for x in obj)])

    walk("", stats, 0)
    if not rows:
        return [f"{STORY_STATS} holds no figures.", ""]
    return [f"From {STORY_STATS}:", "", *table(["statistic", "value"], rows[:60]), ""]


def provenance_section(rundir: RunDir, scores: dict, models_info: dict) -> list[str]:
    L = []
    path = rundir.path(STORIES)
    if path.exists():
        writers: dict[str, int] = {}
        for rec in read_jsonl(path):
            who = " / ".join(str(rec[k]) for k in ("backend", "model") if rec.get(k)) or "unknown (no model field)"
            writers[who] = writers.get(who, 0) + 1
        L += ["Stories were written by:", ""]
        L += table(["backend / model", "stories"], [[k, fmt(v)] for k, v in sorted(writers.items(), key=lambda kv: -kv[1])])
        L += [""]
    else:
        L += [f"No {STORIES}: the data's authors are unknown to this report.", ""]
    j = scores.get("judge", {})
    judge_id = j.get("judge", {})
    L += [
        f"Judge: backend {judge_id.get('backend', 'n/a')}, model {judge_id.get('model', 'n/a')}, template {j.get('template_version', 'n/a')}, temperature {fmt(j.get('temperature'))}, max tokens {fmt(j.get('max_tokens'))}, mode {j.get('mode', 'n/a')}, scoring {j.get('scoring', 'n/a')}.",
        "",
        *scoring_note(j),
    ]
    if models_info:
        rows = []
        for name, info in models_info.items():
            rows.append([name, info.get("kind", "n/a"), fmt_params(info.get("params")), fmt(info.get("temperature")), fmt(info.get("top_p")), fmt(info.get("max_new_tokens")), fmt(info.get("samples")), fmt(info.get("completions"))])
        L += ["Completions were sampled with:", ""]
        L += table(["model", "kind", "params", "temperature", "top_p", "max new tokens", "samples per prompt", "completions"], rows)
        L += [""]
    return L
