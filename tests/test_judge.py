"""The judge stage: strict parser, failures recorded, damage, reliability, perplexity, contamination."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from fake_llm import ScriptedBackend
from tinystories.eval import judge
from tinystories.cli import main
from tinystories.llm import Reject
from tinystories.llm import client as client_mod
from tinystories.io.rundir import read_jsonl

GOOD = """Assessment: The student finishes the sentence well and the story stays on the dog.
Grammar: 8/10
Creativity: 6/10
Consistency: 9/10
Age group: B"""

STORIES = [
    "Max ran to the park with his red ball. He threw it high and his friend caught it. They laughed and played until the sun went down.",
    "Lily found a little bird in the garden. It had a hurt wing. She gave it water and kept it warm. Soon the bird could fly again.",
    "Tom and Sue built a tall tower of blocks. It fell down with a crash. They did not cry. They built it again, even taller.",
    "The cat wanted the fish on the table. Mom said no. The cat waited and waited. Then Mom gave it a small piece, and the cat purred.",
]


# -- parser ------------------------------------------------------------------------------------


def test_parser_reads_good_replies():
    g = judge.parse_grades(GOOD, "continue")
    assert (g["grammar"], g["creativity"], g["consistency"], g["age_group"]) == (8, 6, 9, "B")
    assert g["assessment"].startswith("The student finishes")
    md = "**Assessment:** fine.\n\n- **Grammar:** 7 out of 10\n- **Creativity:** 5\n- **Consistency:** 6/10\n- **Plot:** 4/10\n**Age group:** (C)"
    g = judge.parse_grades(md, "instruct")
    assert (g["grammar"], g["creativity"], g["consistency"], g["plot"], g["age_group"]) == (7, 5, 6, 4, "C")


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
    ],
)
def test_parser_rejects_bad_replies(reply, reason):
    with pytest.raises(Reject) as err:
        judge.parse_grades(reply, "continue")
    assert reason in str(err.value)


def test_instruct_task_needs_plot():
    with pytest.raises(Reject, match="no plot grade"):
        judge.parse_grades(GOOD, "instruct")


# -- damage ------------------------------------------------------------------------------------


def test_damage_functions():
    text = STORIES[0]
    rng = random.Random(0)
    shuffled = judge.shuffle_sentences(text, rng)
    assert sorted(judge.split_sentences(shuffled)) == sorted(judge.split_sentences(text)) and shuffled.strip() != text
    salad = judge.word_salad(text, rng)
    assert sorted(salad.split()) == sorted(text.split()) and salad.strip() != text
    cut = judge.truncate(text, rng)
    assert 2 <= len(cut.split()) <= 5 and text.startswith(cut.strip())
    assert judge.damage("swapped", text, rng, STORIES[1]) == STORIES[1]
    # not applicable: one sentence cannot be reordered, two words cannot be cut further
    assert judge.shuffle_sentences(" He ran home.", rng) is None
    assert judge.truncate(" He ran", rng) is None
    assert judge.damage("swapped", text, rng, text) is None


def test_proportion_ci_is_the_wilson_interval():
    # textbook values: 0 of 10 -> [0, 0.2775]; 5 of 10 -> [0.2366, 0.7634]
    assert judge.proportion_ci(0, 10) == {"share": 0.0, "low": 0.0, "high": 0.2775, "hits": 0, "n": 10}
    assert judge.proportion_ci(5, 10)["low"] == 0.2366 and judge.proportion_ci(5, 10)["high"] == 0.7634
    assert judge.proportion_ci(0, 0)["share"] is None


def test_mean_ci():
    r = judge.mean_ci([4, 6, 8])
    assert r["mean"] == 6 and r["n"] == 3 and abs(r["ci95"] - 4.303 * 2 / 3**0.5) < 1e-3
    assert judge.mean_ci([5])["ci95"] is None and judge.mean_ci([])["mean"] is None


def test_contamination_finds_shared_13_grams():
    prompt = "One day a little girl named Lily went to the park with her mom and saw a big dog"
    stories = [{"id": "s1", "text": "Hello. " + prompt.upper() + " that barked."}, {"id": "s2", "text": "A cat sat on a mat."}]
    out = judge.contamination({"p1": prompt, "p2": "A short one, but"}, stories, 13)
    assert out["flagged"] == ["p1"] and out["prompts"]["p1"]["share"] == 1.0 and out["prompts"]["p1"]["example_story"] == "s1"
    assert out["prompts"]["p2"] == {"ngrams": 0, "matched": 0, "share": None, "example_story": None}
    assert judge.contamination({"p1": prompt}, stories[1:], 13)["flagged"] == []


# -- the stage with scripted judges ------------------------------------------------------------


def prompt_text(p: int) -> str:
    return f"Prompt number {p} is about " + " ".join(f"dog{p}x{i}" for i in range(12)) + ", but"


def story_text(p: int, k: int) -> str:
    return f" {STORIES[(p + k) % 4]} That was tale {p}."


ORIGINALS = {story_text(p, k).strip() for p in range(10) for k in range(10)} | set(STORIES)


def make_eval_run(root: Path, n_prompts: int = 4, samples: int = 3) -> Path:
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
    (run / "data" / "stories.jsonl").write_text("".join(json.dumps(s) + "\n" for s in stories))
    return run


def parts(request) -> tuple[str, str]:
    user = request.messages[-1]["content"]
    m = re.search(r"\n\n(.*?) ?\*\*\*(.*?)\n\nFirst write", user, re.S)
    return m.group(1).strip(), m.group(2)


def reply(grammar, creativity, consistency, plot=5, age="C") -> str:
    return f"Assessment: ok.\nGrammar: {grammar}/10\nCreativity: {creativity}/10\nConsistency: {consistency}/10\nPlot: {plot}/10\nAge group: {age}"


def rule_judge(request) -> str:
    """Grammar high only for an undamaged story; consistency high only for its own prompt."""
    beginning, completion = parts(request)
    intact = completion.strip() in ORIGINALS
    m = re.search(r"Prompt number (\d)", beginning)
    own = m is None or f"That was tale {m.group(1)}." in completion
    return reply(9 if intact else 2, 7 if intact else 3, 8 if (intact and own) else 2)


def install(monkeypatch, fn):
    backend = ScriptedBackend(fn)
    monkeypatch.setattr(client_mod, "make_backend", lambda cfg: backend)
    return backend


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
    assert inst["categories"]["plot"]["mean"] == 5 and "plot" not in base["categories"]
    # the grading prompt has the paper's shape: beginning *** completion, and the instruct prompt asks for plot
    prompts = [r.messages[-1]["content"] for r in backend.calls]
    assert any("***" in p and "Prompt number 0" in p for p in prompts)
    assert any("Plot: <1-10>/10" in p and "Words: dog, ball" in p for p in prompts)
    # contamination: prompt b2 appears in story s0
    assert scores["contamination"]["flagged"] == ["b2"]
    assert scores["contamination"]["prompts"]["b2"]["example_story"] == "s0"
    recs = list(read_jsonl(run / "eval" / "judgments.jsonl"))
    assert {r["role"] for r in recs} == {"main", "repeat", "damaged"}
    assert all(r["ok"] for r in recs)


def test_constant_judge_is_flagged_unreliable(tmp_path, monkeypatch):
    run = make_eval_run(tmp_path)
    install(monkeypatch, lambda req: reply(7, 7, 7))
    assert main(judge_args(run)) == 0
    rel = json.loads((run / "eval" / "scores.json").read_text())["reliability"]
    assert rel["unreliable"] is True
    assert rel["discrimination"]["word_salad"]["share_original_better"]["grammar"] == 0.0
    assert "word salad" in rel["reasons"][0]


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
    score, _ = judge.hf_scorer(tmp_path / "ref")
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


# -- word compliance (judge-free instruction following) -----------------------------------------


def _instr(model, kind, pid, k, words, text, task="instruct"):
    return {"model": model, "kind": kind, "task": task, "prompt_id": pid, "sample_id": k, "prompt": "Words: " + ", ".join(words), "words": words, "text": text}


def test_word_compliance_counts_inflections_and_missing_words():
    recs = [
        _instr("sft/1M", "instruct", "i0", 0, ["jump", "mouse"], " The Mice jumped over the log."),  # both, inflected
        _instr("sft/1M", "instruct", "i0", 1, ["jump", "mouse"], " The dog jumps high."),  # mouse missing
        _instr("sft/1M", "instruct", "i1", 0, [], " A bird learns to fly."),  # no words requested: not counted
        _instr("sft/1M", "instruct", "b0", 0, ["mouse"], " no mouse here", task="continue"),  # not an instruction
        _instr("pretrain/1M", "base", "i0", 0, ["happy", "tree"], " She was happier than the trees."),
        _instr("pretrain/1M", "base", "i0", 1, ["happy", "tree"], " He ran home."),
        _instr("pretrain/1M", "base", "i1", 0, ["cake", "share", "brave"], " They shared the cake."),  # 2 of 3
    ]
    wc = judge.word_compliance(recs)["models"]
    sft, base = wc["sft/1M"], wc["pretrain/1M"]
    assert sft["kind"] == "instruct" and sft["instruction_completions"] == 3 and sft["n"] == 2
    assert sft["all_words"]["share"] == 0.5 and sft["all_words"]["hits"] == 1 and sft["words_present"]["mean"] == 0.75
    assert base["kind"] == "base" and base["n"] == 3
    assert base["all_words"]["share"] == round(1 / 3, 4) and base["all_words"]["hits"] == 1
    assert base["words_present"]["mean"] == round((1 + 0 + 2 / 3) / 3, 4)
    assert base["words_present"]["ci95"] is not None and base["all_words"]["n"] == 3
    # a word inside another word does not count
    assert judge.word_compliance([_instr("m", "instruct", "i", 0, ["cat"], " The category was caterpillars.")])["models"]["m"]["all_words"]["share"] == 0.0


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
