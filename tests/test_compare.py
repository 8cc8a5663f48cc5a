"""`tinystories compare`: one row per run and model with its real numbers, and the charts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from test_charts import hand_made_scores
from tinystories.cli import main
from tinystories.eval import compare

pytest.importorskip("matplotlib")


def write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def write_metrics(model_dir: Path, tokens: list[int], val_bpb: float) -> None:
    rows = [{"step": i + 1, "train_loss": 3.0, "tokens": t, "val_loss": None, "val_bpb": None} for i, t in enumerate(tokens)]
    rows[-2]["val_bpb"] = val_bpb + 0.5  # an earlier validation pass: not the one reported
    rows[-1]["val_bpb"] = val_bpb
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def graded_run(root: Path) -> Path:
    """pretrain/1M, pretrain/8M and sft/1M trained and judged (scores of test_charts: sft/1M has no grades)."""
    write_metrics(root / "pretrain" / "1M", [1000, 2000, 3000], 1.25)
    write_metrics(root / "pretrain" / "8M", [4000, 8000], 1.05)
    write_metrics(root / "sft" / "1M", [100, 200], 0.9)
    write(root / "sft" / "1M" / "tinystories.json", {"stage": "sft", "base": "pretrain/1M"})
    scores = hand_made_scores()
    del scores["models"]["baseline/ref"]
    write(root / "eval" / "scores.json", {**scores, "judge": {"judge": {"backend": "embedded", "model": "qwen"}, "scoring": "expected", "template_version": "v1"}})
    counted = {"pretrain/1M": 1_234_567, "pretrain/8M": 8_765_432, "sft/1M": 1_234_567}
    write(root / "eval" / "models.json", {"models": {name: {"kind": "instruct" if name.startswith("sft") else "base", "params": n} for name, n in counted.items()}})
    write(root / "manifest.json", {"stages": {"pretrain": {"metrics": {"1M": {"params": 1_000_000, "tokens_seen": 3000}, "8M": {"params": 8_000_000, "tokens_seen": 8000}}}}})
    return root


def trained_only_run(root: Path) -> Path:
    """One pretrained size, never completed or judged: numbers from the manifest, grades n=0."""
    (root / "pretrain" / "2M").mkdir(parents=True)
    write(root / "pretrain" / "2M" / "tinystories.json", {"stage": "pretrain", "size": "2M"})
    write(root / "manifest.json", {"stages": {"pretrain": {"metrics": {"2M": {"params": 2_000_000, "tokens_seen": 50_000, "val_bpb": 1.5}}}}})
    return root


def rows_by_model(md: str) -> dict[tuple[str, str], list[str]]:
    section = md.split("## Models")[1].split("\n## ")[0]
    out = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and cells[0] in ("a", "b"):
            out[(cells[0], cells[1])] = cells
    return out


@pytest.fixture
def compared(tmp_path):
    a, b = graded_run(tmp_path / "a"), trained_only_run(tmp_path / "b")
    out = tmp_path / "cmp"
    assert main(["compare", str(a), str(b), "--out", str(out)]) == 0
    return out, (out / "compare.md").read_text()


def test_one_row_per_run_and_model_with_its_numbers(compared):
    _, md = compared
    rows = rows_by_model(md)
    assert set(rows) == {("a", "pretrain/1M"), ("a", "pretrain/8M"), ("a", "sft/1M"), ("b", "pretrain/2M")}, rows
    header = ["run", "model", "kind", "params", "pretrain tokens", "SFT tokens", "val bits/byte", "grammar", "creativity", "consistency", "plot"]
    assert "| " + " | ".join(header) + " |" in md
    assert rows[("a", "pretrain/1M")][2:7] == ["base", "1,234,567", "3,000", "n/a", "1.2500"], "params counted from the weights, last bpb"
    assert rows[("a", "pretrain/1M")][7:] == ["9.00 ± 3.50 (n=2)", "1.50 ± 2.00 (n=2) †", "5.00 ± 1.00 (n=2)", "4.00 (n=1)"], "grades ± CI (n), † where untrusted"
    assert rows[("a", "sft/1M")][2:7] == ["instruct", "1,234,567", "3,000", "200", "0.9000"], "an instruct model counts its base's pretraining tokens"
    assert rows[("a", "sft/1M")][7] == "n/a (n=0)", "a judged run's ungraded model is n=0"
    assert rows[("b", "pretrain/2M")][2:7] == ["base", "2,000,000", "50,000", "n/a", "1.5000"], "the manifest's numbers when there is no metrics.jsonl"
    assert rows[("b", "pretrain/2M")][7:] == ["n/a (n=0)"] * 4, "a run without scores.json has n=0 grades"


def test_runs_table_names_the_judge_and_trust(compared):
    _, md = compared
    head = md.split("## Models")[0]
    assert "| a |" in head and "embedded / qwen, scoring expected" in head
    assert "no eval/scores.json (run `tinystories judge`)" in head
    row_a = next(line for line in head.splitlines() if line.startswith("| a |"))
    assert row_a.endswith("| trusted | not trusted | not measured | not measured |"), row_a


def test_charts_exist_and_plot_every_run(compared):
    out, md = compared
    for name in ("compare_vs_params.png", "compare_vs_tokens.png", "compare_scores.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG", name
        assert f"({name})" in md, f"compare.md shows {name}"


def test_grid_series_put_runs_and_kinds_on_their_own_lines(tmp_path):
    runs = [compare.read_run(graded_run(tmp_path / "a"), "a"), compare.read_run(trained_only_run(tmp_path / "b"), "b")]
    chart = compare.draw_compare_charts(runs, tmp_path, 60)["compare_vs_tokens.png"]
    assert {m.series for m in chart.marks} == {"a base", "a instruct", "b base"}
    bpb = {(m.series, m.x): m.mean for m in chart.marks if m.category == "val_bpb"}
    assert bpb == {("a base", 3000): 1.25, ("a base", 8000): 1.05, ("a instruct", 3200): 0.9, ("b base", 50_000): 1.5}, "x is pretraining + SFT tokens"
    assert all(m.n is None for m in chart.marks if m.category == "val_bpb"), "bits per byte carry no n"
    assert "b: not measured" in chart.subtitle and "a: trusted" in chart.subtitle, "runs that disagree on trust are named"


def test_a_directory_that_is_no_run_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["compare", str(tmp_path / "empty"), "--out", str(tmp_path / "cmp")]) == 2
    err = capsys.readouterr().err.strip()
    assert "empty" in err and "run directory" in err and "\n" not in err
    assert main(["compare", str(tmp_path / "missing"), "--out", str(tmp_path / "cmp")]) == 2
