"""The report renders from a tiny run directory; its numbers are those of scores.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from test_judge import _with_base_instructions, install, judge_args, make_eval_run, rule_judge
from tinystories.eval import report
from tinystories.cli import main


def full_run(tmp_path, monkeypatch, judge_fn=rule_judge) -> Path:
    run = make_eval_run(tmp_path)
    install(monkeypatch, judge_fn)
    assert main(judge_args(run)) == 0
    for name, start in (("pretrain/1M", 5.0), ("pretrain/8M", 4.0), ("sft/1M", 2.0)):
        d = run / name
        d.mkdir(parents=True)
        recs = [{"step": s, "train_loss": start - s / 100, "tokens": s * 1000, "val_loss": start - s / 90, "val_bpb": (start - s / 90) / 3} for s in (10, 20, 30)]
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    models = {"pretrain/1M": {"kind": "base", "params": 1_200_000, "temperature": 1.0, "top_p": 0.95, "max_new_tokens": 300, "samples": 3, "completions": 12}, "sft/1M": {"kind": "instruct", "params": 1_200_000, "temperature": 1.0, "top_p": 0.95, "max_new_tokens": 300, "samples": 3, "completions": 13}}
    (run / "eval" / "models.json").write_text(json.dumps({"models": models}))
    (run / "data" / "stats.json").write_text(json.dumps({"stories": 5, "words": {"mean": 41.5, "max": 60}, "backend": "embedded"}))
    return run


def test_report_renders_every_section_and_chart(tmp_path, monkeypatch):
    run = full_run(tmp_path, monkeypatch)
    assert main(["report", "--run-dir", str(run)]) == 0
    md = (run / "report" / "results.md").read_text()
    for heading in ("Scale of this run", "Judge scores: story completions", "Instruction following", "Base vs instruct", "Judge reliability", "Perplexity under a reference model", "Validation loss", "Sample completions", "Contamination check", "Dataset", "Who wrote, trained and judged", "Stages: wall time"):
        assert f"## {heading}" in md, heading
    assert "WARNING" not in md
    for png in ("scores_by_model.png", "instruct_scores.png", "scores_vs_params.png", "val_loss.png"):
        p = run / "report" / png
        assert p.exists() and p.read_bytes()[:4] == b"\x89PNG" and f"({png})" in md
    assert "pretrain/1M → sft/1M" in md
    assert "| judge | done |" in md  # stage table from the manifest
    assert "scoring sampled" in md and "numbers the judge wrote" in md, "the report says how grades were read"
    # three samples of the same prompt per model
    assert md.count("> 0: …") == 2 and md.count("> 2: …") == 2
    assert "b2" in md.split("## Contamination check")[1]
    assert "1.20M" in md
    # make_eval_run gives only the instruct model an instruction: a row for it, and no baseline
    assert "| sft/1M | instruct | 1 | 0/1 = 0% [0%–79%] | 50% |" in md  # STORIES[0] has "ball", not "dog"
    assert "No base model completed the instructions" in md


def test_numbers_in_results_equal_scores_json(tmp_path, monkeypatch):
    run = full_run(tmp_path, monkeypatch)
    assert main(["report", "--run-dir", str(run)]) == 0
    md = (run / "report" / "results.md").read_text()
    scores = json.loads((run / "eval" / "scores.json").read_text())
    lines = md.splitlines()
    for name, m in scores["models"].items():
        t = m["tasks"]["continue"]
        row = next(line for line in lines if line.startswith(f"| {name} |") and "| " + report.fmt(t["n_judged"]) + " |" in line)
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[3:7] == [report.fmt_score(t["categories"][c]) for c in ("grammar", "creativity", "consistency", "plot")]
        assert cells[7:9] == [str(t["n_judged"]), str(t["n_failed"])]
    disc = scores["reliability"]["discrimination"]["word_salad"]
    row = next(line for line in lines if line.startswith("| word_salad |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == str(disc["n_pairs"]) and cells[2] == report.fmt_share(disc["share_original_better"]["grammar"])
    cons = scores["reliability"]["consistency"]["mean_abs_diff"]
    assert "| " + " | ".join(report.fmt(cons[c]) for c in report.CATS if c in cons) + " |" in md
    # the val-loss row is the last validation record of metrics.jsonl
    assert "| pretrain/8M | 3.6667 | 1.2222 | 30,000 | 30 |" in md


def test_word_compliance_section_shows_the_numbers_of_scores_json(tmp_path, monkeypatch):
    run = make_eval_run(tmp_path)
    _with_base_instructions(run)  # pretrain/1M also completed instruction i0, as a plain prefix
    install(monkeypatch, rule_judge)
    assert main(judge_args(run)) == 0
    assert main(["report", "--run-dir", str(run)]) == 0
    md = (run / "report" / "results.md").read_text()
    wc = json.loads((run / "eval" / "scores.json").read_text())["word_compliance"]["models"]
    section = md.split("## Instruction following (judge-free)")[1].split("\n## ")[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and cells[0] in wc:
            rows[cells[0]] = cells
    assert set(rows) == {"pretrain/1M", "sft/1M"}
    for name, m in wc.items():
        assert rows[name] == [name, m["kind"], str(m["n"]), report.fmt_proportion(m["all_words"]), report.fmt_share_ci(m["words_present"])]
    # the figures themselves: base 0 of 3 with both words, half the words on average; sft 0 of 1 (no "dog")
    assert rows["pretrain/1M"][1:] == ["base", "3", "0/3 = 0% [0%–56%]", "50% ± 0"] and rows["sft/1M"][1:] == ["instruct", "1", "0/1 = 0% [0%–79%]", "50%"]
    assert "plain prefix" in section and "### Instruction:" in section


def test_unreliable_judge_warns_at_the_top(tmp_path, monkeypatch):
    from test_judge import reply

    run = full_run(tmp_path, monkeypatch, judge_fn=lambda req: reply(7, 7, 7))
    assert main(["report", "--run-dir", str(run)]) == 0
    md = (run / "report" / "results.md").read_text()
    first = md.split("\n## ")[0]
    assert "**WARNING: the judge is unreliable" in first and "word salad" in first
    assert "scripted-model" in first and "sampled scoring" in first, "the warning names the judge and scoring"
    assert all("(untrusted;" in h for h in _grades_table_heading(md)), "no grade of an unreliable judge is shown as trusted"


def _grades_table_heading(md: str) -> list[str]:
    section = md.split("## Judge scores: story completions")[1].split("\n## ")[0]
    header = next(line for line in section.splitlines() if line.startswith("| model | kind |"))
    return [c.strip() for c in header.strip("|").split("|")][3:7]


def test_report_marks_each_category_trusted_or_not(tmp_path, monkeypatch):
    run = full_run(tmp_path, monkeypatch)  # the rule judge: right on grammar, creativity, consistency; plot always 5
    assert main(["report", "--run-dir", str(run)]) == 0
    md = (run / "report" / "results.md").read_text()
    rel = json.loads((run / "eval" / "scores.json").read_text())["reliability"]
    headings = _grades_table_heading(md)
    assert headings == [report.category_heading(c, rel) for c in report.CATS], "every grade column carries its category's reliability"
    assert headings[0] == "grammar (trusted; caught 100%, repeat Δ 0.00)"
    assert headings[3] == "plot (untrusted; caught 0%, repeat Δ 0.00)"
    top = md.split("\n## ")[0]
    assert "WARNING" not in top, "a judge trusted on some categories is no unreliable judge"
    assert "Judge scripted-model (backend scripted, chat mode, sampled scoring): trusted on grammar, creativity, consistency; **untrusted on plot**" in top
    assert "Graded by scripted-model (backend scripted, chat mode, sampled scoring)" in md.split("## Judge scores: story completions")[1], "the grades say which judge and scoring made them"
    section = md.split("## Judge reliability")[1].split("\n## ")[0]
    assert "| grammar | **trusted** | word salad 100%, truncated version 100% | 0.00 | 100% | - |" in section
    assert "| plot | untrusted |" in section and "truncated version in only 0% of 4 pairs (needs 75%)" in section
    assert "at least 75% of at least 4 pairs" in section and "at most 1.00 points" in section, "the thresholds are stated"
    assert "held-out validation stories" in section and "4 stories" in section


def test_a_judge_that_catches_every_damage_is_trusted_on_every_category(tmp_path, monkeypatch):
    from test_judge import reply, verdict

    def careful(request):
        intact, own = verdict(request)
        return reply(9 if intact else 2, 7 if intact else 3, 8 if (intact and own) else 2, plot=8 if intact else 3)

    run = full_run(tmp_path, monkeypatch, judge_fn=careful)
    assert main(["report", "--run-dir", str(run)]) == 0
    md = (run / "report" / "results.md").read_text()
    assert all(h.split(" (")[1].startswith("trusted;") for h in _grades_table_heading(md)), _grades_table_heading(md)
    assert "untrusted" not in md and "WARNING" not in md


def test_missing_optional_inputs_give_sections_not_failures(tmp_path, monkeypatch):
    run = make_eval_run(tmp_path)
    install(monkeypatch, rule_judge)
    assert main(judge_args(run, "--set", "judge.contamination_n=0")) == 0
    # drop the instruct model's records entirely: a base-only run
    scores = json.loads((run / "eval" / "scores.json").read_text())
    del scores["models"]["sft/1M"]
    del scores["word_compliance"]  # as written by a judge stage older than the signal
    (run / "eval" / "scores.json").write_text(json.dumps(scores))
    (run / "data" / "stories.jsonl").unlink()
    assert main(["report", "--run-dir", str(run)]) == 0
    md = (run / "report" / "results.md").read_text()
    assert "No instruct (SFT) model in this run" in md
    assert "No base/instruct pair" in md
    assert "No metrics.jsonl with validation passes" in md
    assert "No data/stats.json" in md
    assert "Not checked (judge.contamination_n is 0)" in md
    assert "Not measured: eval/scores.json has no word_compliance block" in md
    assert not (run / "report" / "val_loss.png").exists()


def test_missing_scores_is_a_one_line_error(tmp_path, capsys):
    assert main(["report", "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert "eval/scores.json" in err and "tinystories judge" in err and "\n" not in err


@pytest.mark.parametrize("value, text", [(None, "n/a"), (3, "3"), (1234567, "1,234,567"), (2.5, "2.50")])
def test_fmt(value, text):
    assert report.fmt(value) == text


def test_complete_judge_report_chain_on_tiny_models(tmp_path, monkeypatch):
    """The three evaluation stages through the CLI, on real (tiny, random) checkpoints."""
    pytest.importorskip("torch")
    from test_complete import complete_args, make_model_dir, write_prompts
    from test_judge import reply

    run = tmp_path / "run"
    make_model_dir(run / "pretrain" / "1M", seed=0)
    make_model_dir(run / "sft" / "1M", seed=1)
    prompts = write_prompts(tmp_path / "prompts.json", n_begin=2, n_instr=1)
    assert main(complete_args(run, prompts)) == 0
    (run / "data").mkdir(exist_ok=True)
    (run / "data" / "stories.jsonl").write_text(json.dumps({"id": 0, "text": "Max the dog ran to the park.", "model": "m", "backend": "scripted"}) + "\n")
    install(monkeypatch, lambda req: reply(6, 5, 4))
    args = ["judge", "--run-dir", str(run), "--set", f"judge.reference={run / 'pretrain' / '1M'}", "--set", "judge.consistency_sample=3", "--set", "judge.discrimination_sample=3"]
    assert main(args) == 0
    assert main(["report", "--run-dir", str(run)]) == 0
    md = (run / "report" / "results.md").read_text()
    scores = json.loads((run / "eval" / "scores.json").read_text())
    assert scores["models"]["pretrain/1M"]["tasks"]["continue"]["n_judged"] == 6
    # the base model completed the instruction too (3 samples), scored for words but not judged
    assert "instruct" not in scores["models"]["pretrain/1M"]["tasks"]
    wc = scores["word_compliance"]["models"]
    assert wc["pretrain/1M"]["n"] == 3 and wc["sft/1M"]["n"] == 3 and wc["pretrain/1M"]["kind"] == "base"
    for name, m in wc.items():
        assert f"| {name} | {m['kind']} | 3 | {report.fmt_proportion(m['all_words'])} | {report.fmt_share_ci(m['words_present'])} |" in md
    assert scores["models"]["sft/1M"]["tasks"]["instruct"]["categories"]["plot"]["mean"] == 5
    assert "**WARNING: the judge is unreliable" in md  # a constant judge
    for name, p in scores["perplexity"]["models"].items():
        assert f"| {name} | {report.fmt(p['ppl'])} |" in md
    assert "| scripted / m | 1 |" in md
    assert "| complete | done |" in md and "| judge | done |" in md


def test_stage_table_shows_per_size_metrics_of_training_stages():
    from tinystories.eval.report import _flat_numbers

    flat = _flat_numbers({"1M": {"val_loss": 5.25, "tokens_per_s": 8610.7, "dtype": "bf16"}, "kept": 24, "skipped": False, "model": "x"})
    assert flat == {"1M val_loss": 5.25, "1M tokens_per_s": 8610.7, "kept": 24}


def test_report_says_when_grades_are_expected_grades(tmp_path, monkeypatch):
    from test_judge import completion_judge_args, forced_judge

    run = make_eval_run(tmp_path)
    install(monkeypatch, forced_judge)
    assert main(completion_judge_args(run)) == 0
    assert main(["report", "--run-dir", str(run)]) == 0
    md = (run / "report" / "results.md").read_text()
    assert "scoring expected" in md and "expected grades (G-Eval)" in md and "less than 50% of the probability" in md
    scores = json.loads((run / "eval" / "scores.json").read_text())
    plot = scores["models"]["pretrain/1M"]["tasks"]["continue"]["categories"]["plot"]
    assert report.fmt_score(plot) in md.split("## Judge scores: story completions")[1].split("\n## ")[0], "plot has a column for story beginnings"
