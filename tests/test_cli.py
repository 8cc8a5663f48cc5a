import types
from dataclasses import dataclass

import pytest
import yaml

from tinystories.pipeline import registry as stages
from tinystories.cli import main
from tinystories.io.rundir import atomic_path


@dataclass
class CountConfig:
    words: int = 3  # how many words to write


def _module(name, inputs, outputs, body):
    return types.SimpleNamespace(
        NAME=name, SECTION=name, USES=(), Config=CountConfig, __doc__=f"The {name} stage.",
        inputs=lambda cfg: inputs, outputs=lambda cfg: outputs, run=body,
    )


@pytest.fixture
def toy_pipeline(monkeypatch):
    calls = []

    def first(cfg, rundir, force=False):
        calls.append("first")
        with atomic_path(rundir.path("data/a.txt")) as tmp:
            tmp.write_text("word " * cfg.first.words)
        return {"words": cfg.first.words}

    def second(cfg, rundir, force=False):
        calls.append("second")
        text = rundir.path("data/a.txt").read_text()
        with atomic_path(rundir.path("data/b.txt")) as tmp:
            tmp.write_text(text.upper())
        return {"chars": len(text)}

    toy = [
        stages.Stage(_module("first", [], ["data/a.txt"], first)),
        stages.Stage(_module("second", ["data/a.txt"], ["data/b.txt"], second)),
    ]
    monkeypatch.setattr(stages, "STAGES", toy)
    return calls


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in ("run", "status", "llm"):
        assert command in out


def test_run_skips_unchanged_and_force_redoes(toy_pipeline, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["run", "--run-dir", str(run_dir), "--set", "first.words=2"]) == 0
    assert toy_pipeline == ["first", "second"]
    assert (run_dir / "data/b.txt").read_text() == "WORD WORD "
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["first"]["words"] == 2 and "llm" in saved
    # the run dir's config.yaml is reused: nothing to do
    assert main(["run", "--run-dir", str(run_dir)]) == 0
    assert toy_pipeline == ["first", "second"]
    out = capsys.readouterr().out
    assert "first: skipped" in out and "second: skipped" in out
    assert main(["run", "--run-dir", str(run_dir), "--force", "second"]) == 0
    assert toy_pipeline == ["first", "second", "second"]
    # a config change reruns the stage and, through its changed output, the next one
    assert main(["run", "--run-dir", str(run_dir), "--set", "first.words=4"]) == 0
    assert toy_pipeline[-2:] == ["first", "second"]
    assert main(["first", "--run-dir", str(run_dir)]) == 0
    assert main(["status", "--run-dir", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "first" in out and "done" in out


def test_run_from_until(toy_pipeline, tmp_path):
    run_dir = tmp_path / "run"
    assert main(["run", "--run-dir", str(run_dir), "--until", "first"]) == 0
    assert toy_pipeline == ["first"]
    assert main(["run", "--run-dir", str(run_dir), "--from", "second"]) == 0
    assert toy_pipeline == ["first", "second"]


def test_user_errors_are_one_line_exit_2(toy_pipeline, tmp_path, capsys):
    run_dir = tmp_path / "run"
    cases = [
        (["second", "--run-dir", str(run_dir)], "missing input"),
        (["first", "--run-dir", str(run_dir), "--config", str(tmp_path / "nope.yaml")], "file not found"),
        (["first", "--run-dir", str(run_dir), "--set", "first.wrds=3"], "first.wrds: unknown option"),
        (["first", "--run-dir", str(run_dir), "--set", "first.words=many"], "first.words: expected an integer"),
        (["first", "--run-dir", str(run_dir), "--set", "llm.backend=gpt"], "unknown backend"),
        (["run", "--run-dir", str(run_dir), "--force", "nosuch"], "--force nosuch: unknown stage"),
        (["status", "--run-dir", str(tmp_path / "absent")], "no such run directory"),
    ]
    for argv, expected in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert expected in err, (argv, err)
        assert err.startswith("error: ") and err.count("\n") == 1, err
    # the failed second stage wrote nothing under its output name
    assert not (run_dir / "data/b.txt").exists()
