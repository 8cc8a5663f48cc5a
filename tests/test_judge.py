"""The judge stage with scripted judges: failures recorded, reliability, resume, perplexity, contamination."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from fake_llm import ScriptedBackend, register_scripted
from tinystories.eval import metrics
from tinystories.cli import main
from tinystories.io.rundir import read_jsonl

STORIES = [
    "Max ran to the park with his red ball. He threw it high and his friend caught it. They laughed and played until the sun went down.",
    "Lily found a little bird in the garden. It had a hurt wing. She gave it water and kept it warm. Soon the bird could fly again.",
    "Tom and Sue built a tall tower of blocks. It fell down with a crash. They did not cry. They built it again, even taller.",
    "The cat wanted the fish on the table. Mom said no. The cat waited and waited. Then Mom gave it a small piece, and the cat purred.",
]


# -- the stage with scripted judges ------------------------------------------------------------


def prompt_text(p: int) -> str:
    return f"Prompt number {p} is about " + " ".join(f"dog{p}x{i}" for i in range(12)) + ", but"


def story_text(p: int, k: int) -> str:
    return f" {STORIES[(p + k) % 4]} That was tale {p}."


ORIGINALS = {story_text(p, k).strip() for p in range(10) for k in range(10)} | set(STORIES)
# The held-out stories of make_eval_run's dataset (data/val_stories.json): long enough that their
# true continuation has several sentences, so every damage applies to it.
VAL_STORIES = [f"{STORIES[i]} {STORIES[(i + 1) % 4]}" for i in range(4)]


def make_eval_run(root: Path, n_prompts: int = 4, samples: int = 3, val_stories: bool = True) -> Path:
    run = root / "run"
    (run / "eval").mkdir(parents=True)
    (run / "data").mkdir(parents=True)
    recs = []
    for model, kind in (("pretrain/1M", "base"), ("sft/1M", "instruct")):
        for p in range(n_prompts):
            for k in range(samples):
                recs.append({"model": model, "kind": kind, "task": "continue", "prompt_id": f"b{p}", "sample_id": k, "prompt": prompt_text(p), "text": story_text(p, k), "prompt_tokens": 9, "completion_tokens": 30, "seed": 1})
        if kind == "instruct":
            recs.append({"model": model, "kind": kind, "task": "instruct", "prompt_id": "i0", "sample_id": 0, "prompt": "Words: dog, ball\nFeatures: Dialogue", "words": ["dog", "ball"], "text": " " + STORIES[0], "prompt_tokens": 9, "completion_tokens": 30, "seed": 1})
    (run / "eval" / "completions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    stories = [{"id": "s0", "text": "Once upon a time. " + prompt_text(2) + " he fell."}] + [{"id": f"s{i + 1}", "text": s} for i, s in enumerate(STORIES)]
    stories += [{"id": f"v{i}", "story": s} for i, s in enumerate(VAL_STORIES)]
    (run / "data" / "stories.jsonl").write_text("".join(json.dumps(s) + "\n" for s in stories))
    if val_stories:
        from tinystories.train.heldout import story_key, write_val_stories

        write_val_stories(run / "data" / "val_stories.json", [story_key(s) for s in VAL_STORIES])
    return run


def parts(request) -> tuple[str, str]:
    # chat: the user message; completion: the one text, after the system line that opens it
    user = request.messages[-1]["content"] if request.messages is not None else request.prompt.split("\n\n", 1)[1]
    # the completion ends before the request that follows it, or before the question read after it
    m = re.search(r"\n\n(.*?) ?\n?\*\*\*(.*?)\n\n(?:First write|Please provide|Grade |What is your best guess)", user, re.S)
    return m.group(1).strip(), m.group(2)


def reply(grammar, creativity, consistency, plot=5, age="C") -> str:
    return f"Assessment: ok.\nGrammar: {grammar}/10\nCreativity: {creativity}/10\nConsistency: {consistency}/10\nPlot: {plot}/10\nAge group: {age}"


def verdict(request) -> tuple[bool, bool]:
    """(intact, own): whether the graded text is an undamaged story (a model's, or a held-out
    story's true continuation), and whether it continues this beginning."""
    beginning, completion = parts(request)
    text = completion.strip()
    intact = text in ORIGINALS or any(s.endswith(" " + text) for s in VAL_STORIES)
    m = re.search(r"Prompt number (\d)", beginning)
    if m:
        return intact, f"That was tale {m.group(1)}." in completion
    heldout = any(s.startswith(beginning) for s in VAL_STORIES)
    return intact, not heldout or f"{beginning} {text}" in VAL_STORIES


def rule_judge(request) -> str:
    """Grammar high only for an undamaged story; consistency high only for its own prompt."""
    intact, own = verdict(request)
    return reply(9 if intact else 2, 7 if intact else 3, 8 if (intact and own) else 2)


def install(monkeypatch, fn):
    return register_scripted(ScriptedBackend(fn))


def judge_args(run: Path, *extra: str) -> list[str]:
    return ["judge", "--run-dir", str(run), "--set", "judge.reference=none", "--set", "judge.consistency_sample=6", "--set", "judge.discrimination_sample=6", *extra]


def test_rule_judge_discriminates_perfectly(tmp_path, monkeypatch):
    run = make_eval_run(tmp_path)
    backend = install(monkeypatch, rule_judge)
    assert main(judge_args(run)) == 0
    scores = json.loads((run / "eval" / "scores.json").read_text())
    rel = scores["reliability"]
    assert rel["unreliable"] is False and rel["reasons"] == []
    for kind in ("shuffled_sentences", "word_salad", "truncated"):
        assert rel["discrimination"][kind]["n_pairs"] > 0
        assert rel["discrimination"][kind]["share_original_better"]["grammar"] == 1.0
    assert rel["discrimination"]["swapped"]["share_original_better"]["consistency"] == 1.0
    assert rel["discrimination"]["swapped"]["share_original_better"]["grammar"] == 0.0  # a swapped story is still a story
    assert rel["consistency"]["n_pairs"] == 6 and rel["consistency"]["mean_abs_diff"]["grammar"] == 0.0
    base = scores["models"]["pretrain/1M"]["tasks"]["continue"]
    assert base["n_judged"] == 12 and base["n_failed"] == 0 and base["categories"]["grammar"]["mean"] == 9
    inst = scores["models"]["sft/1M"]["tasks"]["instruct"]
    assert inst["categories"]["plot"]["mean"] == 5
    assert base["categories"]["plot"]["mean"] == 5, "plot is graded for story beginnings too, as in the paper's Figure 4"
    # the grading prompt has the paper's shape: beginning *** completion, and both prompts ask for plot
    prompts = [r.messages[-1]["content"] for r in backend.calls]
    assert any("***" in p and "Prompt number 0" in p for p in prompts)
    assert any("Plot: <1-10>/10" in p and "Words: dog, ball" in p for p in prompts)
    assert any("Plot: <1-10>/10" in p and "Prompt number 0" in p for p in prompts)
    # contamination: prompt b2 appears in story s0
    assert scores["contamination"]["flagged"] == ["b2"]
    assert scores["contamination"]["prompts"]["b2"]["example_story"] == "s0"
    recs = list(read_jsonl(run / "eval" / "judgments.jsonl"))
    assert {r["role"] for r in recs} == {"main", "repeat", "original", "damaged"}
    assert all(r["ok"] for r in recs)


def test_discrimination_originals_are_held_out_stories_cut_at_a_sentence_boundary(tmp_path, monkeypatch):
    from tinystories.eval.damage import split_sentences

    run = make_eval_run(tmp_path)
    install(monkeypatch, rule_judge)
    assert main(judge_args(run)) == 0
    recs = list(read_jsonl(run / "eval" / "judgments.jsonl"))
    originals = [r for r in recs if r["role"] == "original"]
    assert len(originals) == len(VAL_STORIES), "every held-out story (fewer than discrimination_sample) is an original"
    for r in originals:
        story = f"{r['prompt']} {r['text'].strip()}"
        assert story in VAL_STORIES, f"beginning + true continuation is a held-out story, not {story!r}"
        assert r["prompt"][-1] in ".!?", "the cut is at a sentence boundary"
        assert split_sentences(r["prompt"]) and len(split_sentences(r["text"])) >= 2, "both halves hold whole sentences"
    damaged = [r for r in recs if r["role"] == "damaged"]
    assert {r["model"] for r in damaged} == {"heldout"}, "no model completion is an original (there is no baseline)"
    swapped = [r for r in damaged if r["damage"] == "swapped"]
    assert swapped and all(any(s.endswith(r["text"]) for s in VAL_STORIES) for r in swapped), "a swap puts another held-out story's continuation in place"
    scores = json.loads((run / "eval" / "scores.json").read_text())
    rel = scores["reliability"]
    assert rel["originals"] == {"source": "heldout", "stories": 4, "file": "data/val_stories.json"}
    assert rel["discrimination_originals"] == {"heldout": 4, "baseline": 0}
    assert rel["originals_graded"]["grammar"]["mean"] == 9, "the true continuations are graded like completions"
    assert "heldout" not in scores["models"], "held-out originals are no model"


def test_without_val_stories_the_originals_are_a_seeded_sample_of_the_stories(tmp_path, monkeypatch):
    run = make_eval_run(tmp_path, val_stories=False)
    install(monkeypatch, rule_judge)
    assert main(judge_args(run, "--set", "judge.discrimination_sample=3")) == 0
    rel = json.loads((run / "eval" / "scores.json").read_text())["reliability"]
    assert rel["originals"]["source"] == "sample" and rel["originals"]["stories"] == 3
    originals = [r for r in read_jsonl(run / "eval" / "judgments.jsonl") if r["role"] == "original"]
    data = [json.loads(line) for line in (run / "data" / "stories.jsonl").read_text().splitlines()]
    texts = [d.get("story") or d.get("text") for d in data]
    assert len(originals) == 3 and all(f"{r['prompt']} {r['text'].strip()}" in texts for r in originals)


def test_originals_heldout_without_val_stories_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    run = make_eval_run(tmp_path, val_stories=False)
    install(monkeypatch, rule_judge)
    assert main(judge_args(run, "--set", "judge.originals=heldout")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "val_stories.json" in err[0] and "prepare" in err[0], err


def test_a_baselines_completions_are_originals_too(tmp_path, monkeypatch):
    run = make_eval_run(tmp_path)
    path = run / "eval" / "completions.jsonl"
    recs = list(read_jsonl(path))
    recs += [{**r, "model": "baseline/embedded", "kind": "baseline"} for r in recs if r["model"] == "pretrain/1M"]
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    install(monkeypatch, rule_judge)
    assert main(judge_args(run)) == 0
    damaged = [r for r in read_jsonl(run / "eval" / "judgments.jsonl") if r["role"] == "damaged"]
    assert {r["model"] for r in damaged} == {"heldout", "baseline/embedded"}
    rel = json.loads((run / "eval" / "scores.json").read_text())["reliability"]
    assert rel["discrimination_originals"] == {"heldout": 4, "baseline": 6}
    assert rel["discrimination"]["word_salad"]["n_pairs"] == 10


def test_scores_hold_reliability_per_scoring_category_and_damage(tmp_path, monkeypatch):
    run = make_eval_run(tmp_path)
    install(monkeypatch, rule_judge)
    assert main(judge_args(run)) == 0
    rel = json.loads((run / "eval" / "scores.json").read_text())["reliability"]
    assert rel["scoring"] == "sampled"
    assert set(rel["by_scoring"]) == {"sampled"}, "the figures are keyed by the scoring that made them"
    assert rel["by_scoring"]["sampled"]["mean_abs_diff"] == rel["consistency"]["mean_abs_diff"], "consistency per category, under that scoring"
    by = rel["by_scoring"]["sampled"]["discrimination"]
    assert set(by) == {"grammar", "creativity", "consistency", "plot"}
    for cat, per_damage in by.items():
        assert set(per_damage) == {"shuffled_sentences", "word_salad", "truncated", "swapped"}, cat
        for kind, share in per_damage.items():
            assert share == rel["discrimination"][kind]["share_original_better"][cat], (cat, kind)
    assert by["grammar"]["word_salad"] == 1.0 and by["consistency"]["swapped"] == 1.0 and by["plot"]["truncated"] == 0.0
    cats = rel["categories"]
    assert cats["grammar"]["trusted"] and cats["creativity"]["trusted"] and cats["consistency"]["trusted"]
    assert not cats["plot"]["trusted"], "the rule judge grades plot 5 whatever it reads"
    assert "truncated version in only 0% of 4 pairs" in cats["plot"]["reasons"][1]
    assert rel["trusted"] == ["grammar", "creativity", "consistency"] and rel["unreliable"] is False
    assert rel["rules"]["min_discrimination"] == 0.75 and rel["rules"]["must_catch"]["grammar"] == ["word_salad", "truncated"]
    assert rel["consistency"]["share_within_1"]["grammar"] == 1.0


def test_every_model_is_graded_on_the_same_beginnings(tmp_path, monkeypatch):
    run = make_eval_run(tmp_path, n_prompts=5, samples=3)
    install(monkeypatch, rule_judge)
    assert main(judge_args(run, "--set", "judge.max_judged=3")) == 0
    main_recs = [r for r in read_jsonl(run / "eval" / "judgments.jsonl") if r["role"] == "main"]
    slots = {}
    for r in main_recs:
        slots.setdefault((r["model"], r["task"]), set()).add((r["prompt_id"], r["sample_id"]))
    assert set(slots) == {("pretrain/1M", "continue"), ("sft/1M", "continue"), ("sft/1M", "instruct")}, "no model loses a task to the sample"
    assert slots[("pretrain/1M", "continue")] == slots[("sft/1M", "continue")], "the same beginnings and samples for every model"
    assert len({p for p, _ in slots[("pretrain/1M", "continue")]}) == 3, "three different beginnings before any second sample"
    scores = json.loads((run / "eval" / "scores.json").read_text())
    assert scores["models"]["pretrain/1M"]["tasks"]["continue"]["n_judged"] == 3 == scores["models"]["sft/1M"]["tasks"]["continue"]["n_judged"]


def test_continuation_prompt_follows_the_papers_figure_3():
    from tinystories.text.prompts import judge_prompt

    text = judge_prompt("continue", "Once upon a time, Tom saw a", " big dog. They played.")
    figure_3 = [
        "the student is given a beginning of a story. The student needs to complete it into a full story",  # the exercise
        "The symbol *** marks the separator between the prescribed beginning and the student's completion",
        "Once upon a time, Tom saw a *** big dog. They played.",  # beginning *** completion
        "general assessment about the part written by the student (the one after the *** symbol)",
        "Is it grammatically correct? Is it consistent with the beginning of the story?",
        "complete the sentence which is split in the middle by the separator ***",
        "grade the student's completion in terms of grammar, creativity, consistency with the story's beginning and whether the plot makes sense",
        "A: 3 or under. B: 4-5. C: 6-7. D: 8-9. E: 10-12. F: 13-16.",
    ]
    at = [text.find(point) for point in figure_3]
    assert all(i >= 0 for i in at), [p for p, i in zip(figure_3, at) if i < 0]
    assert at == sorted(at), "the points come in the figure's order"
    assert "Plot: <1-10>/10" in text, "the format asks for a plot grade"


def test_constant_judge_is_flagged_unreliable(tmp_path, monkeypatch):
    run = make_eval_run(tmp_path)
    install(monkeypatch, lambda req: reply(7, 7, 7))
    assert main(judge_args(run)) == 0
    rel = json.loads((run / "eval" / "scores.json").read_text())["reliability"]
    assert rel["unreliable"] is True
    assert rel["discrimination"]["word_salad"]["share_original_better"]["grammar"] == 0.0
    assert "word salad" in rel["reasons"][0]
    assert rel["trusted"] == [] and not any(c["trusted"] for c in rel["categories"].values()), "a judge that grades everything 7 is trusted on nothing"


def test_unparseable_replies_are_retried_then_recorded_as_failures(tmp_path, monkeypatch):
    run = make_eval_run(tmp_path)

    def flaky(request):
        beginning, completion = parts(request)
        if "Prompt number 1" in beginning:
            return "What a wonderful story, I loved it!"  # never parses
        return rule_judge(request)

    backend = install(monkeypatch, flaky)
    assert main(judge_args(run, "--set", "llm.max_attempts=2")) == 0
    scores = json.loads((run / "eval" / "scores.json").read_text())
    base = scores["models"]["pretrain/1M"]["tasks"]["continue"]
    assert base["n_failed"] == 3 and base["n_judged"] == 9
    assert base["failure_reasons"] == {"no grammar grade": 3}
    assert base["categories"]["grammar"]["mean"] == 9  # failures are not zeros
    recs = [r for r in read_jsonl(run / "eval" / "judgments.jsonl") if r["role"] == "main" and r["prompt_id"] == "b1"]
    assert len(recs) == 6 and all(not r["ok"] and r["grades"] is None and r["error"] == "no grammar grade" and r["attempts"] == 2 for r in recs)
    failing_calls = [c for c in backend.calls if "Prompt number 1" in c.messages[-1]["content"]]
    assert len({c.seed for c in failing_calls}) == len(failing_calls)  # each retry has a fresh seed


def test_judge_resumes_and_skips_done_requests(tmp_path, monkeypatch):
    run = make_eval_run(tmp_path)
    calls = {"n": 0}

    def dying(request):
        calls["n"] += 1
        if calls["n"] == 10:
            raise KeyboardInterrupt
        return rule_judge(request)

    install(monkeypatch, dying)
    assert main(judge_args(run)) == 130
    partial = list(read_jsonl(run / "eval" / "judgments.jsonl"))
    assert 0 < len(partial) < 10
    backend = install(monkeypatch, rule_judge)
    assert main(judge_args(run)) == 0
    recs = list(read_jsonl(run / "eval" / "judgments.jsonl"))
    assert len(recs) == len({r["key"] for r in recs})
    assert len(backend.calls) == len(recs) - len(partial)  # done requests are not asked again (cache aside)


def _down_for_prompt_1(request) -> str:
    """The judge server refuses every request about prompt b1 (503), and answers the rest."""
    from tinystories.llm import TransientError

    beginning, _ = parts(request)
    if "Prompt number 1" in beginning:
        raise TransientError("503 service unavailable")
    return rule_judge(request)


def test_transport_failures_are_not_final_and_a_rerun_sends_exactly_them(tmp_path, monkeypatch, capsys):
    from tinystories.io.rundir import RunDir

    run = make_eval_run(tmp_path)
    down = install(monkeypatch, _down_for_prompt_1)
    assert main(judge_args(run, "--set", "llm.max_retries=0")) == 2, "transport failures must fail the stage (UserError exit 2)"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, f"one-line error expected, got {err}"
    assert "failed in transport" in err[0] and "rerun" in err[0], err[0]
    assert RunDir(run).stage_record("judge")["status"] != "done", "a stage with transport failures must not be marked done"
    failed = {c.key for c in down.calls if "Prompt number 1" in parts(c)[0]}
    assert failed, "the scripted outage must hit some requests"
    first = list(read_jsonl(run / "eval" / "judgments.jsonl"))
    assert first, "the requests that got through are recorded"
    assert all(r["ok"] for r in first), "no transport failure may be recorded as a judgment"
    assert not failed & {r["key"] for r in first}, "nothing is recorded for a request lost in transport"

    back = install(monkeypatch, rule_judge)
    assert main(judge_args(run, "--set", "llm.max_retries=0")) == 0
    assert sorted(c.key for c in back.calls) == sorted(failed), "the rerun sends exactly the failed requests, once each"
    recs = list(read_jsonl(run / "eval" / "judgments.jsonl"))
    assert len(recs) == len(first) + len(failed), "every planned request is recorded once after the rerun"
    assert all(r["ok"] for r in recs), "after recovery every judgment is a verdict"
    assert RunDir(run).stage_record("judge")["status"] == "done"


def test_transport_failures_recorded_as_final_by_an_older_judge_are_asked_again(tmp_path, monkeypatch):
    run = make_eval_run(tmp_path)
    install(monkeypatch, rule_judge)
    assert main(judge_args(run)) == 0
    path = run / "eval" / "judgments.jsonl"
    recs = list(read_jsonl(path))
    lost = recs[3]["key"]
    recs[3].update(ok=False, grades=None, age_group=None, error="transport: gave up after 6 retries: 503")
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    shutil.rmtree(run / "cache" / "llm")  # a request lost in transport never had an answer to cache
    again = install(monkeypatch, rule_judge)
    assert main(judge_args(run, "--force")) == 0
    assert [c.key for c in again.calls] == [lost], "only the request an older run lost in transport is sent again"
    fixed = {r["key"]: r for r in read_jsonl(path)}
    assert fixed[lost]["ok"] and len(fixed) == len(recs)


def test_perplexity_with_a_hf_reference(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    from test_complete import make_model_dir

    run = make_eval_run(tmp_path)
    model, tok = make_model_dir(tmp_path / "ref")
    install(monkeypatch, rule_judge)
    assert main(judge_args(run, "--set", f"judge.reference={tmp_path / 'ref'}")) == 0
    ppl = json.loads((run / "eval" / "scores.json").read_text())["perplexity"]
    assert ppl["reference"] == "hf" and set(ppl["models"]) == {"pretrain/1M", "sft/1M"}
    assert ppl["models"]["pretrain/1M"]["n"] == 12 and ppl["models"]["pretrain/1M"]["ppl"] > 1
    assert ppl["discrimination"]["word_salad"]["n_pairs"] > 0
    assert 0 <= ppl["discrimination"]["word_salad"]["share_original_lower"] <= 1
    # the scorer gives log p of exactly the continuation's tokens, conditioned on eos + prefix
    score, _ = metrics.hf_scorer(tmp_path / "ref")
    prefix, cont = "Max ran", " to the park."
    ids = [tok.eos_token_id] + tok("Max ran", add_special_tokens=False).input_ids
    target = tok(cont, add_special_tokens=False).input_ids
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids + target])).logits[0], -1)
    expected = [float(logp[len(ids) - 1 + i, t]) for i, t in enumerate(target)]
    assert score(prefix, cont) == pytest.approx(expected, abs=1e-5)


def test_reference_without_token_scores_is_reported_not_faked(tmp_path, monkeypatch):
    run = make_eval_run(tmp_path)
    install(monkeypatch, rule_judge)
    args = [a for a in judge_args(run) if a != "judge.reference=none"]
    args.remove("--set")  # the one before judge.reference=none
    assert main(args) == 0
    ppl = json.loads((run / "eval" / "scores.json").read_text())["perplexity"]
    assert ppl["reference"] == "embedded" and "cannot score tokens" in ppl["unavailable"] and ppl["models"] == {}


# -- base-model instructions: word compliance only ------------------------------------------


def _with_base_instructions(run: Path) -> None:
    path = run / "eval" / "completions.jsonl"
    recs = list(read_jsonl(path))
    for k in range(3):
        recs.append({"model": "pretrain/1M", "kind": "base", "task": "instruct", "prompt_id": "i0", "sample_id": k, "prompt": "Words: dog, ball\nFeatures: Dialogue", "words": ["dog", "ball"], "text": " The ball was red." if k else " " + STORIES[0], "prompt_tokens": 9, "completion_tokens": 30, "seed": 1})
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))


def test_base_instruction_completions_are_scored_for_words_but_never_judged(tmp_path, monkeypatch):
    plain = make_eval_run(tmp_path / "a")
    probed = make_eval_run(tmp_path / "b")
    _with_base_instructions(probed)
    backend = install(monkeypatch, rule_judge)
    keys = {}
    for run in (plain, probed):
        assert main(judge_args(run, "--set", "judge.max_judged=3", "--set", "judge.consistency_sample=2", "--set", "judge.discrimination_sample=2")) == 0
        keys[run] = sorted(r["key"] for r in read_jsonl(run / "eval" / "judgments.jsonl"))
    # the judge workload (what is sampled and sent) is the same as without the base-model instructions
    assert keys[plain] == keys[probed] and keys[plain]
    assert backend.calls and not any("The ball was red." in r.messages[-1]["content"] for r in backend.calls)
    scores = json.loads((probed / "eval" / "scores.json").read_text())
    assert set(scores["models"]["pretrain/1M"]["tasks"]) == {"continue"}
    wc = scores["word_compliance"]["models"]
    # STORIES[0] has "ball" but not "dog"; " The ball was red." neither all
    assert wc["pretrain/1M"]["n"] == 3 and wc["pretrain/1M"]["all_words"]["share"] == 0.0 and wc["pretrain/1M"]["words_present"]["mean"] == 0.5
    assert wc["sft/1M"]["n"] == 1 and wc["sft/1M"]["kind"] == "instruct"


# -- expected scoring: grades read from the judge's token distribution ------------------------

INTACT_GRAMMAR = {"9": 0.7, " 8": 0.2, "The": 0.1}  # expected grade (9*.7 + 8*.2) / .9
DAMAGED_GRAMMAR = {"2": 0.9, "3": 0.1}  # 2.1
PLOT_FIRST, PLOT_AFTER_ONE = {"1": 0.5, "9": 0.5}, {"0": 0.8, "/": 0.2}  # "10" written as "1" "0": P(10)=.4, P(1)=.1, P(9)=.5
AGE = {" C": 0.6, "B": 0.3, "x": 0.1}


def position(probs: dict[str, float]):
    """A one-token reply with its top-k log-probabilities, as a backend returns it."""
    import math

    from tinystories.llm import RawResult

    token = max(probs, key=probs.get)
    return RawResult(text=token, finish_reason="length", prompt_tokens=9, completion_tokens=1, model="scripted-model", logprobs=[{t: math.log(p) for t, p in probs.items()}])


def forced_judge(request, grammar_if_intact=INTACT_GRAMMAR):
    """A completion-mode judge with known distributions at every forced grade line."""
    if not request.top_logprobs:
        return " The student finishes the sentence and keeps to the story."
    if request.key == "judge|logprobs-probe":
        return position({"7": 1.0})  # the stage's probe: does the judge return log-probabilities?
    intact, own = verdict(request)
    line = request.prompt.rsplit("\n", 1)[1]
    if line == "Grammar: ":
        return position(grammar_if_intact if intact else DAMAGED_GRAMMAR)
    if line == "Creativity: ":
        return position({"7": 1.0} if intact else {"3": 1.0})
    if line == "Consistency: ":
        return position({"8": 1.0} if (intact and own) else {"2": 1.0})
    if line == "Plot: ":
        return position(PLOT_FIRST)
    if line == "Plot: 1":
        return position(PLOT_AFTER_ONE)
    if line.endswith(": 1"):  # read after every "1" when the grades are read in one request
        return position({"/": 1.0})
    assert line == "Age group: ", f"unexpected forced line {line!r}"
    return position(AGE)


def completion_judge_args(run: Path, *extra: str) -> list[str]:
    return judge_args(run, "--set", "judge.llm.mode=completion", *extra)


def known_expected_grades(run: Path) -> tuple[dict, dict]:
    """scores.json and pretrain/1M's story-beginning block, checked against forced_judge's distributions."""
    scores = json.loads((run / "eval" / "scores.json").read_text())
    assert scores["judge"]["scoring"] == "expected", "auto picks expected scoring when the judge returns log-probabilities"
    base = scores["models"]["pretrain/1M"]["tasks"]["continue"]
    assert base["n_judged"] == 12 and base["n_failed"] == 0
    assert base["categories"]["grammar"]["mean"] == pytest.approx((9 * 0.7 + 8 * 0.2) / 0.9, abs=1e-4), "the expected grade over the mass on grades"
    assert base["categories"]["plot"]["mean"] == pytest.approx(10 * 0.4 + 1 * 0.1 + 9 * 0.5, abs=1e-4), "a 10 written as 1 then 0 counts as 10"
    return scores, base


def test_expected_scoring_is_the_default_and_reads_every_grade_in_one_request(tmp_path, monkeypatch):
    run = make_eval_run(tmp_path)
    backend = install(monkeypatch, forced_judge)
    assert main(completion_judge_args(run)) == 0
    scores, base = known_expected_grades(run)
    assert base["categories"]["consistency"]["mean"] == pytest.approx(8.0), "each line is read on its own"
    assert base["age_groups"] == {"C": 12}
    recs = list(read_jsonl(run / "eval" / "judgments.jsonl"))
    assert not [r for r in recs if r["role"] == "repeat"], "nothing is sampled, so no completion is judged twice"
    rel = scores["reliability"]
    assert rel["consistency"]["deterministic"] is True and rel["categories"]["grammar"]["trusted"] is True, "trust rests on discrimination alone"
    assert rel["discrimination"]["word_salad"]["share_original_better"]["grammar"] == 1.0
    main_rec = next(r for r in recs if r["role"] == "main" and r["task"] == "continue")
    assert main_rec["distributions"]["plot"]["10"] == pytest.approx(0.4) and main_rec["distributions"]["age_group"]["C"] == pytest.approx(0.6)
    assert main_rec["assessment"] == "", "no assessment is written"
    asked = [c for c in backend.calls if c.continuations]
    assert len(asked) == len(recs), "one request per judgment"
    assert all("Assessment:" not in c.prompt and "Reply in exactly this format" not in c.prompt for c in asked), "the exercise, without the request for a reply"
    ends = [c.rsplit("\n", 1)[1] for c in asked[0].continuations]
    assert ends == ["Grammar: ", "Grammar: 1", "Creativity: ", "Creativity: 1", "Consistency: ", "Consistency: 1", "Plot: ", "Plot: 1", "Age group: "], "one question per grade, each read alone and after a 1"
    assert "consistency of the student's completion" in asked[0].continuations[4], "each grade is asked about on its own"
    assert not [c for c in backend.calls if not c.top_logprobs], "no text is sampled"


def test_a_backend_that_reads_positions_itself_gets_expected_scoring_in_chat_mode_too(tmp_path, monkeypatch):
    # the embedded backend reads Request.continuations from the raw prompt whatever llm.mode says
    run = make_eval_run(tmp_path)
    backend = install(monkeypatch, forced_judge)
    backend.reads_positions = True
    assert main(judge_args(run)) == 0, "the default llm.mode is chat"
    scores, _ = known_expected_grades(run)
    assert all(c.continuations or c.prompt for c in backend.calls) and not [c for c in backend.calls if c.messages], "no chat request was made"
    assert main(judge_args(run, "--set", "judge.assessment=true")) == 0
    assert json.loads((run / "eval" / "scores.json").read_text())["judge"]["scoring"] == "sampled", "forcing lines after an assessment needs completion mode"


def test_expected_grade_read_in_one_request_without_mass_is_a_failure(tmp_path, monkeypatch):
    run = make_eval_run(tmp_path)
    backend = install(monkeypatch, lambda req: forced_judge(req, grammar_if_intact={"The": 0.8, "7": 0.2}))
    assert main(completion_judge_args(run, "--set", "judge.scoring=expected")) == 0
    base = json.loads((run / "eval" / "scores.json").read_text())["models"]["pretrain/1M"]["tasks"]["continue"]
    assert base["n_judged"] == 0 and base["n_failed"] == 12
    assert base["failure_reasons"] == {"grammar: only 20% of the judge's probability on grades 1-10 (needs 50%)": 12}
    failed = next(r for r in read_jsonl(run / "eval" / "judgments.jsonl") if r["role"] == "main")
    assert failed["grades"] is None and failed["distributions"]["grammar"]["7"] == pytest.approx(0.2), "the failure keeps what it read"
    assert len([c for c in backend.calls if c.continuations]) == len(list(read_jsonl(run / "eval" / "judgments.jsonl"))), "a failure is not retried: the same positions give the same distribution"


def test_expected_scoring_after_an_assessment_forces_the_reply_line_by_line(tmp_path, monkeypatch):
    run = make_eval_run(tmp_path)
    backend = install(monkeypatch, forced_judge)
    assert main(completion_judge_args(run, "--set", "judge.assessment=true")) == 0
    scores, base = known_expected_grades(run)
    assert base["age_groups"] == {"C": 12}
    rel = scores["reliability"]
    assert rel["discrimination"]["word_salad"]["share_original_better"]["grammar"] == 1.0 and rel["unreliable"] is False
    assert rel["scoring"] == "expected" and rel["by_scoring"]["expected"]["discrimination"]["grammar"]["word_salad"] == 1.0, "recorded under the scoring that made it"
    recs = list(read_jsonl(run / "eval" / "judgments.jsonl"))
    main_rec = next(r for r in recs if r["role"] == "main" and r["task"] == "continue")
    assert main_rec["distributions"]["grammar"]["9"] == pytest.approx(0.7) and main_rec["distributions"]["grammar"]["8"] == pytest.approx(0.2)
    assert main_rec["distributions"]["plot"]["10"] == pytest.approx(0.4) and main_rec["distributions"]["plot"]["1"] == pytest.approx(0.1)
    assert main_rec["distributions"]["age_group"]["C"] == pytest.approx(0.6) and main_rec["age_group"] == "C"
    assert main_rec["assessment"].startswith("The student finishes")
    # one assessment, four grades, one look after the "1" of plot, one age group per judgment; one probe
    assert len(backend.calls) == 7 * len(recs) + 1
    # the likeliest grade is written into the forced reply before the next line is read
    assert any(c.prompt.endswith("Grammar: 9/10\nCreativity: ") for c in backend.calls)
    positions = [c for c in backend.calls if c.top_logprobs and c.key != "judge|logprobs-probe"]
    assert all(c.max_tokens == 1 and c.top_logprobs == 20 for c in positions), "each grade position is one token with its top-k"


def test_expected_grade_without_mass_on_grades_is_a_failure_not_a_score(tmp_path, monkeypatch):
    run = make_eval_run(tmp_path)
    install(monkeypatch, lambda req: forced_judge(req, grammar_if_intact={"The": 0.8, "7": 0.2}))
    assert main(completion_judge_args(run, "--set", "judge.scoring=expected", "--set", "judge.assessment=true")) == 0
    scores = json.loads((run / "eval" / "scores.json").read_text())
    base = scores["models"]["pretrain/1M"]["tasks"]["continue"]
    assert base["n_judged"] == 0 and base["n_failed"] == 12, "every intact story's grammar grade lacks the mass"
    assert base["failure_reasons"] == {"grammar: only 20% of the judge's probability on grades 1-10 (needs 50%)": 12}
    failed = [r for r in read_jsonl(run / "eval" / "judgments.jsonl") if r["role"] == "main" and not r["ok"]]
    assert failed and all(r["grades"] is None for r in failed), "a failure has no grades"
    intact = [r for r in failed if r["damage"] is None]
    assert intact[0]["distributions"]["grammar"]["7"] == pytest.approx(0.2), "a failure keeps the distribution that failed, for inspection"
    assert intact[0]["reply"].endswith("\nGrammar: "), "and the forced reply up to the failing line"


def test_an_age_written_in_years_leaves_the_expected_grades_standing(tmp_path, monkeypatch):
    # the embedded 1.5B writes an age ("5") where the letter belongs: 98% of its probability on digits
    def ages_in_years(request):
        if request.top_logprobs and request.prompt.endswith("Age group: "):
            return position({"5": 0.6, "1": 0.38, " B": 0.02})
        return forced_judge(request)

    run = make_eval_run(tmp_path)
    install(monkeypatch, ages_in_years)
    assert main(completion_judge_args(run, "--set", "judge.scoring=expected", "--set", "judge.assessment=true")) == 0
    scores = json.loads((run / "eval" / "scores.json").read_text())
    base = scores["models"]["pretrain/1M"]["tasks"]["continue"]
    assert base["n_judged"] == 12 and base["n_failed"] == 0, "the grades were read: the judgment stands"
    assert base["age_groups"] == {} and base["age_group_failed"] == 12
    rec = next(r for r in read_jsonl(run / "eval" / "judgments.jsonl") if r["role"] == "main")
    assert rec["ok"] and rec["age_group"] is None and "only 2% of the judge's probability on the letters A-F" in rec["age_group_error"]
    assert scores["reliability"]["discrimination"]["word_salad"]["share_original_better"]["grammar"] == 1.0


@pytest.mark.parametrize("mode, option", [("completion", "judge.scoring: sampled"), ("chat", "judge.llm.mode: completion")])
def test_expected_scoring_without_log_probabilities_is_a_one_line_error(tmp_path, monkeypatch, capsys, mode, option):
    run = make_eval_run(tmp_path)
    install(monkeypatch, rule_judge if mode == "chat" else lambda req: reply(7, 7, 7))  # plain text, no log-probabilities
    assert main(judge_args(run, "--set", f"judge.llm.mode={mode}", "--set", "judge.scoring=expected")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, f"one-line error expected, got {err}"
    assert option in err[0] and "judge.scoring: sampled" in err[0], err[0]


def test_auto_scoring_samples_when_the_judge_returns_no_log_probabilities(tmp_path, monkeypatch):
    run = make_eval_run(tmp_path)
    install(monkeypatch, lambda req: reply(7, 7, 7)[len("Assessment:"):])  # a completion continues "Assessment:"
    assert main(completion_judge_args(run)) == 0
    scores = json.loads((run / "eval" / "scores.json").read_text())
    assert scores["judge"]["scoring"] == "sampled"
    assert scores["models"]["pretrain/1M"]["tasks"]["continue"]["categories"]["grammar"]["mean"] == 7


def test_expected_scoring_against_a_server_that_ignores_logprobs_names_the_option(tmp_path, monkeypatch, capsys):
    from stub_openai import StubServer

    run = make_eval_run(tmp_path)
    with StubServer() as stub:
        stub.logprobs = False
        args = ["--set", "judge.llm.backend=openai", "--set", f"judge.llm.base_urls=[{stub.url}]", "--set", "judge.llm.model=stub-model", "--set", "llm.max_retries=0"]
        assert main(completion_judge_args(run, *args, "--set", "judge.scoring=expected")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "judge.scoring: sampled" in err[0], err
