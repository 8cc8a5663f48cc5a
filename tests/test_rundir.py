import json
import types
from dataclasses import dataclass

import pytest

from tinystories.pipeline.config import Config
from tinystories.errors import UserError
from tinystories.llm.config import LLMConfig
from tinystories.io.rundir import JsonlWriter, RunDir, atomic_path, read_jsonl, sha256_path, write_json
from tinystories.pipeline.executor import execute
from tinystories.pipeline.registry import Stage


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []
    write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}


def test_jsonl_writer_repairs_torn_tail(tmp_path):
    path = tmp_path / "x.jsonl"
    with JsonlWriter(path) as w:
        w.write({"id": 1})
        w.write({"id": 2})
    with open(path, "a") as fh:
        fh.write('{"id": 3, "tex')  # a kill in the middle of a write
    assert [r["id"] for r in read_jsonl(path)] == [1, 2]
    with JsonlWriter(path) as w:
        w.write({"id": 3})
    assert [r["id"] for r in read_jsonl(path)] == [1, 2, 3]
    assert path.read_text().count("\n") == 3


def test_sha256_path_of_directory_tracks_content(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "a").write_text("1")
    h1 = sha256_path(d)
    (d / "a").write_text("2")
    assert sha256_path(d) != h1


@dataclass
class ToyConfig:
    factor: int = 2  # multiply by this


def _toy_stage(calls):
    def run(cfg, rundir, force=False):
        calls.append(1)
        text = rundir.path("data/in.txt").read_text()
        with atomic_path(rundir.path("data/out.txt")) as tmp:
            tmp.write_text(text * cfg.toy.factor)
        return {"chars": len(text) * cfg.toy.factor}

    module = types.SimpleNamespace(
        NAME="toy", SECTION="toy", USES=(), Config=ToyConfig, __doc__="A toy stage.",
        inputs=lambda cfg: ["data/in.txt"], outputs=lambda cfg: ["data/out.txt"], run=run,
    )
    return Stage(module)


def test_execute_skips_when_unchanged_and_reruns_on_change(tmp_path):
    calls = []
    stage = _toy_stage(calls)
    rundir = RunDir(tmp_path / "run")
    with pytest.raises(UserError, match="missing input"):
        execute(stage, Config(1, {"llm": LLMConfig(), "toy": ToyConfig()}), rundir)
    rundir.path("data").mkdir(parents=True, exist_ok=True)
    rundir.path("data/in.txt").write_text("ab")
    cfg = Config(1, {"llm": LLMConfig(), "toy": ToyConfig()})
    assert execute(stage, cfg, rundir)["status"] == "done"
    assert execute(stage, cfg, rundir)["status"] == "skipped"
    assert len(calls) == 1
    rec = rundir.stage_record("toy")
    assert rec["status"] == "done" and rec["metrics"] == {"chars": 4}
    assert rec["inputs"]["data/in.txt"] == sha256_path(rundir.path("data/in.txt"))
    assert rec["outputs"]["data/out.txt"] == sha256_path(rundir.path("data/out.txt"))
    assert "torch" in rec["versions"] and rec["wall_s"] >= 0 and rec["seed"] > 0
    # config change -> rerun
    cfg3 = Config(1, {"llm": LLMConfig(), "toy": ToyConfig(factor=3)})
    assert execute(stage, cfg3, rundir)["status"] == "done"
    assert rundir.path("data/out.txt").read_text() == "ababab"
    # input change -> rerun
    rundir.path("data/in.txt").write_text("xy")
    assert execute(stage, cfg3, rundir)["status"] == "done"
    # a deleted output -> rerun; force -> rerun
    rundir.path("data/out.txt").unlink()
    assert execute(stage, cfg3, rundir)["status"] == "done"
    assert execute(stage, cfg3, rundir, force=True)["status"] == "done"
    assert len(calls) == 5
    assert (rundir.path("logs/toy.log")).read_text().count("stage toy started") == 5


def test_failed_stage_is_recorded_and_not_marked_done(tmp_path):
    def run(cfg, rundir, force=False):
        raise RuntimeError("boom")

    module = types.SimpleNamespace(NAME="bad", SECTION="toy", USES=(), Config=ToyConfig, inputs=lambda c: [], outputs=lambda c: ["x"], run=run)
    rundir = RunDir(tmp_path / "run")
    with pytest.raises(RuntimeError):
        execute(Stage(module), Config(1, {"toy": ToyConfig()}), rundir)
    rec = rundir.stage_record("bad")
    assert rec["status"] == "failed" and rec["error"] == "boom"
    assert "Traceback" in rundir.path("logs/bad.log").read_text()
