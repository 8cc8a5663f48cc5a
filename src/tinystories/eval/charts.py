"""The PNG charts of the report and of `tinystories compare`, drawn with matplotlib.

Every chart function returns a `Chart` (what it drew: each bar or point with its mean, n and
interval as drawn, the legend, the trust line) or None when it has nothing to draw, so the report
can say why a chart is absent and the tests can check the drawing itself, not just that a PNG exists.

How the charts stay honest:
- a 95% interval is clipped to the 0-10 grade axis, and a cut end is drawn as an arrow instead
  of a cap (with 2-3 grades the t interval is wider than the scale);
- every bar or point carries its n, and a model without grades is drawn as "n=0", not dropped;
- base, instruct and baseline models have colours of their own (shades of one hue per kind);
- the legend sits outside the axes, right of the data;
- the judge's trust verdict per category is the chart's second title line (and under each
  category's tick), "not measured" where scores.json has none.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tinystories.eval.grading import CATEGORIES
from tinystories.io.rundir import atomic_path

GRADE_AXIS = (0.0, 10.0)  # the judge grades 1-10; the axis starts at 0 so a bar's height is its grade
KIND_COLORMAPS = {"base": "Blues", "instruct": "Oranges", "baseline": "Greys"}
OTHER_KIND_COLORMAP = "Purples"  # a kind this module does not know still gets a hue of its own
NOT_MEASURED = "not measured"
CLIPPED_LABEL = "interval cut at the axis"


@dataclass
class Mark:
    """One drawn bar or point: its grade (or value), n and interval exactly as drawn."""

    series: str  # the model (bars) or the line (grids) it belongs to
    category: str  # grammar ... plot, or val_bpb
    kind: str  # base | instruct | baseline
    x: float
    mean: float | None  # None: no grades, drawn as "n=0"
    n: int | None  # None: a value with no sample size (bits per byte)
    low: float | None  # the interval's ends after clipping to the axis
    high: float | None
    clipped_low: bool
    clipped_high: bool
    colour: str

    @property
    def n_label(self) -> str:
        return "" if self.n is None else f"n={self.n}"


@dataclass
class Chart:
    """What a chart function drew, returned so callers and tests can read it back."""

    path: Path
    title: str
    subtitle: str  # the judge's trust verdict per category
    marks: list[Mark] = field(default_factory=list)
    legend: list[str] = field(default_factory=list)
    legend_overlaps_data: bool = False  # measured on the drawn figure


@dataclass
class Series:
    """One line of a grid chart: points (x, stats per panel) of one kind of model."""

    label: str
    kind: str
    points: list[tuple[float, dict[str, dict]]]  # x, panel -> {"mean", "ci95", "n"}
    style: int = 0  # which marker / line style (one per run in a comparison)


@dataclass
class Panel:
    """One axes of a grid chart: a grade category (clipped to 0-10) or a free-scale value."""

    key: str
    ylabel: str
    bounds: tuple[float, float] | None = GRADE_AXIS  # None: the scale follows the data, nothing clipped


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    return plt


# -- the numbers a chart shows --------------------------------------------------------------------


def clip_interval(mean: float, ci95: float | None, bounds: tuple[float, float] | None = GRADE_AXIS) -> tuple[float, float, bool, bool]:
    """(low, high, low was cut, high was cut) of mean ± ci95 within `bounds`; no CI: both ends at the mean."""
    half = ci95 or 0.0
    low, high = mean - half, mean + half
    if bounds is None:
        return low, high, False, False
    return max(low, bounds[0]), min(high, bounds[1]), low < bounds[0], high > bounds[1]


def category_trust(scores: dict | None) -> dict[str, str]:
    """The judge's trust verdict per category ("trusted", "not trusted", or "not measured").

    Read from reliability.categories.<cat>.trusted (true/false) when the judge stage wrote
    per-category verdicts; else an unreliable judge makes every category "not trusted"
    (its scores are all suspect); anything else is "not measured"."""
    rel = (scores or {}).get("reliability") or {}
    per_category = rel.get("categories") if isinstance(rel.get("categories"), dict) else {}
    out = {}
    for cat in CATEGORIES:
        verdict = per_category.get(cat) if isinstance(per_category.get(cat), dict) else {}
        if isinstance(verdict.get("trusted"), bool):
            out[cat] = "trusted" if verdict["trusted"] else "not trusted"
        elif rel.get("unreliable") is True:
            out[cat] = "not trusted"
        else:
            out[cat] = NOT_MEASURED
    return out


def trust_line(trust: dict[str, str]) -> str:
    return "judge trust: " + " · ".join(f"{cat} {trust.get(cat, NOT_MEASURED)}" for cat in CATEGORIES)


def kind_colours(models: list[tuple[str, str]]) -> dict[str, str]:
    """Model -> colour: one hue per kind, one shade per model of that kind (darker = later)."""
    import matplotlib

    by_kind: dict[str, list[str]] = {}
    for name, kind in models:
        by_kind.setdefault(kind, []).append(name)
    out = {}
    for kind, names in by_kind.items():
        cmap = matplotlib.colormaps[KIND_COLORMAPS.get(kind, OTHER_KIND_COLORMAP)]
        for i, name in enumerate(names):
            # 0.45-0.95 of the map: shades far enough apart to tell, never so light they vanish on white.
            out[name] = matplotlib.colors.to_hex(cmap(0.45 + 0.5 * i / (len(names) - 1) if len(names) > 1 else 0.7))
    return out


def _mark(series: str, cat: str, kind: str, x: float, stat: dict | None, colour: str, bounds, with_n: bool = True) -> Mark:
    stat = stat or {}
    mean = stat.get("mean")
    n = int(stat.get("n") or 0) if with_n else None
    if mean is None:
        return Mark(series, cat, kind, x, None, n, None, None, False, False, colour)
    low, high, cut_low, cut_high = clip_interval(mean, stat.get("ci95"), bounds)
    return Mark(series, cat, kind, x, mean, n, low, high, cut_low, cut_high, colour)


# -- drawing ----------------------------------------------------------------------------------------


def _draw_interval(ax, m: Mark) -> None:
    """A vertical interval: caps where it ends inside the axis, arrows (lighter) where it was cut."""
    if m.mean is None or m.low == m.high:
        return
    ax.vlines(m.x, m.low, m.high, colors="black", linewidth=1)
    for end, cut, arrow in ((m.low, m.clipped_low, "v"), (m.high, m.clipped_high, "^")):
        if cut:
            # clip_on off: the arrow sits on the axis edge and must not be cut in half by it.
            ax.plot([m.x], [end], marker=arrow, color="dimgray", alpha=0.6, markersize=5, linestyle="none", clip_on=False)
        else:
            ax.plot([m.x], [end], marker="_", color="black", markersize=6, linestyle="none")


def _clipped_proxy():
    from matplotlib.lines import Line2D

    return Line2D([], [], marker="^", color="dimgray", alpha=0.6, linestyle="none", label=CLIPPED_LABEL)


def _legend_outside(fig, ax, handles) -> tuple[list[str], bool]:
    """The legend right of the axes; returns its labels and whether it covers the plotted area."""
    legend = ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=7, frameon=False)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    overlaps = legend.get_window_extent(renderer).overlaps(ax.get_window_extent(renderer))
    return [t.get_text() for t in legend.get_texts()], bool(overlaps)


def _save(fig, plt, path: Path, dpi: int) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")  # tight: keeps the outside legend in the file
    plt.close(fig)


# -- the bar chart: grades per model and category -----------------------------------------------------


def chart_scores(models: dict, task: str, cats: tuple[str, ...], path: Path, dpi: int, title: str, trust: dict[str, str] | None = None, every_model: bool = False) -> Chart | None:
    """Grouped bars: per category, one bar per model (its mean grade, clipped 95% CI, n).

    Models listed: those with `task` among their tasks (every model with `every_model`): a model
    without a judged completion gets an empty slot labelled n=0."""
    from matplotlib.patches import Patch

    names = [m for m in models if every_model or task in models[m]["tasks"]]
    if not names:
        return None
    trust = trust or {}
    colours = kind_colours([(m, models[m]["kind"]) for m in names])
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * len(names) * len(cats) + 2), 4.4))
    width = 0.8 / len(names)
    chart = Chart(path, title, trust_line(trust))
    for j, cat in enumerate(cats):
        for i, name in enumerate(names):
            stat = ((models[name]["tasks"].get(task) or {}).get("categories") or {}).get(cat)
            m = _mark(name, cat, models[name]["kind"], j + (i - (len(names) - 1) / 2) * width, stat, colours[name], GRADE_AXIS)
            chart.marks.append(m)
            if m.mean is not None:
                ax.bar(m.x, m.mean, width * 0.92, color=m.colour)
                _draw_interval(ax, m)
            # n at the foot of every bar; grey where there is no bar, so an ungraded model still shows.
            ax.text(m.x, 0.15, m.n_label, rotation=90, ha="center", va="bottom", fontsize=6, color="black" if m.mean is not None else "gray")
    ax.set_xlim(-0.5, len(cats) - 0.5)  # the labels of ungraded models (no bar) stay inside
    ax.set_xticks(range(len(cats)))
    ax.set_xticklabels([f"{cat}\n({trust.get(cat, NOT_MEASURED)})" for cat in cats], fontsize=8)
    ax.set_ylim(*GRADE_AXIS)
    ax.set_ylabel("judge grade (1-10), 95% CI")
    ax.set_title(f"{title}\n{chart.subtitle}", fontsize=9)
    handles = [Patch(color=colours[n], label=f"{n} ({models[n]['kind']})") for n in names] + [_clipped_proxy()]
    chart.legend, chart.legend_overlaps_data = _legend_outside(fig, ax, handles)
    _save(fig, plt, path, dpi)
    return chart


# -- the grid: one panel per category (and bits per byte) against parameters or tokens -------------


MARKERS, LINESTYLES = "os^Dv<>p", ["-", "--", ":", "-."]  # one per run (Series.style)


def chart_grid(series: list[Series], panels: list[Panel], x_label: str, path: Path, dpi: int, title: str, trust: dict[str, str] | None = None) -> Chart | None:
    """The paper's Figure 4 layout: one panel per grade category, x the model size (or training
    tokens, log scale), one line per kind of model; points carry clipped 95% CIs and their n."""
    from matplotlib.lines import Line2D

    series = [s for s in series if s.points]
    if not series:
        return None
    trust = trust or {}
    colours = {s.label: c for s, c in zip(series, _series_colours(series))}
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.0 * len(panels) + 1.5, 3.6), squeeze=False)
    chart = Chart(path, title, trust_line(trust))
    xs = sorted({x for s in series for x, _ in s.points})
    for ax, panel in zip(axes[0], panels):
        for s in series:
            chart.marks += _draw_series(ax, panel, s, colours[s.label])
        _log_x_axis(ax, xs)
        ax.set_xlabel(x_label, fontsize=8)
        ax.set_ylabel(panel.ylabel, fontsize=8)
        if panel.bounds:
            ax.set_ylim(*panel.bounds)
        ax.set_title(f"{panel.key} ({trust.get(panel.key, NOT_MEASURED)})" if panel.key in CATEGORIES else panel.ylabel, fontsize=8)
    fig.suptitle(f"{title}\n{chart.subtitle}", fontsize=9)
    handles = [Line2D([], [], color=colours[s.label], marker=_marker(s), linestyle=_linestyle(s), label=s.label) for s in series] + [_clipped_proxy()]
    fig.tight_layout()
    chart.legend, chart.legend_overlaps_data = _legend_outside(fig, axes[0][-1], handles)
    _save(fig, plt, path, dpi)
    return chart


def _marker(s: Series) -> str:
    return MARKERS[s.style % len(MARKERS)]


def _linestyle(s: Series) -> str:
    return LINESTYLES[s.style % len(LINESTYLES)]


def _draw_series(ax, panel: Panel, s: Series, colour: str) -> list[Mark]:
    """One line of one panel: points joined in x order, their intervals, their n; an ungraded
    point is a hollow marker on the floor of the axis labelled n=0."""
    marks = [_mark(s.label, panel.key, s.kind, x, stats.get(panel.key), colour, panel.bounds, with_n=panel.bounds is not None) for x, stats in sorted(s.points, key=lambda p: p[0])]
    drawn = [m for m in marks if m.mean is not None]
    ax.plot([m.x for m in drawn], [m.mean for m in drawn], color=colour, marker=_marker(s), linestyle=_linestyle(s), markersize=4)
    for m in marks:
        _draw_interval(ax, m)
        if m.mean is None and panel.bounds:
            ax.plot([m.x], [panel.bounds[0]], marker=_marker(s), markerfacecolor="none", color=colour, linestyle="none", clip_on=False)
        if m.n_label:
            y = m.mean if m.mean is not None else panel.bounds[0]
            ax.annotate(m.n_label, (m.x, y), textcoords="offset points", xytext=(4, 3), fontsize=6, color="gray" if m.mean is None else "black")
    return marks


def human_count(x: float) -> str:
    """1200000 -> 1.2M: tick labels for parameter and token counts."""
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.3g}"


MAX_DATA_TICKS = 6  # up to this many distinct x values, the ticks are the values themselves


def _log_x_axis(ax, xs: list[float]) -> None:
    """A log x axis labelled 1.2M / 30k; with few models, ticked at their own x (a short log
    axis may hold no power of ten at all)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

    ax.set_xscale("log")
    ax.margins(x=0.15)  # points at the smallest and largest x stay off the frame
    if len(xs) <= MAX_DATA_TICKS:
        ax.xaxis.set_major_locator(FixedLocator(xs))
        ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: human_count(x)))
    ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels on a short log axis pile up unreadably
    ax.tick_params(axis="x", labelsize=7, labelrotation=30)


def _series_colours(series: list[Series]) -> list[str]:
    colours = kind_colours([(f"{i}", s.kind) for i, s in enumerate(series)])
    return [colours[f"{i}"] for i in range(len(series))]


# -- the report's charts ------------------------------------------------------------------------------------


def draw_charts(models: dict, params: dict[str, int], curves: dict[str, list[dict]], out_dir: Path, dpi: int, scores: dict | None = None) -> dict[str, Chart | None]:
    """Every chart of the report, by file name: what was drawn (None: nothing to draw)."""
    trust = category_trust(scores)
    return {
        "scores_by_model.png": chart_scores(models, "continue", CATEGORIES, out_dir / "scores_by_model.png", dpi, "Story completions: judge grades per model", trust, every_model=True),
        "instruct_scores.png": chart_scores(models, "instruct", CATEGORIES, out_dir / "instruct_scores.png", dpi, "Instruction following: judge grades per model", trust),
        "scores_vs_params.png": chart_vs_params(models, params, out_dir / "scores_vs_params.png", dpi, trust),
        "val_loss.png": chart_val_loss({k: v for k, v in curves.items() if k.startswith("pretrain/")}, out_dir / "val_loss.png", dpi),
    }


GRADE_PANELS = [Panel(cat, "judge grade (1-10), 95% CI") for cat in CATEGORIES]


def chart_vs_params(models: dict, params: dict[str, int], path: Path, dpi: int, trust: dict[str, str] | None = None) -> Chart | None:
    """Grades on story beginnings against parameter count: one panel per category, one line per kind."""
    by_kind: dict[str, list] = {}
    for name, m in models.items():
        if params.get(name) and "continue" in m["tasks"]:
            by_kind.setdefault(m["kind"], []).append((params[name], m["tasks"]["continue"].get("categories") or {}))
    series = [Series(kind, kind, pts) for kind, pts in sorted(by_kind.items())]
    return chart_grid(series, GRADE_PANELS, "parameters", path, dpi, "Grades vs model size (story beginnings)", trust)


def chart_val_loss(curves: dict[str, list[dict]], path: Path, dpi: int) -> Chart | None:
    """Validation loss against training tokens seen, one line per model."""
    curves = {k: [m for m in v if m.get("val_loss") is not None and m.get("tokens") is not None] for k, v in curves.items()}
    curves = {k: v for k, v in curves.items() if v}
    if not curves:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    handles = []
    for name, pts in sorted(curves.items()):
        handles += ax.plot([p["tokens"] for p in pts], [p["val_loss"] for p in pts], marker=".", label=name)
    ax.set_xlabel("training tokens seen")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title("Validation loss vs tokens seen")
    chart = Chart(path, "Validation loss vs tokens seen", "")
    chart.legend, chart.legend_overlaps_data = _legend_outside(fig, ax, handles)
    _save(fig, plt, path, dpi)
    return chart
