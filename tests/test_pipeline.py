"""The pipeline's guarantees: one writer per run dir, no unfinished inputs, stages that die
are marked failed, path faults are one line, and the package's import structure."""

import ast
import errno
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tinystories.cli import main
from tinystories.io.rundir import RunDir, atomic_path, read_json, write_text
from tinystories.pipeline import registry
from tinystories.pipeline.config import load_config

from test_cli import toy_pipeline  # noqa: F401  (fixture)

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "tinystories"


# --- one writer per run dir ----------------------------------------------------------------

HOLD_LOCK = textwrap.dedent("""
    import sys, time
    from tinystories.io.rundir import RunDir
    with RunDir(sys.argv[1]).writer_lock("tinystories generate"):
        print("locked", flush=True)
        time.sleep(60)
""")


def _hold_lock(run_dir: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked", "the lock-holding helper process did not start"
    return proc


def test_second_writer_is_refused_naming_the_holder(toy_pipeline, tmp_path, capsys):
    run_dir = tmp_path / "run"
    holder = _hold_lock(run_dir)
    try:
        assert main(["first", "--run-dir", str(run_dir)]) == 2
        err = capsys.readouterr().err
        assert f"process {holder.pid}" in err, err
        assert "tinystories generate" in err, err
        assert err.count("\n") == 1, err
        assert toy_pipeline == [], "the refused command ran a stage"
    finally:
        holder.kill()
        holder.wait()
    # A killed holder leaves its lock file behind; the kernel released the lock, so it is taken over.
    assert (run_dir / ".lock").exists()
    assert main(["first", "--run-dir", str(run_dir)]) == 0
    assert toy_pipeline == ["first"]
    assert not (run_dir / ".lock").exists(), "a clean exit left its lock file"


def test_two_concurrent_commands_one_refused(tmp_path):
    """Two real `tinystories` processes on one run dir: exactly one runs, the other exits 2."""
    run_dir = tmp_path / "run"
    env = {**os.environ, "TINYSTORIES_NO_PROGRESS": "1"}
    cmd = [sys.executable, "-m", "tinystories.cli", "vocab", "--run-dir", str(run_dir)]
    holder = _hold_lock(run_dir)  # stands in for the first writer while the second starts
    try:
        second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    finally:
        holder.kill()
        holder.wait()
    assert second.returncode == 2, second.stderr
    assert "in use by process" in second.stderr
    assert not (run_dir / "data" / "vocabulary.json").exists(), "the refused writer wrote its output"
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert first.returncode == 0, first.stderr


# --- a downstream stage refuses an unfinished upstream ---------------------------------------


def test_unfinished_producer_is_refused_unless_allowed(toy_pipeline, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["first", "--run-dir", str(run_dir)]) == 0
    # As a SIGKILL mid-stage leaves it: output present, manifest says running.
    rundir = RunDir(run_dir)
    rec = rundir.stage_record("first")
    rundir.update_stage("first", {**rec, "status": "running"})
    assert main(["second", "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "comes from stage first, which is running" in err, err
    assert f"tinystories first --run-dir {run_dir}" in err, err
    assert toy_pipeline == ["first"], "second ran on an unfinished input"
    assert main(["second", "--run-dir", str(run_dir), "--allow-unfinished"]) == 0
    assert rundir.stage_record("second")["allow_unfinished"] == ["data/a.txt"]


# --- a stage that dies is marked failed ------------------------------------------------------


def _toy_stage(name, body, outputs=("data/x.txt",)):
    import types
    from dataclasses import dataclass

    @dataclass
    class Options:
        n: int = 1  # unused

    return registry.Stage(types.SimpleNamespace(NAME=name, SECTION=name, USES=(), Config=Options, __doc__=f"{name}.",
                                                inputs=lambda cfg: [], outputs=lambda cfg: list(outputs), run=body))


def test_disk_full_is_one_line_and_marked_failed(monkeypatch, tmp_path, capsys):
    def fills_the_disk(cfg, rundir, force=False):
        with atomic_path(rundir.path("data/x.txt")) as tmp:
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp))

    monkeypatch.setattr(registry, "STAGES", [_toy_stage("fill", fills_the_disk)])
    run_dir = tmp_path / "run"
    assert main(["fill", "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "no space left" in err, err
    assert err.count("\n") == 1, err
    rec = RunDir(run_dir).stage_record("fill")
    assert rec["status"] == "failed", rec
    assert not (run_dir / "data/x.txt").exists(), "a half-written output was left under its final name"


def test_read_only_run_dir_is_one_line(monkeypatch, tmp_path, capsys):
    def cannot_write(cfg, rundir, force=False):
        raise PermissionError(errno.EACCES, "Permission denied", str(rundir.path("data/x.txt")))

    monkeypatch.setattr(registry, "STAGES", [_toy_stage("ro", cannot_write)])
    assert main(["ro", "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "cannot write here" in err and "data/x.txt" in err, err
    assert RunDir(tmp_path / "run").stage_record("ro")["status"] == "failed"


def test_stage_that_forgets_an_output_is_failed_not_running(monkeypatch, tmp_path):
    monkeypatch.setattr(registry, "STAGES", [_toy_stage("lazy", lambda cfg, rundir, force=False: {})])
    with pytest.raises(RuntimeError, match="finished without writing data/x.txt"):
        main(["lazy", "--run-dir", str(tmp_path / "run")])
    assert RunDir(tmp_path / "run").stage_record("lazy")["status"] == "failed"


# --- path faults: one line, exit 2 -----------------------------------------------------------


def test_path_faults_are_one_line(toy_pipeline, tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    run_with_dir_config = tmp_path / "run2"
    (run_with_dir_config / "config.yaml").mkdir(parents=True)
    cases = [
        (["first", "--run-dir", str(tmp_path / "run"), "--config", str(tmp_path)], "is a directory"),
        (["first", "--run-dir", str(run_with_dir_config)], "config.yaml: is not a file"),
        (["first", "--run-dir", str(a_file)], "is a file, not a directory"),
        (["run", "--run-dir", str(a_file)], "is a file, not a directory"),
    ]
    for argv, expected in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert expected in err, (argv, err)
        assert err.count("\n") == 1, err
    assert toy_pipeline == []


def test_written_files_get_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        write_text(tmp_path / "a.txt", "x")
        with atomic_path(tmp_path / "b.bin") as tmp:
            tmp.write_bytes(b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.bin").stat().st_mode & 0o777 == 0o644


# --- config: YAML words and blame ------------------------------------------------------------


def test_set_off_means_the_word(tmp_path):
    cfg = registry.load_run_config(None, ["generate.dedup=off"])
    assert cfg.generate.dedup == "off"
    # In a file YAML has already turned the word into false: the error says to quote it.
    path = tmp_path / "c.yaml"
    path.write_text("generate:\n  dedup: off\n")
    from tinystories.errors import UserError

    with pytest.raises(UserError, match="quote the word"):
        registry.load_run_config(path)
    path.write_text("generate:\n  dedup: 'off'\n")
    assert registry.load_run_config(path).generate.dedup == "off"


def test_bad_set_is_blamed_on_the_set_not_the_file(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("seed: 3\n")
    from tinystories.errors import UserError

    with pytest.raises(UserError) as exc:
        registry.load_run_config(path, ["pretrain.sizes=7"], where="run dir config")
    message = str(exc.value)
    assert message.startswith("--set pretrain.sizes=7: "), message
    assert str(path) not in message, message


def test_config_view_refuses_undeclared_sections():
    cfg = registry.load_run_config(None)
    view = cfg.view(["generate", "llm"])
    assert view.generate is cfg.generate
    with pytest.raises(AttributeError, match="not declared by this stage"):
        view.pretrain  # noqa: B018


# --- import structure ------------------------------------------------------------------------


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _parse(path: Path) -> ast.AST:
    # CPython 3.11 can fail an ast.parse that a garbage collection interrupts (a finaliser of an
    # unawaited coroutine from an earlier test): the collector waits for the parse.
    import gc

    gc.disable()
    try:
        return ast.parse(path.read_text(encoding="utf-8"))
    finally:
        gc.enable()


def _runtime_nodes(tree: ast.AST):
    """Every node except those under `if TYPE_CHECKING:` (type-only imports never run)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def _imports(path: Path, known: set[str]) -> set[str]:
    """Every tinystories module `path` imports at run time, at any depth of the file (lazy
    imports inside functions count; imports only for type checkers do not)."""
    tree = _parse(path)
    this = _module_name(path)
    package = this if path.name == "__init__.py" else this.rsplit(".", 1)[0]
    out = set()
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        out.update(n for n in names if n in known and n != this)
    return out


def _graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    known = {_module_name(p) for p in files}
    return {_module_name(p): _imports(p, known) for p in files}


def test_no_import_circle():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_no_stage_imports_another_stage():
    stage_modules = {f"tinystories.{m}" for m in registry.STAGE_MODULES}
    graph = _graph()
    for module in sorted(stage_modules):
        others = graph[module] & stage_modules
        assert not others, f"{module} imports the stage module(s) {sorted(others)}; move what they share into a non-stage module"


def test_config_never_imports_the_stages():
    graph = _graph()
    assert "tinystories.pipeline.registry" not in graph["tinystories.pipeline.config"], "config.py imports the stage registry"


def test_stage_modules_read_only_declared_sections():
    """Static twin of Config.view: every `cfg.SECTION` a stage module names is its own or in USES."""
    sections = set(registry.config_sections())
    for stage in registry.STAGES:
        tree = _parse(Path(stage.module.__file__))
        read = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "cfg" and node.attr in sections:
                read.add(node.attr)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "llm_for":
                read.add("llm")
        undeclared = read - set(stage.sections)
        assert not undeclared, f"stage {stage.name} reads config section(s) {sorted(undeclared)} not in its USES {stage.uses}"


def test_status_marks_stale_and_killed_stages(toy_pipeline, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["run", "--run-dir", str(run_dir)]) == 0
    capsys.readouterr()
    assert main(["first", "--run-dir", str(run_dir), "--set", "first.words=5"]) == 0
    capsys.readouterr()
    assert main(["status", "--run-dir", str(run_dir)]) == 0
    out = capsys.readouterr().out
    second = next(line for line in out.splitlines() if line.startswith("second"))
    assert "stale" in second, out
    assert "first was rerun" in out, out
    first = next(line for line in out.splitlines() if line.startswith("first"))
    assert "done" in first and "words=5" in first, out
    rundir = RunDir(run_dir)
    rundir.update_stage("second", {**rundir.stage_record("second"), "status": "running"})
    assert main(["status", "--run-dir", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "killed" in next(line for line in out.splitlines() if line.startswith("second")), out


def test_two_stages_writing_one_output_are_refused(tmp_path, capsys):
    story = tmp_path / "stories.txt"
    story.write_text("Once upon a time a dog ran.<|endoftext|>")
    argv = ["import", "--run-dir", str(tmp_path / "run"), "--set", f"import_.path={story}"]
    assert main(argv) == 2  # generate.num_stories keeps its default: both would write data/stories.jsonl
    err = capsys.readouterr().err
    assert "stage generate also writes" in err and "data/stories.jsonl" in err, err
    assert err.count("\n") == 1, err


def test_a_flat_training_key_points_to_its_new_home():
    from tinystories.errors import UserError

    with pytest.raises(UserError, match=r"pretrain.lr: unknown option; it lives under pretrain.train.lr now"):
        registry.load_run_config(None, ["pretrain.lr=0.01"])


def test_stage_help_lists_options_with_default_and_description(capsys):
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    out = capsys.readouterr().out
    assert "pretrain.train.lr [0.001]" in out, out
    assert "peak learning rate" in out, out
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    out = capsys.readouterr().out
    assert "generate.num_stories [" in out, out
    for stage in registry.STAGES:
        from tinystories.pipeline.options import option_rows

        undocumented = [key for key, _, doc in option_rows(stage.section, stage.Config) if not doc]
        assert not undocumented, f"stage {stage.name}: options without a one-line comment: {undocumented}"


def test_operational_llm_knobs_do_not_make_stages_stale():
    base = registry.load_run_config(None)
    pushed = registry.load_run_config(None, ["llm.concurrency=64", "llm.max_tokens_total=1000", "llm.timeout_s=5"])
    assert base.hash(["generate", "llm"]) == pushed.hash(["generate", "llm"]), "a concurrency/cap/timeout change reran a stage"
    other_model = registry.load_run_config(None, ["llm.model=smollm2-135m"])
    assert base.hash(["generate", "llm"]) != other_model.hash(["generate", "llm"]), "a model change did not rerun the stage"
