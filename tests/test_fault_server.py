"""The LLM stages against a misbehaving server: nothing lost, nothing answered twice, no error text as data.

generate, instruct-data and judge run through the CLI against tests/stub_openai.py, whose every
new prompt meets the next of all its fault kinds (FAULT_KINDS: 429 with and without Retry-After,
5xx, HTML pages, an error object in a 200, truncated JSON, empty choices, null content, a hang, a
dropped connection, a text/plain echo of the headers, a 400) on its first request. Afterwards:

- every planned item is in the stage's output once, answered, or recorded as a failure;
- the server answered no request twice (a request is its prompt and seed);
- no output file holds a server's error text (an HTML page, a status line, an error message).

A stage may end with exit 2 when requests were lost in transport (the judge does): then it is
rerun, as a user would, until it is done.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
from stub_openai import FAULT_KINDS, Fault, FaultCycle, StubServer, prompt_text
from test_generate import good_story, run_dir  # noqa: F401  (run_dir: the fixture, a run dir with a vocabulary)

from tinystories.cli import main
from tinystories.io.rundir import RunDir, read_jsonl

# What a server's failure looks like when it leaks into data.
ERROR_TEXT = re.compile(r"(?i)error|<html|<!doctype|traceback|bad gateway|service unavailable|too many requests|stub says|"
                        r"authorization|bearer|http/1\.1|garbage|overloaded")  # fmt: skip
# The setup errors (401, 403, 404) stop a job by design (tests/test_llm_openai.py); every other kind is met here.
RECOVERABLE = [Fault("429", retry_after="0"), Fault("429"), Fault("500"), Fault("502"), Fault("503", retry_after="0"), Fault("400"),
               Fault("html"), Fault("html200"), Fault("error200"), Fault("garbage"), Fault("truncated"), Fault("missing"),
               Fault("empty_choices"), Fault("null_content"), Fault("hang"), Fault("drop"), Fault("echo"), Fault("echo", status=502)]  # fmt: skip
MAX_RERUNS = 3


def test_every_fault_kind_but_the_setup_errors_is_exercised():
    assert {f.kind for f in RECOVERABLE} == set(FAULT_KINDS) - {"401", "403", "404"}, "RECOVERABLE names every recoverable kind"
    assert {f.retry_after for f in RECOVERABLE if f.kind == "429"} == {"0", None}, "429 comes with and without Retry-After"


def stage_reply(body: dict) -> str:
    """A well-formed answer for whichever stage asked: a story, a summary or a grading."""
    text = prompt_text(body)
    if "Write a short story" in text:
        return good_story(SimpleNamespace(messages=body["messages"], prompt=None, seed=body.get("seed", 0)))
    if "Reply in exactly this format" in text:
        return "Assessment: The story is clear and kind.\nGrammar: 8/10\nCreativity: 6/10\nConsistency: 7/10\nPlot: 6/10\nAge group: C"
    if "In short:" in text:
        return "A little dog finds a red ball and plays with his friend until night."
    raise AssertionError(f"the stub got a prompt no stage sends: {text[:200]}")


@pytest.fixture
def stub():
    server = StubServer(hang_s=3.0)
    server.reply = stage_reply
    server.faults.append(FaultCycle(RECOVERABLE))
    with server:
        yield server


def llm_sets(stub: StubServer) -> list[str]:
    return ["llm.backend=openai", f"llm.base_urls=[{stub.url}]", "llm.model=stub-model", "llm.api_key_env=TINYSTORIES_FAULT_TEST_KEY",
            "llm.timeout_s=1", "llm.max_retries=3", "llm.backoff_s=0.01", "llm.concurrency=4"]  # fmt: skip


def run_until_done(stage: str, run: Path, sets: list[str]) -> list[int]:
    """Run `stage` (rerunning after exit 2, as its error message says to) until it is done; the exit codes."""
    args = [stage, "--run-dir", str(run)]
    for s in sets:
        args += ["--set", s]
    codes = []
    while len(codes) < MAX_RERUNS:
        codes.append(main(args))
        if codes[-1] != 2:
            break
    assert codes[-1] == 0, f"{stage} never finished: exit codes {codes}"
    assert RunDir(run).stage_record(stage)["status"] == "done", f"{stage} is recorded as done"
    return codes


def answered_once(stub: StubServer) -> Counter:
    """(prompt, seed) -> how many times the server answered it; asserts none was answered twice."""
    answered = Counter((r.text, r.body.get("seed")) for r in stub.completions() if r.outcome == "ok")
    twice = [key for key, n in answered.items() if n > 1]
    assert not twice, f"answered more than once: {twice[:3]}"
    return answered


def assert_no_error_text(path: Path, fields: tuple[str, ...] | None = None) -> list[dict]:
    """No record of `path` carries a server's error text (in `fields` when given, else anywhere)."""
    records = list(read_jsonl(path))
    for rec in records:
        values = [rec.get(f) for f in fields] if fields else [rec]
        found = ERROR_TEXT.search(json.dumps(values))
        assert found is None, f"{path.name}: error text {found.group(0)!r} stored as data in {json.dumps(rec)[:300]}"
    return records


def prompts_given(stub: StubServer, kind: str) -> int:
    """How many prompts met the fault `kind` (the 400s are the failures a stage must record)."""
    [cycle] = stub.faults
    return sum(1 for fault, hits in cycle.assigned.values() if hits and fault.kind == kind)


def assert_every_kind_met(stub: StubServer) -> None:
    [cycle] = stub.faults
    outcomes = {r.outcome for r in stub.completions()}
    for fault in RECOVERABLE:
        assert fault.kind in outcomes, f"the stub never served the fault {fault.kind}"
    assert cycle.kinds_met() == {f.kind for f in RECOVERABLE}, "every kind hit a prompt"


def test_generate_and_instruct_data_survive_every_fault(stub, run_dir):
    n = len(RECOVERABLE) + 2
    run_until_done("generate", run_dir, llm_sets(stub) + [f"generate.num_stories={n}"])
    assert_every_kind_met(stub)
    stories = assert_no_error_text(run_dir / "data" / "stories.jsonl")
    ids = [s["id"] for s in stories]
    assert len(ids) == len(set(ids)), "no story is written twice"
    rejected = list(read_jsonl(run_dir / "data" / "rejected.jsonl")) if (run_dir / "data" / "rejected.jsonl").exists() else []
    assert len(stories) == n, f"every story is answered in the end ({len(rejected)} rejected on the way)"
    assert [r["reason"] for r in rejected] == ["request"] * prompts_given(stub, "400"), "only a 400 is recorded as a failure"
    assert sum(answered_once(stub).values()) == n, "the server answered each kept story once, and nothing else"

    stub.reset()
    stub.faults.append(FaultCycle(RECOVERABLE))
    summary_sets = ["instruct_data.probabilities={words: 0.5, sentence: 0.5, features: 0.5, summary: 1.0}", "instruct_data.sets_per_story=1"]
    run_until_done("instruct-data", run_dir, llm_sets(stub) + summary_sets)
    assert_every_kind_met(stub)
    summaries = answered_once(stub)
    pairs = assert_no_error_text(run_dir / "data" / "instruction_dataset.jsonl")
    failed_path = run_dir / "data" / "instruct_failed.jsonl"
    failed = {r["id"] for r in read_jsonl(failed_path)} if failed_path.exists() else set()
    done = Counter(p["id"] for p in pairs)  # the story's id
    assert not failed & set(done), "a story is either in the dataset or recorded as failed, not both"
    assert set(done) | failed == set(ids), "every story ends in the dataset or recorded as failed"
    assert len(failed) == prompts_given(stub, "400"), "only a story whose summary met the 400 fails"
    assert sum(summaries.values()) == len(done), "each story in the dataset got its summary from one answer"


def make_eval_run(run: Path) -> None:
    """completions.jsonl for two models: enough judge requests that every fault kind is met."""
    (run / "eval").mkdir(parents=True, exist_ok=True)
    recs = []
    for model, kind in (("pretrain/1M", "base"), ("sft/1M", "instruct")):
        for p in range(4):
            for k in range(3):
                recs.append({"model": model, "kind": kind, "task": "continue", "prompt_id": f"b{p}", "sample_id": k,
                             "prompt": f"Prompt number {p}: once upon a time there was a", "prompt_tokens": 9, "completion_tokens": 30, "seed": 1,
                             "text": f" little dog number {k} who liked tale {p}. He ran and played. That was tale {p}. Then he slept well."})  # fmt: skip
    (run / "eval" / "completions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    # the stories the judge's discrimination originals are cut from (judge.originals: auto samples them)
    stories = [f"Tom had ball number {i}. He threw it up high. Sue caught the ball and laughed. They played with it until dark." for i in range(4)]
    (run / "data").mkdir(parents=True, exist_ok=True)
    (run / "data" / "stories.jsonl").write_text("".join(json.dumps({"id": f"s{i}", "story": t}) + "\n" for i, t in enumerate(stories)))


def test_judge_survives_every_fault(stub, run_dir):
    make_eval_run(run_dir)
    sets = llm_sets(stub) + ["judge.reference=none", "judge.consistency_sample=4", "judge.discrimination_sample=4", "judge.contamination_n=0"]
    run_until_done("judge", run_dir, sets)
    assert_every_kind_met(stub)
    judgments = list(read_jsonl(run_dir / "eval" / "judgments.jsonl"))
    keys = Counter(j["key"] for j in judgments)
    assert all(n == 1 for n in keys.values()), f"a judgment recorded twice: {[k for k, n in keys.items() if n > 1][:3]}"
    main_ones = {(j["model"], j["prompt_id"], j["sample_id"]) for j in judgments if j["role"] == "main"}
    completions = {(c["model"], c["prompt_id"], c["sample_id"]) for c in read_jsonl(run_dir / "eval" / "completions.jsonl")}
    assert main_ones == completions, "every completion has its judgment (graded or failed): none lost"
    graded = [j for j in judgments if j["ok"]]
    failed = [j for j in judgments if not j["ok"]]
    assert sum(answered_once(stub).values()) == len(graded), "each verdict is one answer of the server, and no answer went unrecorded"
    assert len(failed) == prompts_given(stub, "400"), f"only a 400 ends as a failure: {[j.get('error') for j in failed]}"
    assert all(j.get("grades") in (None, {}) for j in failed), "a failure is never stored as a grade"
    grade_fields = ("grades", "age_group", "assessment", "raw", "reply")
    assert_no_error_text(run_dir / "eval" / "judgments.jsonl", grade_fields)
    assert all(j["grades"]["grammar"] == 8 for j in graded), "every verdict is the server's answer"
