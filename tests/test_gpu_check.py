"""The GPU check's scripts (benchmarks/gpu_*.py, gpu_check.sh) run, and fail when they should, on CPU.

The GPU machine runs them once, with no second try and no package registry, so CI proves here
that each script runs to its JSON line: parity and the end-to-end run on tiny sizes, the part
runner's time limit, the summary's targets, and the shell script's orchestration.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
# Packages the project depends on that the GPU machine's image lacks (/work/.library/device/KINDS.md):
# the CUDA path must not import them.
ABSENT_ON_GPU_MACHINE = ("openai", "datasketch", "wordfreq", "lemminflect", "llama_cpp")


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def script_env(tmp_path: Path) -> dict:
    """The test's environment with CUDA hidden and the GPU machine's absent packages made unimportable."""
    stubs = tmp_path / "absent_packages"
    for name in ABSENT_ON_GPU_MACHINE:
        (stubs / name).mkdir(parents=True, exist_ok=True)
        (stubs / name / "__init__.py").write_text(f"raise ImportError('{name} is not on the GPU machine')\n")
    pythonpath = os.pathsep.join([str(stubs), str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])
    return dict(os.environ, PYTHONPATH=pythonpath, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", TINYSTORIES_NO_PROGRESS="1")


def run_json(args: list[str], env: dict, timeout: float = 300) -> tuple[int, dict]:
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no JSON line from {args[0]}: {proc.stdout[-1000:]} {proc.stderr[-2000:]}"
    return proc.returncode, json.loads(lines[-1])


def test_parity_script_passes_on_cpu(tmp_path):
    rc, result = run_json([str(BENCH / "gpu_parity.py"), "--device", "cpu", "--sizes", "tiny", "--context", "40", "--batch", "2"], script_env(tmp_path))
    assert rc == 0, result
    assert result["pass"] is True, result
    assert result["parity_fp32_max_abs_tiny"] < 1e-4, result
    assert 0 < result["parity_bf16_rel_fast_tiny"] < result["bf16_rel_cap"], result
    assert result["parity_bf16_max_abs_fast_vs_hf_tiny"] > 0, "bf16 autocast was not in effect"


def test_parity_check_fails_on_a_wrong_weight():
    """A bias lost on the way to the HF model (an export bug) must fail both checks."""
    import torch

    parity = load_script("gpu_parity")
    original = parity.to_hf_state_dict

    def lose_a_bias(model):
        sd = original(model)
        sd["transformer.h.1.mlp.c_fc.bias"] = torch.zeros_like(sd["transformer.h.1.mlp.c_fc.bias"])
        return sd

    parity.to_hf_state_dict = lose_a_bias
    args = parity.argparse.Namespace(device="cpu", vocab=101, batch=2, context=24)
    result = parity.check_size("tiny", parity.TINY, args)
    assert result["parity_fp32_pass_tiny"] is False, result
    assert result["parity_bf16_pass_tiny"] is False, result


@pytest.mark.slow
def test_end_to_end_script_kills_resumes_and_completes_on_cpu(tmp_path):
    run_dir = tmp_path / "run"
    args = [str(BENCH / "gpu_e2e.py"), "--device", "cpu", "--run-dir", str(run_dir), "--stories", "120", "--max-steps", "20", "--checkpoint-interval", "5", "--sft-steps", "3"]
    rc, result = run_json(args, script_env(tmp_path))
    assert rc == 0, result["failures"]
    assert result["ok"] is True, result["failures"]
    assert result["stages"]["pretrain_killed"]["killed"] is True, result["stages"]
    assert result["stages"]["pretrain_killed"]["rc"] == -9, "the first pretrain was not SIGKILLed"
    assert 0 < result["killed_at_checkpoint_step"] < 20, result
    assert result["resumed_from_step"] >= result["killed_at_checkpoint_step"], "the rerun did not resume from the checkpoint"
    assert result["pretrain_final_step"] == 20, result
    assert result["pretrain_device"] == "cpu", result
    assert result["sft_steps"] == 3, result
    assert result["completion_models"] == ["pretrain/e2e", "sft/e2e"], result
    assert result["completions"] > 0, result
    # The script marks the run dir as its own, so that a rerun may wipe it.
    assert (run_dir / ".gpu_e2e").exists(), "the run dir lacks the script's marker"


def test_end_to_end_script_refuses_a_foreign_run_dir(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    proc = subprocess.run([sys.executable, str(BENCH / "gpu_e2e.py"), "--device", "cpu", "--run-dir", str(foreign)], capture_output=True, text=True, env=script_env(tmp_path), timeout=120)
    assert proc.returncode != 0, "a directory the script did not make must not be wiped"
    assert "not made by this script" in proc.stderr, proc.stderr
    assert (foreign / "precious.txt").read_text() == "keep me", "the foreign file was touched"


def part_record(tmp_path: Path, name: str, cap: float, code: str, deadline: float | None = None) -> tuple[int, dict, str]:
    jsonl, log = tmp_path / "parts.jsonl", tmp_path / "parts.log"
    args = [str(BENCH / "gpu_part.py"), name, str(cap), "--jsonl", str(jsonl), "--log", str(log)]
    if deadline is not None:
        args += ["--deadline", str(deadline)]
    proc = subprocess.run([sys.executable, *args, "--", sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    rec = json.loads(proc.stdout.strip().splitlines()[-1])
    assert json.loads(jsonl.read_text().splitlines()[-1]) == rec, "the record printed is not the one appended to --jsonl"
    return proc.returncode, rec, log.read_text() if log.exists() else ""


def test_part_runner_stops_a_part_at_its_limit_and_keeps_its_partial_result(tmp_path):
    code = "import json, time; print(json.dumps({'partial': True, 'x': 1}), flush=True); time.sleep(60)"
    t0 = time.monotonic()
    rc, rec, log = part_record(tmp_path, "slow", 1.5, code)
    assert time.monotonic() - t0 < 20, "the part was not stopped at its limit"
    assert rc == 1 and rec["ok"] is False, rec
    assert rec["timed_out"] is True, rec
    assert rec["result"] == {"partial": True, "x": 1}, rec
    assert "timed out" in log, log


def test_part_runner_reports_failures_and_skips_past_the_deadline(tmp_path):
    rc, rec, _ = part_record(tmp_path, "broken", 30, "import sys; print('boom: no GPU'); sys.exit(3)")
    assert rc == 1 and rec["ok"] is False and rec["rc"] == 3, rec
    assert rec["result"] is None, rec
    assert any("boom: no GPU" in line for line in rec["error_tail"]), rec
    rc, rec, _ = part_record(tmp_path, "own_verdict", 30, "import json; print(json.dumps({'ok': False}))")
    assert rec["ok"] is False, "a part whose own JSON says ok: false passed"
    rc, rec, _ = part_record(tmp_path, "late", 30, "print('{}')", deadline=time.time() + 2)
    assert rec["ok"] is False and "skipped" in rec, rec
    rc, rec, _ = part_record(tmp_path, "fine", 30, "import json; print('noise'); print(json.dumps({'pass': True, 'v': 2}))")
    assert rc == 0 and rec["ok"] is True and rec["result"] == {"pass": True, "v": 2}, rec


def test_summary_reads_targets_and_failed_parts():
    summary = load_script("gpu_summary")
    records = [
        {"part": "parity", "ok": True, "result": {"check": "parity", "pass": True, "parity_fp32_max_abs_33M": 1e-6}},
        {"part": "train_33M", "ok": True, "result": {"bench": "train", "batch_33M": 128, "train_mfu_published_33M": 0.45, "train_speedup_vs_hf_33M": 2.5, "train_tok_s_hf_33M": 1e5}},
        {"part": "e2e", "ok": False, "timed_out": True, "result": None},
    ]
    out = summary.summarise(records)
    assert out["ok"] is False and out["failed"] == ["e2e"], out
    assert out["targets"]["mfu_published_33M>=0.40"] is True, out["targets"]
    assert out["targets"]["speedup_vs_hf_eager_33M>=3x"] is False, out["targets"]
    assert out["targets"]["parity_within_bf16_tolerance"] is True, out["targets"]
    assert out["figures"]["train_tok_s_hf_33M"] == 1e5, out["figures"]
    assert summary.summarise([])["ok"] is False, "no part run must not read as a pass"


@pytest.mark.slow
def test_gpu_check_script_runs_its_parts_and_writes_the_jsonl(tmp_path):
    """Every part but e2e (tested above) through the script, on CPU at tiny sizes."""
    out = tmp_path / "out"
    out.mkdir()
    env = dict(script_env(tmp_path), OUT=str(out), PYTHON=sys.executable, GPU_CHECK_DEVICE="cpu", GPU_CHECK_PARTS="env,parity,train_33M,sampler")
    proc = subprocess.run(["bash", str(BENCH / "gpu_check.sh")], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    records = [json.loads(line) for line in (out / "gpu_check.jsonl").read_text().splitlines()]
    assert [r.get("part", r.get("check")) for r in records] == ["env", "parity", "train_33M", "sampler", "summary"], records
    assert records[0]["result"]["missing"] == [], "a package the CUDA path needs is missing"
    train = records[2]["result"]
    assert train["bench"] == "train" and train["train_tok_s_fast_bf16_1M"] > 0 and train["train_tok_s_hf_1M"] > 0, train
    assert "partial" not in train, "the part's result is a partial line, not the final one"
    assert records[3]["result"]["sampler_tok_s_1M"] > 0, records[3]
    assert records[-1]["ok"] is True, records[-1]
    assert records[-1]["parts"] == {"env": True, "parity": True, "train_33M": True, "sampler": True}, records[-1]
    assert [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")] == records, "stdout and the jsonl differ"
    assert "===== parity" in (out / "gpu_check.log").read_text(), "the parts' output is not in the log"


def test_gpu_check_script_fails_when_a_part_fails(tmp_path):
    """Without a GPU the CUDA parity part fails fast; the script reports it and exits 1."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the CUDA parity part would pass")
    out = tmp_path / "out"
    out.mkdir()
    env = dict(script_env(tmp_path), OUT=str(out), PYTHON=sys.executable, GPU_CHECK_PARTS="parity")
    proc = subprocess.run(["bash", str(BENCH / "gpu_check.sh")], capture_output=True, text=True, env=env, timeout=180)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["failed"] == ["parity"], summary


def test_bench_train_peaks_batches_and_config_order():
    bench = load_script("bench_train")
    assert bench.published_peak("NVIDIA H200") == 989.0
    assert bench.published_peak("NVIDIA H200 NVL") == 835.5, "the NVL part has a lower peak than the SXM one"
    assert bench.published_peak("Some Other GPU") is None
    assert bench.parse_batch("8M=64", "cuda") == {**bench.DEFAULT_BATCH["cuda"], "8M": 64}
    assert bench.parse_batch("16", "cuda") == {"*": 16}
    args = bench.parse_args(["--device", "cuda", "--sizes", "33M", "--fp32"])
    assert [key for key, _, _ in bench.fast_configs(args)] == ["bf16", "fp32", "bf16_compile"], "compiled runs must come last"
    assert args.batch["33M"] == 128 and args.warmup == 5, args
    assert [key for key, _, _ in bench.fast_configs(bench.parse_args(["--no-compile"]))] == ["bf16"]
