"""Compare finished runs: grades and bits per byte against model size and training tokens.

    tinystories compare runs/small runs/large --out compare/

Reads from each run directory whatever of these it has: eval/scores.json (grades, the judge's
trust verdict), eval/models.json (parameter counts taken from the loaded weights),
manifest.json (the training stages' metrics), pretrain/<size>/ and sft/<size>/ (metrics.jsonl,
tinystories.json). Writes OUT/compare.md (one row per run and model: kind, parameters,
training tokens, validation bits per byte, grade ± 95% CI (n) per category) and, where the
data exist, OUT/compare_vs_params.png and OUT/compare_vs_tokens.png (the paper's Figure 4
layout: one panel per category, plus bits per byte) and OUT/compare_scores.png (bars).
A model that was trained but never judged is a row with n=0, not a missing row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tinystories.errors import UserError
from tinystories.eval.charts import GRADE_PANELS, NOT_MEASURED, Panel, Series, category_trust, chart_grid, chart_scores
from tinystories.eval.grading import CATEGORIES
from tinystories.eval.markdown import fmt, fmt_score, table
from tinystories.io.layout import CHECKPOINT_INFO, EVAL_MODELS, MANIFEST, PRETRAIN_DIR, SCORES, SFT_DIR
from tinystories.io.rundir import RunDir, read_json, read_jsonl, write_text

COMPARE_MD = "compare.md"
DPI = 120
KIND_OF_GROUP = {PRETRAIN_DIR: "base", SFT_DIR: "instruct", "baseline": "baseline"}
BPB_PANEL = Panel("val_bpb", "validation bits per byte", bounds=None)  # free scale: bpb is no grade
CHARTS = {"compare_vs_params.png": "parameters", "compare_vs_tokens.png": "training tokens"}


@dataclass
class ModelRow:
    """One model of one run, every number the comparison shows."""

    run: str
    model: str  # pretrain/8M, sft/8M, baseline/NAME
    kind: str  # base | instruct | baseline
    params: int | None
    pretrain_tokens: int | None  # tokens seen in pretraining (an instruct model's: its base's)
    sft_tokens: int | None  # tokens seen in instruction tuning (instruct models only)
    val_bpb: float | None  # the model's last validation pass (an instruct model's: on held-out responses)
    grades: dict[str, dict] = field(default_factory=dict)  # category -> {"mean", "ci95", "n"} on story beginnings

    @property
    def training_tokens(self) -> int | None:
        known = [t for t in (self.pretrain_tokens, self.sft_tokens) if t is not None]
        return sum(known) if known else None


@dataclass
class RunSummary:
    label: str
    root: Path
    judge: str  # who graded, in words; "" without scores.json
    trust: dict[str, str]
    rows: list[ModelRow]
    has_scores: bool


# -- reading one run --------------------------------------------------------------------------------


def _optional_json(path: Path) -> dict:
    return read_json(path) if path.is_file() else {}


def _last_metrics(model_dir: Path) -> dict:
    """The last row of metrics.jsonl with tokens, and the last validation pass's bits per byte."""
    path = model_dir / "metrics.jsonl"
    rows = list(read_jsonl(path)) if path.is_file() else []
    tokens = next((r["tokens"] for r in reversed(rows) if r.get("tokens") is not None), None)
    bpb = next((r["val_bpb"] for r in reversed(rows) if r.get("val_bpb") is not None), None)
    return {"tokens": tokens, "val_bpb": bpb}


def _trained_models(rundir: RunDir) -> list[str]:
    """pretrain/<size> and sft/<size> directories that hold a checkpoint or training metrics."""
    out = []
    for group in (PRETRAIN_DIR, SFT_DIR):
        root = rundir.path(group)
        if root.is_dir():
            out += [f"{group}/{d.name}" for d in sorted(root.iterdir()) if (d / CHECKPOINT_INFO).is_file() or (d / "metrics.jsonl").is_file()]
    return out


def _base_of(rundir: RunDir, model: str) -> str:
    """The pretrain/<size> an sft model was tuned from (tinystories.json's base), else the same size."""
    info = _optional_json(rundir.path(model) / CHECKPOINT_INFO)
    base = str(info.get("base") or "")
    if base and Path(base).is_absolute():
        try:
            base = Path(base).resolve().relative_to(rundir.root.resolve()).as_posix()
        except ValueError:
            return ""  # tuned from a checkpoint outside this run: its pretraining is unknown here
    return base or f"{PRETRAIN_DIR}/{model.split('/', 1)[1]}"


def read_run(root: Path, label: str) -> RunSummary:
    """Every model of the run directory `root` as a ModelRow."""
    rundir = RunDir(root)
    if not root.is_dir():
        raise UserError(f"compare: {root} is not a directory; pass run directories made by `tinystories run`, e.g. runs/quickstart")
    trained = _trained_models(rundir)
    scores = _optional_json(rundir.path(SCORES))
    models_info = _optional_json(rundir.path(EVAL_MODELS)).get("models", {})
    if not (scores or trained or models_info):
        raise UserError(f"compare: {root} holds no {SCORES}, {EVAL_MODELS}, {PRETRAIN_DIR}/ or {SFT_DIR}/; pass a run directory that has trained or evaluated models")
    stages = _optional_json(rundir.root / MANIFEST).get("stages", {})
    trained_metrics = {group: (stages.get(group) or {}).get("metrics") or {} for group in (PRETRAIN_DIR, SFT_DIR)}
    scored = scores.get("models", {})
    names = sorted(set(trained) | set(models_info) | set(scored))
    rows = [_model_row(rundir, label, name, scored.get(name, {}), models_info.get(name, {}), trained_metrics) for name in names]
    rows.sort(key=lambda r: (r.kind != "base", r.kind, r.params or 0, r.model))
    return RunSummary(label, root, _judge_words(scores), category_trust(scores) if scores else dict.fromkeys(CATEGORIES, NOT_MEASURED), rows, bool(scores))


def _model_row(rundir: RunDir, label: str, name: str, scored: dict, info: dict, trained_metrics: dict[str, dict]) -> ModelRow:
    group, _, size = name.partition("/")
    kind = scored.get("kind") or info.get("kind") or KIND_OF_GROUP.get(group, group)
    stage_metrics = trained_metrics.get(group, {}).get(size) or {}
    own = _last_metrics(rundir.path(name)) if group in (PRETRAIN_DIR, SFT_DIR) else {}
    pretrain_tokens = sft_tokens = None
    params = info.get("params")  # counted from the weights by `tinystories complete`
    if group == PRETRAIN_DIR:
        pretrain_tokens = own.get("tokens") if own.get("tokens") is not None else stage_metrics.get("tokens_seen")
        params = params or stage_metrics.get("params")
    elif group == SFT_DIR:
        sft_tokens = own.get("tokens")
        base = _base_of(rundir, name)
        base_size = base.partition("/")[2] if base.startswith(f"{PRETRAIN_DIR}/") else ""
        base_metrics = trained_metrics[PRETRAIN_DIR].get(base_size) or {}
        if base_size:
            base_own = _last_metrics(rundir.path(base))
            pretrain_tokens = base_own["tokens"] if base_own["tokens"] is not None else base_metrics.get("tokens_seen")
        params = params or base_metrics.get("params")  # tuning keeps the shape of its base
    bpb = own.get("val_bpb") if own.get("val_bpb") is not None else stage_metrics.get("val_bpb")
    grades = ((scored.get("tasks") or {}).get("continue") or {}).get("categories") or {}
    return ModelRow(label, name, kind, params, pretrain_tokens, sft_tokens, bpb, {cat: grades.get(cat) or {"mean": None, "ci95": None, "n": 0} for cat in CATEGORIES})


def _judge_words(scores: dict) -> str:
    j = scores.get("judge") or {}
    who = j.get("judge") or {}
    if not scores:
        return ""
    return f"{who.get('backend', 'n/a')} / {who.get('model', 'n/a')}, scoring {j.get('scoring', 'n/a')}, template {j.get('template_version', 'n/a')}"


def run_labels(roots: list[Path]) -> list[str]:
    """Each run's directory name, or its path where two runs share a name."""
    names = [r.resolve().name for r in roots]
    return [n if names.count(n) == 1 else str(r) for r, n in zip(roots, names)]


# -- charts ------------------------------------------------------------------------------------------


def combined_trust(runs: list[RunSummary]) -> dict[str, str]:
    """One verdict per category when every run agrees, else each run's."""
    out = {}
    for cat in CATEGORIES:
        verdicts = {r.label: r.trust.get(cat, NOT_MEASURED) for r in runs}
        out[cat] = next(iter(verdicts.values())) if len(set(verdicts.values())) == 1 else ", ".join(f"{k}: {v}" for k, v in verdicts.items())
    return out


def grid_series(runs: list[RunSummary], x_of) -> list[Series]:
    """One line per run and kind: points at x_of(row), with the grades and bits per byte."""
    out = []
    for style, run in enumerate(runs):
        by_kind: dict[str, list] = {}
        for row in run.rows:
            x = x_of(row)
            if x:
                by_kind.setdefault(row.kind, []).append((x, {**row.grades, BPB_PANEL.key: {"mean": row.val_bpb, "ci95": None}}))
        out += [Series(f"{run.label} {kind}", kind, pts, style) for kind, pts in sorted(by_kind.items())]
    return out


def draw_compare_charts(runs: list[RunSummary], out_dir: Path, dpi: int) -> dict:
    trust = combined_trust(runs)
    panels = [BPB_PANEL, *GRADE_PANELS]
    x_of = {"compare_vs_params.png": lambda r: r.params, "compare_vs_tokens.png": lambda r: r.training_tokens}
    charts = {name: chart_grid(grid_series(runs, x_of[name]), panels, x_label, out_dir / name, dpi, f"Bits per byte and judge grades vs {x_label}", trust) for name, x_label in CHARTS.items()}
    models = {f"{row.run} · {row.model}": {"kind": row.kind, "tasks": {"continue": {"categories": row.grades}}} for run in runs for row in run.rows}
    charts["compare_scores.png"] = chart_scores(models, "continue", CATEGORIES, out_dir / "compare_scores.png", dpi, "Story completions: judge grades per run and model", trust, every_model=True)
    return charts


# -- the markdown ------------------------------------------------------------------------------------


def fmt_grade(stat: dict, trust: str) -> str:
    """`mean ± ci95 (n=N)`; † where the judge is not trusted on this category in this run."""
    return f"{fmt_score(stat)} (n={int(stat.get('n') or 0)})" + (" †" if trust == "not trusted" else "")


def model_rows(runs: list[RunSummary]) -> list[list[str]]:
    return [
        [row.run, row.model, row.kind, fmt(row.params), fmt(row.pretrain_tokens), fmt(row.sft_tokens), fmt(row.val_bpb, 4), *[fmt_grade(row.grades[cat], run.trust.get(cat, NOT_MEASURED)) for cat in CATEGORIES]]
        for run in runs
        for row in run.rows
    ]


def render(runs: list[RunSummary], charts: dict) -> str:
    L = ["# Comparison of runs", ""]
    L += table(["run", "directory", "judge", *[f"trust: {cat}" for cat in CATEGORIES]], [[r.label, f"`{r.root}`", r.judge or f"no {SCORES} (run `tinystories judge`)", *[r.trust.get(cat, NOT_MEASURED) for cat in CATEGORIES]] for r in runs])
    L += [""]
    judges = {r.judge for r in runs if r.judge}
    if len(judges) > 1:
        L += ["**The runs were graded by different judges or scorings: their grades are not on one scale; compare bits per byte across them, and grades only within a run.**", ""]
    L += ["## Models", ""]
    L += [
        "One row per run and model. Parameters: counted from the weights (eval/models.json), else from the shape (manifest). "
        "Tokens: seen in training (an instruct model's pretraining tokens are its base's). Bits per byte: the last validation pass "
        "(for an instruct model, on held-out responses of the instruction data, so not comparable with a base model's). "
        "Grades on story beginnings: mean ± the half-width of the 95% confidence interval (n judged completions); n=0: not graded. "
        "† the judge is not trusted on that category in that run.",
        "",
    ]
    L += table(["run", "model", "kind", "params", "pretrain tokens", "SFT tokens", "val bits/byte", *CATEGORIES], model_rows(runs))
    L += ["", "## Charts", ""]
    for name, chart in charts.items():
        if chart:
            L += [f"![{chart.title}]({name})", ""]
        else:
            L += [f"No {name}: no model of these runs has the numbers it plots (parameter counts come from `tinystories complete`, tokens from training).", ""]
    return "\n".join(L).rstrip() + "\n"


def compare_runs(roots: list[Path], out_dir: Path, dpi: int = DPI) -> Path:
    """Write OUT/compare.md and its charts for the run directories `roots`; returns compare.md's path."""
    if not roots:
        raise UserError("compare: name at least one run directory, e.g. `tinystories compare runs/quickstart`")
    runs = [read_run(Path(root), label) for root, label in zip(roots, run_labels([Path(r) for r in roots]))]
    out_dir.mkdir(parents=True, exist_ok=True)
    charts = draw_compare_charts(runs, out_dir, dpi)
    path = out_dir / COMPARE_MD
    write_text(path, render(runs, charts))
    return path
