"""The charts draw what they claim: clipped intervals marked as cut, n on every bar, ungraded
models as n=0, a colour per kind, the legend off the data, the judge's trust verdict in the title."""

from __future__ import annotations

import pytest

from tinystories.eval import charts
from tinystories.eval.grading import CATEGORIES

pytest.importorskip("matplotlib")


def stat(mean, ci95, n):
    return {"mean": mean, "ci95": ci95, "n": n}


def task(grades: dict[str, dict], n_judged: int) -> dict:
    return {"n_judged": n_judged, "n_failed": 0, "categories": grades}


def hand_made_scores() -> dict:
    """Three graded models (one with intervals past both ends of the axis) and one with no grades."""
    wide = {"grammar": stat(9.0, 3.5, 2), "creativity": stat(1.5, 2.0, 2), "consistency": stat(5.0, 1.0, 2), "plot": stat(4.0, None, 1)}
    narrow = {cat: stat(6.0, 0.5, 12) for cat in CATEGORIES}
    none = {cat: stat(None, None, 0) for cat in CATEGORIES}
    models = {
        "pretrain/1M": {"kind": "base", "tasks": {"continue": task(wide, 2)}},
        "pretrain/8M": {"kind": "base", "tasks": {"continue": task(narrow, 12)}},
        "sft/1M": {"kind": "instruct", "tasks": {"continue": task(none, 0), "instruct": task(narrow, 12)}},
        "baseline/ref": {"kind": "baseline", "tasks": {}},
    }
    reliability = {"unreliable": False, "categories": {"grammar": {"trusted": True}, "creativity": {"trusted": False}}}
    return {"models": models, "reliability": reliability}


def marks_of(chart, model: str) -> dict[str, charts.Mark]:
    return {m.category: m for m in chart.marks if m.series == model}


@pytest.fixture
def drawn(tmp_path):
    scores = hand_made_scores()
    params = {"pretrain/1M": 1_000_000, "pretrain/8M": 8_000_000, "sft/1M": 1_000_000}
    return scores, charts.draw_charts(scores["models"], params, {}, tmp_path, 60, scores), tmp_path


def test_intervals_are_clipped_to_the_axis_and_marked_as_cut(drawn):
    _, out, _ = drawn
    m = marks_of(out["scores_by_model.png"], "pretrain/1M")
    assert (m["grammar"].low, m["grammar"].high) == (5.5, 10.0), "9 ± 3.5 ends at the top of the axis"
    assert m["grammar"].clipped_high, "the cut top end is flagged"
    assert not m["grammar"].clipped_low, "5.5 is inside the axis"
    assert (m["creativity"].low, m["creativity"].high) == (0.0, 3.5), "1.5 ± 2 ends at the bottom of the axis"
    assert m["creativity"].clipped_low, "the cut bottom end is flagged"
    assert (m["plot"].low, m["plot"].high) == (4.0, 4.0), "n=1 has no interval"


def test_every_bar_carries_its_n_and_ungraded_models_are_n0(drawn):
    _, out, _ = drawn
    chart = out["scores_by_model.png"]
    assert {m.series for m in chart.marks} == {"pretrain/1M", "pretrain/8M", "sft/1M", "baseline/ref"}, "no model dropped"
    assert len(chart.marks) == 4 * len(CATEGORIES), "one mark per model and category"
    for m in marks_of(chart, "sft/1M").values():
        assert m.mean is None and m.n_label == "n=0", f"sft/1M {m.category} is drawn as n=0"
    assert marks_of(chart, "baseline/ref")["plot"].n_label == "n=0", "a model without the task is n=0 too"
    assert marks_of(chart, "pretrain/8M")["grammar"].n_label == "n=12"


def test_kinds_have_distinct_colours_and_the_legend_is_off_the_data(drawn):
    _, out, _ = drawn
    chart = out["scores_by_model.png"]
    colour = {m.series: m.colour for m in chart.marks}
    assert len(set(colour.values())) == 4, "every model has its own colour"
    blue, orange = charts.kind_colours([("a", "base")])["a"], charts.kind_colours([("b", "instruct")])["b"]
    assert blue != orange, "base and instruct hues differ"
    assert "sft/1M (instruct)" in chart.legend and "baseline/ref (baseline)" in chart.legend
    assert charts.CLIPPED_LABEL in chart.legend, "the legend explains the cut-interval arrow"
    for name, c in out.items():
        if c is not None:
            assert not c.legend_overlaps_data, f"{name}: legend overlaps the axes"


def test_trust_verdict_is_in_the_chart_and_missing_means_not_measured(drawn):
    _, out, _ = drawn
    sub = out["scores_by_model.png"].subtitle
    assert "grammar trusted" in sub
    assert "creativity not trusted" in sub
    assert "consistency not measured" in sub


def test_unreliable_judge_without_per_category_verdicts_trusts_nothing():
    trust = charts.category_trust({"reliability": {"unreliable": True}})
    assert set(trust.values()) == {"not trusted"}
    assert set(charts.category_trust({}).values()) == {charts.NOT_MEASURED}


def test_instruct_chart_lists_the_models_with_that_task(drawn):
    _, out, _ = drawn
    assert {m.series for m in out["instruct_scores.png"].marks} == {"sft/1M"}


def test_scores_vs_params_has_one_line_per_kind_with_clipped_points(drawn):
    _, out, tmp_path = drawn
    chart = out["scores_vs_params.png"]
    assert {m.series for m in chart.marks} == {"base", "instruct"}, "baseline/ref has no parameter count"
    top = next(m for m in chart.marks if m.series == "base" and m.category == "grammar" and m.x == 1_000_000)
    assert top.high == 10.0 and top.clipped_high, "the line chart clips like the bars"
    ungraded = [m for m in chart.marks if m.series == "instruct"]
    assert all(m.n_label == "n=0" for m in ungraded), "sft/1M is on the chart as n=0"
    assert (tmp_path / "scores_vs_params.png").read_bytes()[:4] == b"\x89PNG"


def test_nothing_to_draw_gives_none(tmp_path):
    out = charts.draw_charts({}, {}, {}, tmp_path, 60)
    assert all(c is None for c in out.values()), out
    assert not list(tmp_path.iterdir()), "no file written"


def test_trust_is_read_from_the_judge_stages_own_verdicts():
    from tinystories.eval.damage import DAMAGES
    from tinystories.eval.grading import TrustRules
    from tinystories.eval.grading import category_trust as judge_verdicts

    disc = {kind: {"n_pairs": 10, "share_original_better": dict.fromkeys(CATEGORIES, 1.0)} for kind in DAMAGES}
    disc["word_salad"]["share_original_better"]["creativity"] = 0.1  # salad graded as creative: not trusted
    cons = {"mean_abs_diff": dict.fromkeys(CATEGORIES, 0.2), "share_within_1": dict.fromkeys(CATEGORIES, 1.0)}
    trust = charts.category_trust({"reliability": {"categories": judge_verdicts(disc, cons, TrustRules()), "unreliable": False}})
    assert trust["creativity"] == "not trusted"
    assert trust["grammar"] == "trusted"
