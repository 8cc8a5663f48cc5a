"""Grade parsing (strict on structure, lenient on decoration) and the confidence intervals."""

from __future__ import annotations

import math

import pytest

from tinystories.eval import grading, stats
from tinystories.llm import Reject

GOOD = """Assessment: The student finishes the sentence well and the story stays on the dog.
Grammar: 8/10
Creativity: 6/10
Consistency: 9/10
Plot: 7/10
Age group: B"""


# -- parser ------------------------------------------------------------------------------------


def test_parser_reads_good_replies():
    g = grading.parse_grades(GOOD)
    assert (g["grammar"], g["creativity"], g["consistency"], g["plot"], g["age_group"]) == (8, 6, 9, 7, "B")
    assert g["assessment"].startswith("The student finishes")
    md = "**Assessment:** fine.\n\n- **Grammar:** 7 out of 10\n- **Creativity:** 5\n- **Consistency:** 6/10\n- **Plot:** 4/10\n**Age group:** (C)"
    g = grading.parse_grades(md)
    assert (g["grammar"], g["creativity"], g["consistency"], g["plot"], g["age_group"]) == (7, 5, 6, 4, "C")


def test_a_dash_then_words_is_a_comment_not_a_range():
    g = grading.parse_grades(GOOD.replace("Grammar: 8/10", "Grammar: 8 - well done, few mistakes"))
    assert g["grammar"] == 8, "a comment after the grade must not hide or change it"


@pytest.mark.parametrize(
    "reply, reason",
    [
        ("", "empty reply"),
        ("The story is lovely. I would give it a good grade.", "no grammar grade"),
        (GOOD.replace("Creativity: 6/10", ""), "no creativity grade"),
        (GOOD.replace("Grammar: 8/10", "Grammar: 8/5"), "out of 5"),
        (GOOD.replace("Grammar: 8/10", "Grammar: 0/10"), "outside 1-10"),
        (GOOD.replace("Grammar: 8/10", "Grammar: 11"), "outside 1-10"),
        (GOOD + "\nGrammar: 3/10", "conflicting grammar"),
        (GOOD.replace("Age group: B", "Age group: unknown"), "no age group"),
        (GOOD.replace("Age group: B", "Age group: G"), "no age group"),
        (GOOD + "\nAge group: D", "conflicting age groups"),
        # the scale echoed from the format line, or a range, is not a grade: "1-10" must not read as 1
        (GOOD.replace("Grammar: 8/10", "Grammar: 1-10/10"), "grammar grade is a range (1-10)"),
        (GOOD.replace("Grammar: 8/10", "Grammar: 7-8/10"), "grammar grade is a range (7-8)"),
        (GOOD.replace("Creativity: 6/10", "Creativity: 6 - 7"), "creativity grade is a range (6-7)"),
    ],
)
def test_parser_rejects_bad_replies(reply, reason):
    with pytest.raises(Reject) as err:
        grading.parse_grades(reply)
    assert reason in str(err.value)


def test_every_task_needs_plot():
    # the paper grades plot for story beginnings too (its Figure 4 has a plot column for every model)
    with pytest.raises(Reject, match="no plot grade"):
        grading.parse_grades(GOOD.replace("Plot: 7/10", ""))


# -- expected scoring: a grade position's distribution -> the expected grade, or a failure ------


def logs(probs: dict[str, float]) -> dict[str, float]:
    return {t: math.log(p) for t, p in probs.items()}


def test_expected_grade_of_a_known_distribution():
    dist = grading.grade_distribution(logs({"7": 0.6, " 8": 0.2, "8": 0.1, "Hello": 0.1}))
    assert dist[7] == pytest.approx(0.6) and dist[8] == pytest.approx(0.3), "spellings with and without a space are one grade"
    assert grading.expected_grade(dist, 0.5, "grammar") == pytest.approx((7 * 0.6 + 8 * 0.3) / 0.9, abs=1e-4), "normalised over the mass on grades"


def test_a_ten_is_read_whole_or_split_into_one_then_zero():
    whole = logs({"10": 0.5, "9": 0.5})
    assert not grading.needs_split_of_one(whole), "a tokenizer with a 10 token needs no second look"
    assert grading.expected_grade(grading.grade_distribution(whole), 0.5, "plot") == pytest.approx(9.5)
    split = logs({"1": 0.5, "9": 0.5})
    assert grading.needs_split_of_one(split), "a '1' may start a '10'"
    dist = grading.grade_distribution(split, after_one=logs({"0": 0.8, "/": 0.2}))
    assert (dist[10], dist[1], dist[9]) == pytest.approx((0.4, 0.1, 0.5))
    # a "1" followed by another digit is an 11-19: off the grades
    dist = grading.grade_distribution(split, after_one=logs({"1": 0.5, "/": 0.5}))
    assert sum(dist.values()) == pytest.approx(0.75) and dist[10] == 0
    # a "1" followed by a dash is the scale "1-10" echoed (what SmolLM2-135M mostly writes there): no grade
    dist = grading.grade_distribution(split, after_one=logs({"-": 0.6, "\n": 0.4}))
    assert dist[1] == pytest.approx(0.2) and sum(dist.values()) == pytest.approx(0.7)
    assert not grading.needs_split_of_one(logs({"1": 0.005, "9": 0.995})), "too little mass on '1' to matter"


def test_a_position_without_mass_on_grades_is_a_failure():
    dist = grading.grade_distribution(logs({"The": 0.7, "Good": 0.2, "7": 0.1}))
    with pytest.raises(Reject, match=r"grammar: only 10% of the judge's probability on grades 1-10 \(needs 50%\)"):
        grading.expected_grade(dist, 0.5, "grammar")
    with pytest.raises(Reject, match="only 0%"):
        grading.expected_grade(grading.grade_distribution({}), 0.5, "grammar")
    assert grading.expected_grade(dist, 0.1, "grammar") == 7, "the threshold is an option"


def test_age_group_is_the_likeliest_letter_with_enough_mass():
    dist = grading.age_distribution(logs({" C": 0.5, "B": 0.3, "(": 0.2}))
    assert dist == pytest.approx({"A": 0, "B": 0.3, "C": 0.5, "D": 0, "E": 0, "F": 0})
    assert grading.likeliest_age_group(dist, 0.5) == "C"
    with pytest.raises(Reject, match="age group: only 30%"):
        grading.likeliest_age_group(grading.age_distribution(logs({"B": 0.3, "The": 0.7})), 0.5)


# -- statistics --------------------------------------------------------------------------------


def test_proportion_ci_is_the_wilson_interval():
    # textbook values: 0 of 10 -> [0, 0.2775]; 5 of 10 -> [0.2366, 0.7634]
    assert stats.proportion_ci(0, 10) == {"share": 0.0, "low": 0.0, "high": 0.2775, "hits": 0, "n": 10}
    assert stats.proportion_ci(5, 10)["low"] == 0.2366 and stats.proportion_ci(5, 10)["high"] == 0.7634
    assert stats.proportion_ci(0, 0)["share"] is None


def test_mean_ci():
    r = stats.mean_ci([4, 6, 8])
    assert r["mean"] == 6 and r["n"] == 3 and abs(r["ci95"] - 4.303 * 2 / 3**0.5) < 1e-3
    assert stats.mean_ci([5])["ci95"] is None and stats.mean_ci([])["mean"] is None


# -- trust: which categories the report may trust ----------------------------------------------


def _disc(shares: dict[str, dict[str, float]], n: int = 8) -> dict:
    from tinystories.eval.damage import DAMAGES

    return {kind: {"n_pairs": n, "share_original_better": shares.get(kind, {})} for kind in DAMAGES}


def test_a_category_is_trusted_when_its_damages_are_caught_and_repeats_agree():
    rules = grading.TrustRules(min_discrimination=0.75, max_inconsistency=1.0, min_pairs=4)
    disc = _disc({"word_salad": {"grammar": 0.9, "creativity": 0.5}, "truncated": {"grammar": 0.75, "plot": 1.0}, "shuffled_sentences": {"plot": 1.0}, "swapped": {"consistency": 1.0}})
    cons = {"mean_abs_diff": {"grammar": 0.5, "creativity": 0.2, "consistency": 1.5, "plot": 1.0}, "share_within_1": {}}
    trust = grading.category_trust(disc, cons, rules)
    assert trust["grammar"]["trusted"] and trust["grammar"]["weakest_discrimination"] == 0.75, "the threshold itself passes"
    assert trust["plot"]["trusted"], "a mean difference at the threshold passes"
    assert not trust["creativity"]["trusted"] and "word salad in only 50% of 8 pairs (needs 75%)" in trust["creativity"]["reasons"][0]
    assert not trust["consistency"]["trusted"] and "differ by 1.50 points" in trust["consistency"]["reasons"][0]


def test_too_few_pairs_or_no_repeats_leave_a_category_untrusted():
    rules = grading.TrustRules(min_pairs=4)
    perfect = {"word_salad": {c: 1.0 for c in grading.CATEGORIES}, "truncated": {c: 1.0 for c in grading.CATEGORIES}}
    trust = grading.category_trust(_disc(perfect, n=3), {"mean_abs_diff": {"grammar": 0.0}, "share_within_1": {}}, rules)
    assert not trust["grammar"]["trusted"] and "only 3 original/word salad pairs" in trust["grammar"]["reasons"][0]
    trust = grading.category_trust(_disc(perfect), {"mean_abs_diff": {}, "share_within_1": {}}, rules)
    assert not trust["grammar"]["trusted"] and "consistency is unknown" in trust["grammar"]["reasons"][0]


def test_a_grade_heading_shows_repeats_only_where_grades_were_sampled():
    from tinystories.eval.report_judge import category_heading

    trust = {"grammar": {"trusted": True, "weakest_discrimination": 0.9, "mean_abs_diff": 0.4}}
    assert category_heading("grammar", {"categories": trust, "consistency": {"deterministic": True}}) == "grammar (trusted; caught 90%)"
    assert category_heading("grammar", {"categories": trust, "consistency": {}}) == "grammar (trusted; caught 90%, repeat Δ 0.40)"
