"""The report's PNG charts, drawn with matplotlib from eval/scores.json and the training metrics.

Each chart function returns False (and draws nothing) when its data are missing, so the report
can say why a chart is absent instead of showing an empty one.
"""

from __future__ import annotations

from pathlib import Path

from tinystories.eval.grading import CATEGORIES

CATEGORY_COLORS = {"grammar": "tab:blue", "creativity": "tab:orange", "consistency": "tab:green", "plot": "tab:red"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    return plt


def draw_charts(models: dict, params: dict[str, int], curves: dict[str, list[dict]], out_dir: Path, dpi: int) -> dict[str, bool]:
    """Every chart of the report, by file name: whether it was drawn."""
    return {
        "scores_by_model.png": chart_scores(models, "continue", CATEGORIES, out_dir / "scores_by_model.png", dpi, "Story completions: judge scores per model"),
        "instruct_scores.png": chart_scores(models, "instruct", CATEGORIES, out_dir / "instruct_scores.png", dpi, "Instruction following: judge scores per model"),
        "scores_vs_params.png": chart_vs_params(models, params, out_dir / "scores_vs_params.png", dpi),
        "val_loss.png": chart_val_loss({k: v for k, v in curves.items() if k.startswith("pretrain/")}, out_dir / "val_loss.png", dpi),
    }


def _save(fig, plt, path: Path, dpi: int) -> bool:
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return True


def chart_scores(models: dict, task: str, cats: tuple[str, ...], path: Path, dpi: int, title: str) -> bool:
    """Grouped bars: per judged model, its mean grade per category with the 95% CI."""
    names = [m for m in models if task in models[m]["tasks"] and models[m]["tasks"][task]["n_judged"]]
    if not names:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(names) + 2), 4.2))
    width = 0.8 / len(cats)
    for j, cat in enumerate(cats):
        means = [models[m]["tasks"][task]["categories"].get(cat, {}).get("mean") or 0 for m in names]
        errs = [models[m]["tasks"][task]["categories"].get(cat, {}).get("ci95") or 0 for m in names]
        xs = [i + (j - (len(cats) - 1) / 2) * width for i in range(len(names))]
        ax.bar(xs, means, width, yerr=errs, capsize=3, label=cat)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=20, ha="right")
    ax.set_ylim(0, 10)
    ax.set_ylabel("judge score (1-10), 95% CI")
    ax.set_title(title)
    ax.legend(ncol=len(cats), fontsize=8, loc="upper left")
    return _save(fig, plt, path, dpi)


def chart_vs_params(models: dict, params: dict[str, int], path: Path, dpi: int) -> bool:
    """Mean grade on story beginnings against parameter count, one line per kind and category."""
    series: dict[tuple[str, str], list[tuple[int, float, float]]] = {}
    for name, m in models.items():
        task = m["tasks"].get("continue")
        if not task or not params.get(name) or m["kind"] == "baseline":
            continue
        for cat in CATEGORIES:
            stat = task["categories"].get(cat) or {}
            if stat.get("mean") is not None:
                series.setdefault((m["kind"], cat), []).append((params[name], stat["mean"], stat.get("ci95") or 0))
    if not series:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for (kind, cat), pts in sorted(series.items()):
        pts.sort()
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], color=CATEGORY_COLORS[cat], marker="o" if kind == "base" else "s", linestyle="-" if kind == "base" else "--", capsize=3, label=f"{cat} ({kind})")
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("judge score (1-10)")
    ax.set_ylim(0, 10)
    ax.set_title("Scores vs model size (story beginnings)")
    ax.legend(fontsize=7)
    return _save(fig, plt, path, dpi)


def chart_val_loss(curves: dict[str, list[dict]], path: Path, dpi: int) -> bool:
    """Validation loss against training tokens seen, one line per model."""
    curves = {k: [m for m in v if m.get("val_loss") is not None and m.get("tokens") is not None] for k, v in curves.items()}
    curves = {k: v for k, v in curves.items() if v}
    if not curves:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for name, pts in sorted(curves.items()):
        ax.plot([p["tokens"] for p in pts], [p["val_loss"] for p in pts], marker=".", label=name)
    ax.set_xlabel("training tokens seen")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title("Validation loss vs tokens seen")
    ax.legend(fontsize=8)
    return _save(fig, plt, path, dpi)
