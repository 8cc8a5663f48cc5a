"""The bad-input corpus (tests/bad_inputs/cases.yaml) driven through the CLI.

Each case must end with exit 2 and one stderr line naming the problem, and leave the run
directory as it was, except the stage's log and the manifest's failed mark.
"""

from pathlib import Path

import pytest
import yaml

from tinystories.cli import main

CORPUS = Path(__file__).parent / "bad_inputs"
CASES = yaml.safe_load((CORPUS / "cases.yaml").read_text(encoding="utf-8"))


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def prepared_run(tmp_path_factory) -> Path:
    """A run dir after one good `vocab`: what a user's bad command meets."""
    run = tmp_path_factory.mktemp("bad") / "run"
    assert main(["vocab", "--run-dir", str(run)]) == 0
    return run


@pytest.mark.parametrize("case", CASES, ids=[f"{c['command']}-{c['file']}-{c['via']}" for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(case, prepared_run, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    for rel, data in _snapshot(prepared_run).items():
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / rel).write_bytes(data)
    before = _snapshot(run)
    bad = (CORPUS / case["file"]).resolve()
    argv = [case["command"], "--run-dir", str(run)]
    argv += ["--config", str(bad)] if case["via"] == "--config" else ["--set", f"{case['via'].split()[1]}={bad}"]
    for option in case.get("also", []):
        argv += ["--set", option]
    capsys.readouterr()

    assert main(argv) == 2, argv
    err = capsys.readouterr().err
    assert err.count("\n") == 1, f"expected one stderr line, got: {err!r}"
    assert err.startswith("error: "), err
    assert case["expect"] in err, (case, err)

    after = _snapshot(run)
    allowed = {f"logs/{case['command']}.log", "manifest.json"}
    changed = {rel for rel in set(before) | set(after) if before.get(rel) != after.get(rel)} - allowed
    assert not changed, f"the failed command changed {sorted(changed)}"
    if after.get("manifest.json") != before.get("manifest.json"):
        old = yaml.safe_load(before["manifest.json"])["stages"]
        new = yaml.safe_load(after["manifest.json"])["stages"]
        assert {k: v for k, v in new.items() if k != case["command"]} == {k: v for k, v in old.items() if k != case["command"]}, "another stage's record changed"
        assert new[case["command"]]["status"] == "failed", new[case["command"]]
