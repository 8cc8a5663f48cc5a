from dataclasses import dataclass, field

import pytest

from tinystories.pipeline.config import Config, build
from tinystories.pipeline.ids import derive_seed
from tinystories.pipeline.registry import load_run_config as load_config
from tinystories.errors import UserError
from tinystories.llm.config import LLMConfig


@dataclass
class Inner:
    a: int = 1  # an int


@dataclass
class Section:
    steps: int = 10  # steps
    lr: float = 1e-3  # learning rate
    name: str = "x"  # a name
    sizes: list[str] = field(default_factory=lambda: ["1M"])  # sizes
    flag: bool = False  # a flag
    inner: Inner = field(default_factory=Inner)  # nested

    def check(self):
        return ["steps: must be positive"] if self.steps <= 0 else []


def test_build_collects_every_problem_at_once():
    problems = []
    build(Section, {"steps": "ten", "lr": "fast", "bogus": 1, "flag": "yes", "inner": {"a": 2.5}}, "sec", problems)
    joined = "\n".join(problems)
    assert "sec.steps: expected an integer" in joined
    assert "sec.lr: expected a number" in joined
    assert "sec.bogus: unknown option" in joined
    assert "sec.flag: expected true or false" in joined
    assert "sec.inner.a: expected an integer" in joined
    assert len(problems) == 5


def test_build_converts_and_runs_cross_field_check():
    problems = []
    obj = build(Section, {"lr": 1, "sizes": ["1M", 8], "steps": 0}, "sec", problems)
    assert obj.lr == 1.0 and isinstance(obj.lr, float)
    assert obj.sizes == ["1M", "8"]
    assert problems == ["sec.steps: must be positive"]


def test_load_config_file_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 7\nllm:\n  backend: openai\n  base_urls: [http://127.0.0.1:1/v1]\n")
    cfg = load_config(path, ["llm.concurrency=3", "llm.model=foo"])
    assert cfg.seed == 7
    assert cfg.llm.backend == "openai" and cfg.llm.concurrency == 3 and cfg.llm.model == "foo"


def test_load_config_errors_are_one_line_and_complete(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("llm:\n  backend: nope\n  concurrency: many\nnosuch: {}\n")
    with pytest.raises(UserError) as err:
        load_config(path)
    msg = str(err.value)
    assert "\n" not in msg
    assert "llm.concurrency: expected an integer" in msg and "nosuch: unknown section" in msg
    # the cross-field check runs only once the types are right
    with pytest.raises(UserError, match="llm.backend: unknown backend 'nope'"):
        load_config(None, ["llm.backend=nope"])


def test_missing_and_malformed_config_file(tmp_path):
    with pytest.raises(UserError, match="file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("llm: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(UserError, match="expected section.key=value"):
        load_config(None, ["llm.model"])
    with pytest.raises(UserError, match="unknown option"):
        load_config(None, ["llm.modle=x"])


def test_hash_changes_only_with_named_sections():
    cfg_a = Config(1, {"llm": LLMConfig(), "sec": Section()})
    cfg_b = Config(1, {"llm": LLMConfig(model="other"), "sec": Section()})
    assert cfg_a.hash(["sec"]) == cfg_b.hash(["sec"])
    assert cfg_a.hash(["sec", "llm"]) != cfg_b.hash(["sec", "llm"])
    assert Config(2, {"sec": Section()}).hash(["sec"]) != Config(1, {"sec": Section()}).hash(["sec"])


def test_llm_for_merges_stage_overrides():
    @dataclass
    class JudgeLike:
        llm: dict = field(default_factory=dict)  # overrides

    cfg = Config(1, {"llm": LLMConfig(), "judge": JudgeLike(llm={"model": "smollm2-135m", "concurrency": 2})})
    merged = cfg.llm_for("judge")
    assert merged.model == "smollm2-135m" and merged.concurrency == 2 and merged.backend == "embedded"
    bad = Config(1, {"llm": LLMConfig(), "judge": JudgeLike(llm={"modle": "x"})})
    with pytest.raises(UserError, match="judge.llm.modle: unknown option"):
        bad.llm_for("judge")


def test_derive_seed_is_stable_and_distinct():
    assert derive_seed(1, "generate") == derive_seed(1, "generate")
    assert derive_seed(1, "generate") != derive_seed(1, "pretrain")
    assert derive_seed(1, "generate") != derive_seed(2, "generate")


@pytest.mark.parametrize("name", ["quickstart.yaml", "paper.yaml"])
def test_shipped_configs_load(name):
    from pathlib import Path

    cfg = load_config(Path(__file__).parent.parent / "configs" / name)
    assert cfg.pretrain.sizes and cfg.seed == 1337
