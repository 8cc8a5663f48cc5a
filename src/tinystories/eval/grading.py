"""Judge grades: parsing one reply strictly, and aggregating many into eval/scores.json.

A reply is parsed by `parse_grades` (every category exactly once, each out of 10, one age
group A-F); an unparseable reply raises `Reject`, which the LLM layer retries with a
fresh seed and then records as a failure with its reason: never scored as zero, never dropped.
`build_scores` turns the judgment records into the per-model tables (mean with 95% CI, n judged,
n failed) and the reliability tables (consistency between two judgments of a completion,
discrimination between a completion and its damaged versions).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

from tinystories.eval.damage import DAMAGES
from tinystories.eval.stats import mean_ci
from tinystories.text.prompts import JUDGE_TEMPLATE_VERSION

# Every task is graded on all four, as in the paper (its Figure 4 has a plot column for every model).
CATEGORIES = ("grammar", "creativity", "consistency", "plot")
AGE_GROUPS = {"A": "3 or under", "B": "4-5", "C": "6-7", "D": "8-9", "E": "10-12", "F": "13-16"}

_NUM = r"(\d+(?:\.\d+)?)"


def completion_key(rec: dict) -> str:
    """`model|prompt_id|sample_id`: names one completion across completions and judgments."""
    return f"{rec['model']}|{rec['prompt_id']}|{rec['sample_id']}"


# -- one reply ---------------------------------------------------------------------------------


def parse_grades(text: str | None) -> dict:
    """Grades from a judge reply, or `Reject` with the reason. Strict on structure:

    every category exactly once (repeats must agree), each a number from 1 to 10
    (written N, N/10 or N out of 10; any other scale is rejected), and one age group letter A-F.
    Markdown decoration (**Grammar:** 8/10, - Grammar: 8) is tolerated.
    """
    from tinystories.llm import Reject

    if not text or not text.strip():
        raise Reject("empty reply")
    out: dict[str, Any] = {}
    first_grade_at = len(text)
    for cat in CATEGORIES:
        out[cat], at = _one_grade(text, cat)
        first_grade_at = min(first_grade_at, at)
    out["age_group"] = _age_group(text)
    head = text[:first_grade_at]
    m = re.search(r"assessment[ \t*_]*:[ \t*_]*", head, re.IGNORECASE)
    out["assessment"] = (head[m.end() :] if m else head).strip()
    return out


def _one_grade(text: str, cat: str) -> tuple[float, int]:
    """The grade of one category and where its first mention starts."""
    from tinystories.llm import Reject

    # A dash then a number is a range ("7-8/10", or "1-10/10": the format line's scale echoed), not
    # a grade; a dash then words ("8 - well done") is a comment on the grade.
    pattern = re.compile(
        rf"^[ \t>*#_-]*{cat}[ \t*_]*[:=][ \t*_]*{_NUM}(?:[ \t]*[-\u2013\u2014][ \t]*(?P<upper>\d+(?:\.\d+)?))?[ \t*_]*(?:(?:/|out of)[ \t]*(?P<scale>\d+(?:\.\d+)?))?",
        re.IGNORECASE | re.MULTILINE,
    )
    found = list(pattern.finditer(text))
    if not found:
        raise Reject(f"no {cat} grade")
    values = set()
    for m in found:
        if m.group("upper") is not None:
            raise Reject(f"{cat} grade is a range ({m.group(1)}-{m.group('upper')}), not one number")
        value = float(m.group(1))
        scale = m.group("scale")
        if scale is not None and float(scale) != 10:
            raise Reject(f"{cat} graded out of {scale}, not 10")
        if not 1 <= value <= 10:
            raise Reject(f"{cat} grade {m.group(1)} outside 1-10")
        values.add(value)
    if len(values) > 1:
        raise Reject(f"conflicting {cat} grades {sorted(values)}")
    return values.pop(), found[0].start()


def _age_group(text: str) -> str:
    from tinystories.llm import Reject

    ages = re.findall(r"^[ \t>*#_-]*age(?:[ \t]*group)?[ \t*_]*[:=][ \t*_(\[]*([A-Fa-f])(?![A-Za-z])", text, re.IGNORECASE | re.MULTILINE)
    if not ages:
        raise Reject("no age group A-F")
    if len({a.upper() for a in ages}) > 1:
        raise Reject(f"conflicting age groups {sorted({a.upper() for a in ages})}")
    return ages[0].upper()


# -- one grade position's token distribution (expected scoring) --------------------------------
# G-Eval's score: the judge's next-token distribution where it writes a grade, reduced to the
# expected grade over 1..10. A position holds the top-k tokens with natural-log probabilities.

GRADES = tuple(range(1, 11))
_DASHES = ("-", "\u2013", "\u2014")
SPLIT_ONE_ABOVE = 0.01  # below this mass on "1", not knowing whether it starts "10" moves the expected grade by < 0.09


def _probabilities(position: dict[str, float]) -> dict[str, float]:
    """Token (stripped of the spaces tokenizers glue to it) -> probability, summed over spellings."""
    out: dict[str, float] = {}
    for token, logprob in position.items():
        out[token.strip()] = out.get(token.strip(), 0.0) + math.exp(logprob)
    return out


def needs_split_of_one(position: dict[str, float]) -> bool:
    """Whether "1" here may be the first digit of "10" (a tokenizer that writes numbers digit by
    digit, so "10" is no token of the list) with enough mass to matter: then the position after
    "1" must be read too (`grade_distribution`'s `after_one`)."""
    probs = _probabilities(position)
    return "10" not in probs and probs.get("1", 0.0) >= SPLIT_ONE_ABOVE


def grade_distribution(position: dict[str, float], after_one: dict[str, float] | None = None) -> dict[int, float]:
    """Probability of each grade 1..10 at a grade position; what is left is mass off the grades.

    `after_one` is the position after a forced "1": "0" there makes the "1" a 10; another digit (an
    11-19) or a dash (the range "1-10" echoed from the format line, which a small judge writes
    more often than any grade) takes it off the grades; anything else, the tail beyond the
    top-k included, leaves a 1."""
    probs = _probabilities(position)
    out = {g: probs.get(str(g), 0.0) for g in GRADES}
    if after_one is not None and out[1]:
        then = _probabilities(after_one)
        zero = sum(p for t, p in then.items() if t.startswith("0"))
        off_grades = sum(p for t, p in then.items() if (t[:1].isdigit() and not t.startswith("0")) or t[:1] in _DASHES)
        one = out[1]
        out[10] += one * min(1.0, zero)
        out[1] = one * max(0.0, 1.0 - zero - off_grades)
    return out


def expected_grade(dist: dict[int, float], min_mass: float, cat: str) -> float:
    """The expected grade given that the judge wrote a grade; `Reject` when less than `min_mass`
    of its probability is on the grades at all (it meant to write something else: no score)."""
    from tinystories.llm import Reject

    mass = sum(dist.values())
    if mass < min_mass:
        raise Reject(f"{cat}: only {mass:.0%} of the judge's probability on grades 1-10 (needs {min_mass:.0%})")
    return round(sum(g * p for g, p in dist.items()) / mass, 4)


def age_distribution(position: dict[str, float]) -> dict[str, float]:
    """Probability of each age-group letter A-F at the age-group position."""
    probs = _probabilities(position)
    return {letter: probs.get(letter, 0.0) for letter in AGE_GROUPS}


def likeliest_age_group(dist: dict[str, float], min_mass: float) -> str:
    """The most likely letter; `Reject` when less than `min_mass` of the probability is on A-F."""
    from tinystories.llm import Reject

    mass = sum(dist.values())
    if mass < min_mass:
        raise Reject(f"age group: only {mass:.0%} of the judge's probability on the letters A-F (needs {min_mass:.0%})")
    return max(dist, key=lambda letter: (dist[letter], -ord(letter)))


# -- many judgments ----------------------------------------------------------------------------

# The damages that must lower each category's grade (judge.must_catch's default): broken word
# order and a cut-off text hurt grammar; a shuffled or cut-off plot hurts plot; a story of another
# beginning hurts consistency with the beginning; salad is not creative.
MUST_CATCH = {"grammar": ["word_salad", "truncated"], "creativity": ["word_salad"], "consistency": ["swapped"], "plot": ["shuffled_sentences", "truncated"]}
DAMAGE_NAMES = {"shuffled_sentences": "sentence-shuffled version", "word_salad": "word salad", "truncated": "truncated version", "swapped": "replacement by another beginning's story"}


@dataclass
class TrustRules:
    """When a category's grades are trusted (the judge options of the same names)."""

    min_discrimination: float = 0.75
    max_inconsistency: float = 1.0
    min_pairs: int = 4
    must_catch: dict = field(default_factory=lambda: {k: list(v) for k, v in MUST_CATCH.items()})

    def as_dict(self) -> dict:
        return {"min_discrimination": self.min_discrimination, "max_inconsistency": self.max_inconsistency, "min_pairs": self.min_pairs, "must_catch": self.must_catch}


def consistency_table(pairs: list[tuple[dict, dict]]) -> dict:
    """Per category, between two judgments of the same completion: the mean absolute grade
    difference, and the share of pairs within one point of each other."""
    out: dict[str, Any] = {"n_pairs": len(pairs), "mean_abs_diff": {}, "share_within_1": {}}
    for cat in CATEGORIES:
        diffs = [abs(a[cat] - b[cat]) for a, b in pairs if cat in a and cat in b]
        if diffs:
            out["mean_abs_diff"][cat] = round(sum(diffs) / len(diffs), 4)
            out["share_within_1"][cat] = round(sum(d <= 1 for d in diffs) / len(diffs), 4)
    return out


def discrimination_table(pairs: list[tuple[dict, dict]], lower_is_better: bool = False, keys: Iterable[str] = CATEGORIES) -> dict:
    """Share of (original, damaged) pairs where the original is strictly better, per key."""
    out: dict[str, Any] = {"n_pairs": len(pairs), "share_original_better": {}}
    for key in keys:
        both = [(a[key], b[key]) for a, b in pairs if key in a and key in b]
        if both:
            better = sum((x < y) if lower_is_better else (x > y) for x, y in both)
            out["share_original_better"][key] = round(better / len(both), 4)
    return out


def _count(values: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


def build_scores(completions: list[dict], records: list[dict], settings: dict, plan_info: dict, rules: TrustRules) -> dict:
    """eval/scores.json minus perplexity, contamination and word compliance: everything from the judgments."""
    main = [r for r in records if r["role"] == "main"]
    n_failed = sum(1 for r in main if not r["ok"])
    return {
        "judge": {**settings, "template_version": settings.get("template", JUDGE_TEMPLATE_VERSION)},  # a judge.template_path file's own version
        "age_groups": AGE_GROUPS,
        "models": model_scores(completions, main),
        "totals": {"requests": len(records), "judged": len(main) - n_failed, "failed": n_failed, "failure_reasons_all_roles": _count(r["error"] for r in records if not r["ok"])},
        "reliability": reliability(records, plan_info, rules, settings.get("scoring", "sampled")),
    }


def model_scores(completions: list[dict], main: list[dict]) -> dict:
    """Per model (with its kind) and task: the grade table of its main judgments."""
    kinds = {r["model"]: r["kind"] for r in completions}
    models: dict[str, dict] = {}
    for model in sorted(kinds):
        tasks = sorted({r["task"] for r in completions if r["model"] == model})
        models[model] = {"kind": kinds[model], "tasks": {task: task_scores(completions, main, model, task) for task in tasks}}
    return models


def task_scores(completions: list[dict], main: list[dict], model: str, task: str) -> dict:
    """Mean grade per category with its CI, judged / failed counts, failure reasons, age groups."""
    rows = [r for r in main if r["model"] == model and r["task"] == task]
    ok = [r for r in rows if r["ok"]]
    return {
        "completions": sum(1 for r in completions if r["model"] == model and r["task"] == task),
        "n_judged": len(ok),
        "n_failed": len(rows) - len(ok),
        "failure_reasons": _count(r["error"] for r in rows if not r["ok"]),
        "categories": {cat: mean_ci([r["grades"][cat] for r in ok]) for cat in CATEGORIES},
        "age_groups": dict(sorted(_count(r["age_group"] for r in ok if r["age_group"]).items())),
        "age_group_failed": sum(1 for r in ok if not r["age_group"]),
    }


def _grades_by(records: list[dict], role: str, damage: str | None = None) -> dict[str, dict]:
    return {completion_key(r): r["grades"] for r in records if r["role"] == role and r["damage"] == damage and r["ok"]}


def reliability(records: list[dict], plan_info: dict, rules: TrustRules, scoring: str) -> dict:
    """Consistency (repeats of the models' completions), discrimination (originals known to be
    good against their damaged versions), and which categories they let the report trust."""
    main = _grades_by(records, "main")
    repeats = _grades_by(records, "repeat")
    cons = consistency_table([(main[k], repeats[k]) for k in repeats if k in main])
    cons["n_failed"] = sum(1 for r in records if r["role"] == "repeat" and not r["ok"])
    # A baseline's originals are its main judgments; a held-out story's, its "original" judgment.
    originals = {**main, **_grades_by(records, "original")}
    disc: dict[str, dict] = {}
    for kind in DAMAGES:
        damaged = _grades_by(records, "damaged", kind)
        table = discrimination_table([(originals[k], damaged[k]) for k in damaged if k in originals])
        table["n_failed"] = sum(1 for r in records if r["role"] == "damaged" and r["damage"] == kind and not r["ok"])
        table["not_applicable"] = plan_info["damage_not_applicable"][kind]
        disc[kind] = table
    cons["deterministic"] = bool(plan_info.get("deterministic"))
    categories = category_trust(disc, cons, rules)
    trusted = [cat for cat, t in categories.items() if t["trusted"]]
    reasons = [] if trusted else [f"{cat}: {why}" for cat, t in categories.items() for why in t["reasons"][:1]]
    held = [r for r in records if r["role"] == "original"]
    return {
        "scoring": scoring,
        "consistency": cons,
        "discrimination": disc,
        # The figures again, keyed by the scoring that made them, so runs under either scoring compare.
        "by_scoring": {
            scoring: {
                "discrimination": {cat: {kind: disc[kind]["share_original_better"].get(cat) for kind in DAMAGES} for cat in CATEGORIES},
                "mean_abs_diff": cons["mean_abs_diff"],
                "share_within_1": cons["share_within_1"],
                "trusted": trusted,
            }
        },
        "categories": categories,
        "trusted": trusted,
        "rules": rules.as_dict(),
        "min_discrimination": rules.min_discrimination,
        "originals_graded": {cat: mean_ci([r["grades"][cat] for r in held if r["ok"]]) for cat in CATEGORIES},
        "originals_failed": sum(1 for r in held if not r["ok"]),
        "unreliable": not trusted,
        "reasons": reasons,
        **plan_info,
    }


def category_trust(disc: dict[str, dict], cons: dict, rules: TrustRules) -> dict[str, dict]:
    """Per category: trusted when the judge's grade falls on every damage that should hurt it
    (`rules.must_catch`, on at least `rules.min_pairs` pairs each, in at least
    `rules.min_discrimination` of them) and two judgments of a completion differ by at most
    `rules.max_inconsistency` on average. Each failed condition is a reason."""
    out: dict[str, dict] = {}
    for cat in CATEGORIES:
        reasons: list[str] = []
        caught: dict[str, float | None] = {}
        for kind in rules.must_catch.get(cat, ()):
            share = disc[kind]["share_original_better"].get(cat)
            caught[kind] = share
            n = disc[kind]["n_pairs"]
            if share is None or n < rules.min_pairs:
                reasons.append(f"only {n} original/{DAMAGE_NAMES[kind]} pairs were judged (needs {rules.min_pairs})")
            elif share < rules.min_discrimination:
                reasons.append(f"the judge rated the original above its {DAMAGE_NAMES[kind]} in only {share:.0%} of {n} pairs (needs {rules.min_discrimination:.0%})")
        diff = cons["mean_abs_diff"].get(cat)
        if diff is None and cons.get("deterministic"):
            pass  # grades read without sampling: the same completion always gets the same grade
        elif diff is None:
            reasons.append("no completion was judged twice, so its consistency is unknown")
        elif diff > rules.max_inconsistency:
            reasons.append(f"two judgments of the same completion differ by {diff:.2f} points on average (at most {rules.max_inconsistency:.2f} allowed)")
        if not rules.must_catch.get(cat):
            reasons.append("no damage is named to test it (judge.must_catch)")
        shares = [v for v in caught.values() if v is not None]
        out[cat] = {
            "trusted": not reasons,
            "discrimination": caught,
            "weakest_discrimination": min(shares) if len(shares) == len(caught) and shares else None,
            "mean_abs_diff": diff,
            "share_within_1": cons["share_within_1"].get(cat),
            "reasons": reasons,
        }
    return out
