"""The judge's plan: every request of a judge run, deterministic given the stage seed.

Roles: main (a model's completion, graded for the report), repeat (the same completion judged
again with another seed: consistency), original (a held-out story's true continuation,
eval/originals.py) and damaged (an original, or a baseline model's completion, damaged one of
the four ways of eval/damage.py: discrimination).
"""

from __future__ import annotations

import random

from tinystories.eval.damage import DAMAGES, damage
from tinystories.eval.grading import completion_key
from tinystories.pipeline.ids import fingerprint


def plan_requests(completions: list[dict], c, stage_seed: int, heldout: list[dict] = (), deterministic: bool = False) -> tuple[list[dict], dict]:
    """Every judge request: main judgments, repeats, the held-out originals, damaged versions of
    those and of baseline completions (deterministic given the seed). A `deterministic` judge (grades
    read without sampling anything) gets no repeats: a second judgment could only repeat the first."""
    rng = random.Random(stage_seed)
    judged = judged_sample(completions, c.max_judged, stage_seed)
    plan = [{"role": "main", "damage": None, "source": r, "text": r["text"], "key": f"main|{completion_key(r)}"} for r in judged]
    usable = [r for r in judged if r["text"].strip()]
    repeat = rng.sample(usable, min(c.consistency_sample, len(usable)))
    if deterministic:
        repeat = []
    plan += [{"role": "repeat", "damage": None, "source": r, "text": r["text"], "key": f"repeat|{completion_key(r)}"} for r in repeat]
    plan += [{"role": "original", "damage": None, "source": h, "text": h["text"], "key": f"original|{completion_key(h)}"} for h in heldout]
    baseline = [r for r in usable if r["kind"] == "baseline"]
    baseline_disc = baseline_sample(baseline, c.discrimination_sample, rng)
    damaged, skipped = damaged_requests([*heldout, *baseline_disc], [*heldout, *baseline], rng, stage_seed)
    plan += damaged
    info = {"damage_not_applicable": skipped, "discrimination_sample": len(heldout) + len(baseline_disc), "consistency_sample": len(repeat), "deterministic": deterministic}
    return plan, {**info, "discrimination_originals": {"heldout": len(heldout), "baseline": len(baseline_disc)}}


def baseline_sample(baseline: list[dict], n: int, rng: random.Random) -> list[dict]:
    """Up to `n` completions of each baseline model (in name order): a baseline writes fluent
    stories, so its completions are originals of the discrimination check too."""
    out: list[dict] = []
    for model in sorted({r["model"] for r in baseline}):
        own = [r for r in baseline if r["model"] == model]
        out += rng.sample(own, min(n, len(own)))
    return out


def judged_sample(completions: list[dict], max_judged: int, stage_seed: int) -> list[dict]:
    """Per model in name order, its completions in task, prompt, sample order: all of them, or at
    most `max_judged` per task on the same (prompt, sample) slots for every model (a seeded
    choice that spreads over prompts first), so every model is graded on the same beginnings."""
    by_model: dict[str, list[dict]] = {}
    for rec in completions:
        by_model.setdefault(rec["model"], []).append(rec)
    chosen = shared_slots(by_model, max_judged, stage_seed) if max_judged else None
    judged: list[dict] = []
    for model in sorted(by_model):
        recs = sorted(by_model[model], key=_task_prompt_sample)
        if chosen is not None:
            recs = [r for r in recs if (r["prompt_id"], r["sample_id"]) in chosen[(model, r["task"])]]
        judged.extend(recs)
    return judged


def shared_slots(by_model: dict[str, list[dict]], max_judged: int, stage_seed: int) -> dict[tuple[str, str], set]:
    """(model, task) -> the (prompt_id, sample_id) slots judged: per task, the first `max_judged`
    of the slots every model with that task has (a model with none in common keeps its own)."""
    slots: dict[str, dict[str, set]] = {}
    for model, recs in by_model.items():
        for r in recs:
            slots.setdefault(r["task"], {}).setdefault(model, set()).add((r["prompt_id"], r["sample_id"]))
    out: dict[tuple[str, str], set] = {}
    for task, per_model in slots.items():
        common = set.intersection(*per_model.values())
        for model, own in per_model.items():
            out[(model, task)] = set(slot_order(common or own, f"{stage_seed}|{task}")[:max_judged])
    return out


def slot_order(slots: set, seed: str) -> list[tuple]:
    """Slots in the order they are judged: every prompt's first sample (prompts in seeded order), then every second one..."""
    prompts = sorted({p for p, _ in slots})
    random.Random(seed).shuffle(prompts)
    rank = {p: i for i, p in enumerate(prompts)}
    samples = {p: sorted(s for q, s in slots if q == p) for p in prompts}
    return sorted(slots, key=lambda slot: (samples[slot[0]].index(slot[1]), rank[slot[0]]))


def _task_prompt_sample(rec: dict) -> tuple:
    return rec["task"], rec["prompt_id"], rec["sample_id"]


def damaged_requests(sources: list[dict], usable: list[dict], rng: random.Random, stage_seed: int) -> tuple[list[dict], dict[str, int]]:
    """Each source damaged every way that applies to it; counts, per damage, the sources it could
    not apply to. `usable` holds the texts a "swapped" damage may put in a source's place."""
    items: list[dict] = []
    skipped: dict[str, int] = {d: 0 for d in DAMAGES}
    for r in sources:
        # Swap in a story the same model wrote for another prompt: as fluent, but off topic.
        others = [o for o in usable if o["prompt_id"] != r["prompt_id"] and o["task"] == r["task"] and o["model"] == r["model"]]
        others = others or [o for o in usable if o["prompt_id"] != r["prompt_id"] and o["task"] == r["task"]]
        other = rng.choice(others)["text"] if others else None
        for kind in DAMAGES:
            text = damage(kind, r["text"], random.Random(f"{stage_seed}|{kind}|{completion_key(r)}"), other)
            if text is None:
                skipped[kind] += 1
                continue
            items.append({"role": "damaged", "damage": kind, "source": r, "text": text, "key": f"damaged|{kind}|{completion_key(r)}"})
    return items, skipped


def fingerprint_plan(plan: list[dict], settings: dict) -> None:
    """What a judgment depends on: judge identity and settings, the request, the texts graded."""
    for item in plan:
        item["fingerprint"] = fingerprint(settings, item["key"], item["source"]["prompt"], item["text"], length=16)
