#!/usr/bin/env bash
# One-shot check of the CUDA path (issue "GPU truth"): parity, training speed and MFU, sampler
# speed, and a tiny pretrain -> kill -> resume -> sft -> complete run, on the GPU machine.
#
# The device tool call to make (from the repository root; nothing needs carrying: every package
# the CUDA path imports is on the H200 image, see /work/.library/device/KINDS.md):
#
#     run(command="bash benchmarks/gpu_check.sh", timeout_s=480)
#
# If a later image lacks one (the env part's "missing" says which), download its wheel into .whl/
# as /work/.library/device/README.md describes and call
#     run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=480)
# The whole check ends within GPU_CHECK_BUDGET_S (default 420 s, under 8 minutes with the
# machine's start left out); timeout_s=480 only guards against a hang of this script itself.
# To rerun some parts in the time left (a session has 15 device-minutes, starts included):
#     run(command="GPU_CHECK_PARTS=parity,e2e GPU_CHECK_BUDGET_S=150 bash benchmarks/gpu_check.sh", timeout_s=200)
#
# Parts, in this order (the most telling first, so a tight budget cuts the least), each with a cap
# in seconds: env 20, parity 60, train_33M 120, e2e 90, sampler 60, train_8M 80, train_28M 80
# (510 together: a part never runs past the budget's deadline, and one that would start with
# under 10 s left is reported as skipped). Expected on an H200: about 4-5 minutes, most of it
# torch.compile (cold cache) in the three train parts. A train part stopped at its cap still
# reports its eager and HF figures (bench_train.py --progress-json).
#   env        gpu_env.py: GPU, driver, torch/transformers versions, missing packages
#   parity     gpu_parity.py: FastGPTNeo vs HF GPTNeoForCausalLM logits, 8M and 33M, fp32 and bf16
#   train_<S>  bench_train.py --device cuda at size S, context 512, bf16, compile off and on, the
#              HF eager reference, MFU against the measured matmul peak and the published
#              989 TFLOP/s (H200 SXM bf16 dense); batch 256 at 8M, 128 at 28M and 33M
#   e2e        gpu_e2e.py --device cuda: tokenizer, prepare, pretrain SIGKILLed after a checkpoint
#              and rerun to the end, sft, complete
#   sampler    bench_sampler.py --device cuda at 8M and 33M
# Every part prints one JSON line (benchmarks/gpu_part.py's record, the part's own JSON in
# "result"); a failed or timed-out part is reported and the next one runs. The last line is
# gpu_summary.py's: parts passed, the issue's targets met or not, the headline figures.
# Output: stdout, and $OUT/gpu_check.jsonl + $OUT/gpu_check.log (every part's full output) when
# $OUT is set (else a temp dir, named on stderr). Exit status: 1 if any part failed.
#
# On a machine without a GPU the CUDA parts fail fast; GPU_CHECK_DEVICE=cpu runs the same parts
# on the CPU at tiny sizes (what tests/test_gpu_check.py does).
set -uo pipefail

cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
DEVICE="${GPU_CHECK_DEVICE:-cuda}"
BUDGET_S="${GPU_CHECK_BUDGET_S:-420}"
PARTS="${GPU_CHECK_PARTS:-env,parity,train_33M,e2e,sampler,train_8M,train_28M}"
DEADLINE=$(( $(date +%s) + BUDGET_S ))

if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || { echo "gpu_check: installing .whl/ failed" >&2; exit 1; }
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
# The package runs from the source tree (no install on that machine); it reaches no network.
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TINYSTORIES_NO_PROGRESS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1

DEST="${OUT:-$(mktemp -d)}"
JSONL="$DEST/gpu_check.jsonl"
LOG="$DEST/gpu_check.log"
: >"$JSONL"
: >"$LOG"
[ -n "${OUT:-}" ] || echo "gpu_check: JSON lines in $JSONL, full log in $LOG" >&2

if [ "$DEVICE" = cuda ]; then
    PARITY_ARGS=(--sizes 8M,33M --context 512 --batch 4)
    TRAIN_ARGS=(--context 512 --warmup 3 --steps 15 --max-seconds 6)
    SAMPLER_ARGS=(--sizes 8M 33M --prompts 64 --new-tokens 128 --reference-prompts 4 --batch-size 64)
    E2E_ARGS=()
else
    PARITY_ARGS=(--sizes tiny --context 40 --batch 2)
    TRAIN_ARGS=(--context 32 --batch-size 2 --warmup 1 --steps 2 --max-seconds 2 --compile off)
    SAMPLER_ARGS=(--sizes 1M --prompts 4 --new-tokens 4 --reference-prompts 1 --batch-size 4)
    E2E_ARGS=(--stories 120 --max-steps 20 --checkpoint-interval 5 --sft-steps 3)
fi

failed=0
part() {  # part NAME CAP_S COMMAND...
    local name=$1 cap=$2
    shift 2
    case ",$PARTS," in *",$name,"*) ;; *) return 0 ;; esac
    "$PY" benchmarks/gpu_part.py "$name" "$cap" --deadline "$DEADLINE" --jsonl "$JSONL" --log "$LOG" -- "$@" || failed=$((failed + 1))
}

train_size() {  # the train_<size> part, on cuda at that size; on cpu at 1M (the smallest preset)
    local size=$1 cap=$2
    part "train_$size" "$cap" "$PY" benchmarks/bench_train.py --device "$DEVICE" --sizes "$([ "$DEVICE" = cuda ] && echo "$size" || echo 1M)" "${TRAIN_ARGS[@]}" --progress-json
}

part env 20 "$PY" benchmarks/gpu_env.py
part parity 60 "$PY" benchmarks/gpu_parity.py --device "$DEVICE" "${PARITY_ARGS[@]}"
train_size 33M 120
part e2e 90 "$PY" benchmarks/gpu_e2e.py --device "$DEVICE" ${E2E_ARGS[@]+"${E2E_ARGS[@]}"}
part sampler 60 "$PY" benchmarks/bench_sampler.py --device "$DEVICE" "${SAMPLER_ARGS[@]}"
train_size 8M 80
train_size 28M 80

"$PY" benchmarks/gpu_summary.py "$JSONL" | tee -a "$JSONL"
[ "${PIPESTATUS[0]}" -eq 0 ] && [ "$failed" -eq 0 ]
