"""The report's judge parts: who judged and how, which categories the report trusts, and the
reliability section with the figures behind that verdict (all read from eval/scores.json).

A grade is never shown alone: every grade column's heading carries its category's verdict
(trusted or untrusted), the weakest share of damaged originals the judge caught on it, and the
mean difference between two judgments of one completion (`category_heading`).
"""

from __future__ import annotations

from tinystories.eval.grading import CATEGORIES as CATS
from tinystories.eval.grading import DAMAGE_NAMES
from tinystories.eval.markdown import fmt, fmt_score, fmt_share, table

SOURCE_TEXT = {
    "heldout": "held-out validation stories of this run's dataset (data/val_stories.json, never trained on)",
    "sample": "a seeded sample of this run's stories (data/stories.jsonl; the run has no data/val_stories.json, so the models may have trained on them)",
    "none": "no stories (the run has no data/stories.jsonl)",
}


def judge_identity(judge: dict) -> str:
    """`model M (backend B, mode, S scoring)`: what made the grades."""
    who = judge.get("judge", {})
    return f"{who.get('model', 'n/a')} (backend {who.get('backend', 'n/a')}, {judge.get('mode', 'n/a')} mode, {judge.get('scoring', 'n/a')} scoring)"


def category_heading(cat: str, rel: dict) -> str:
    """A grade column's heading: the category with its reliability beside it."""
    t = rel.get("categories", {}).get(cat)
    if t is None:
        return cat  # scores.json from a judge stage before per-category trust
    verdict = "trusted" if t["trusted"] else "untrusted"
    if rel.get("consistency", {}).get("deterministic"):  # nothing sampled: no repeats to show
        return f"{cat} ({verdict}; caught {fmt_share(t.get('weakest_discrimination'))})"
    return f"{cat} ({verdict}; caught {fmt_share(t.get('weakest_discrimination'))}, repeat Δ {fmt(t.get('mean_abs_diff'))})"


def grades_preamble(scores: dict, first: bool = True) -> list[str]:
    """The line above a grade table: which judge and scoring made the grades, and (above the
    `first` table) how to read the headings."""
    rel = scores["reliability"]
    if not rel.get("categories") or not first:
        return [f"Graded by {judge_identity(scores.get('judge', {}))}" + ("; each heading carries its category's reliability, as above." if rel.get("categories") else "."), ""]
    return [
        f"Graded by {judge_identity(scores.get('judge', {}))}. Beside each category: whether this report trusts its grades, "
        "the weakest share of damaged good stories the judge graded below the original (over the damages that should hurt that category), "
        + ("(grades read without sampling: the same completion always gets the same grades, so no repeats; see Judge reliability)."
           if rel.get("consistency", {}).get("deterministic") else "and the mean difference between two judgments of the same completion (see Judge reliability)."),
        "",
    ]


def trust_banner(scores: dict) -> list[str]:
    """The top of the report: a bold warning when no category is trusted, else which ones are."""
    rel = scores["reliability"]
    who = judge_identity(scores.get("judge", {}))
    if rel.get("unreliable"):
        why = "; ".join(rel.get("reasons") or ["see the reliability section"])
        return [f"**WARNING: the judge is unreliable ({who}): it is trusted on no category: {why}. Treat every judge score below with suspicion; the perplexity and loss figures do not depend on the judge.**", ""]
    cats = rel.get("categories")
    if not cats:
        return []
    untrusted = [c for c in CATS if not cats[c]["trusted"]]
    line = f"Judge {who}: trusted on {', '.join(rel['trusted'])}"
    return [line + (f"; **untrusted on {', '.join(untrusted)}** (read those grades as noise)." if untrusted else "."), ""]


def rules_text(rules: dict) -> str:
    catch = "; ".join(f"{cat}: {', '.join(DAMAGE_NAMES[k] for k in kinds)}" for cat, kinds in rules.get("must_catch", {}).items())
    return (
        f"A category is trusted when the judge grades the original strictly above its damaged version in at least {fmt_share(rules.get('min_discrimination'))} "
        f"of at least {fmt(rules.get('min_pairs'))} pairs for each damage that should hurt it ({catch}), and two judgments of the same completion "
        f"differ by at most {fmt(rules.get('max_inconsistency'))} points on average (judge.min_discrimination, judge.min_pairs, judge.must_catch, judge.max_inconsistency)."
    )


def verdict_lines(rel: dict) -> list[str]:
    if not rel.get("categories"):
        return [f"Verdict: **{'unreliable' if rel.get('unreliable') else 'passes the checks'}** (word-salad discrimination on grammar must reach {fmt_share(rel.get('min_discrimination'))}).", ""]
    rows = []
    for cat in CATS:
        t = rel["categories"][cat]
        caught = ", ".join(f"{DAMAGE_NAMES[k]} {fmt_share(v)}" for k, v in t["discrimination"].items())
        rows.append([cat, "**trusted**" if t["trusted"] else "untrusted", caught or "n/a", fmt(t.get("mean_abs_diff")), fmt_share(t.get("share_within_1")), "; ".join(t["reasons"]) or "-"])
    L = [f"Verdict under {rel.get('scoring', 'n/a')} scoring: **{'unreliable (no category trusted)' if rel.get('unreliable') else 'trusted on ' + ', '.join(rel['trusted'])}**. {rules_text(rel.get('rules', {}))}", ""]
    return L + table(["category", "verdict", "damaged originals graded lower", "repeat mean abs diff", "repeats within 1 point", "why not trusted"], rows) + [""]


def originals_lines(rel: dict) -> list[str]:
    origin = rel.get("originals")
    if not origin:
        return []
    counts = rel.get("discrimination_originals", {})
    L = [
        f"Originals of the discrimination check: {fmt(counts.get('heldout', 0))} stories from {SOURCE_TEXT.get(origin['source'], origin['source'])}, each cut at a sentence boundary into a beginning and its true continuation, "
        f"plus {fmt(counts.get('baseline', 0))} baseline-model completions. The models' own completions are not used: a small model's are poor already, so no judge could tell them from their damaged versions.",
        "",
    ]
    graded = rel.get("originals_graded", {})
    if any((graded.get(c) or {}).get("mean") is not None for c in CATS):
        L += ["The judge's grades of the true continuations (what a good story gets from this judge):", ""]
        L += table(CATS, [[fmt_score(graded.get(c)) for c in CATS]]) + [""]
    return L


def reliability_section(rel: dict, ppl: dict) -> list[str]:
    """The verdict per category, the consistency and discrimination tables, and the perplexity cross-check."""
    cons = rel.get("consistency", {})
    L = verdict_lines(rel) + originals_lines(rel)
    if cons.get("n_pairs"):
        L += [f"Consistency: {fmt(cons['n_pairs'])} model completions judged twice with different seeds; mean absolute difference of the two grades (0 = identical, {fmt(cons.get('n_failed', 0))} repeat judgments failed):", ""]
        L += table([c for c in CATS if c in cons["mean_abs_diff"]], [[fmt(cons["mean_abs_diff"][c]) for c in CATS if c in cons["mean_abs_diff"]]])
        L += [""]
    else:
        if cons.get("deterministic"):
            L += ["Consistency: not measured, and not needed: the grades were read from the judge's probabilities right after the request, with nothing sampled, so a completion judged again gets the same grades.", ""]
        else:
            L += ["Consistency: no completion was judged twice (judge.consistency_sample is 0 or every repeat failed).", ""]
    rows = []
    for kind, d in rel.get("discrimination", {}).items():
        shares = d.get("share_original_better", {})
        rows.append([kind, fmt(d.get("n_pairs", 0)), *[fmt_share(shares.get(cat)) for cat in CATS], fmt(d.get("n_failed", 0))])
    if rows:
        L += ["Discrimination: originals damaged on purpose and judged again; share of pairs where the original got the strictly higher grade (a working judge is near 100% for grammar on word salad and for consistency on swapped completions):", ""]
        L += table(["damage", "pairs", *CATS, "failed"], rows)
        L += [""]
    if ppl.get("discrimination"):
        rows = [[kind, fmt(d.get("n_pairs", 0)), fmt_share(d.get("share_original_lower"))] for kind, d in ppl["discrimination"].items()]
        L += [f"Judge-free check: the reference LM ({ppl.get('reference')}{', ' + str(ppl.get('model')) if ppl.get('model') else ''}) should give the original the lower perplexity:", ""]
        L += table(["damage", "pairs", "original has lower perplexity"], rows)
        L += [""]
    return L
