"""Judge-free signals: prompt contamination and word compliance (perplexity runs in test_judge)."""

from __future__ import annotations

from tinystories.eval import metrics


def test_contamination_finds_shared_13_grams():
    prompt = "One day a little girl named Lily went to the park with her mom and saw a big dog"
    stories = [{"id": "s1", "text": "Hello. " + prompt.upper() + " that barked."}, {"id": "s2", "text": "A cat sat on a mat."}]
    out = metrics.contamination({"p1": prompt, "p2": "A short one, but"}, stories, 13)
    assert out["flagged"] == ["p1"] and out["prompts"]["p1"]["share"] == 1.0 and out["prompts"]["p1"]["example_story"] == "s1"
    assert out["prompts"]["p2"] == {"ngrams": 0, "matched": 0, "share": None, "example_story": None}
    assert metrics.contamination({"p1": prompt}, stories[1:], 13)["flagged"] == []


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
    wc = metrics.word_compliance(recs)["models"]
    sft, base = wc["sft/1M"], wc["pretrain/1M"]
    assert sft["kind"] == "instruct" and sft["instruction_completions"] == 3 and sft["n"] == 2
    assert sft["all_words"]["share"] == 0.5 and sft["all_words"]["hits"] == 1 and sft["words_present"]["mean"] == 0.75
    assert base["kind"] == "base" and base["n"] == 3
    assert base["all_words"]["share"] == round(1 / 3, 4) and base["all_words"]["hits"] == 1
    assert base["words_present"]["mean"] == round((1 + 0 + 2 / 3) / 3, 4)
    assert base["words_present"]["ci95"] is not None and base["all_words"]["n"] == 3
    # a word inside another word does not count
    assert metrics.word_compliance([_instr("m", "instruct", "i", 0, ["cat"], " The category was caterpillars.")])["models"]["m"]["all_words"]["share"] == 0.0
