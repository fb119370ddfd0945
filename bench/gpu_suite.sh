#!/usr/bin/env bash
# Every GPU number of BENCHMARKS.md in one go (about 8 minutes on one H100/H200).
#   bench/gpu_suite.sh [OUT_DIR] [TOKENIZER]
# TOKENIZER: 'default' (needs the prepared default model) or a directory holding its tokenizer files.
# With PACK=file.tar.gz set, OUT_DIR is packed into that file after every step; STEPS="a b" runs only
# the steps named (trl-1.5b-2048 loss trl-0.5b-2048 trl-0.5b-1024 trl-1.5b-1024 qlora; qlora needs
# bitsandbytes and pytest: see bench/gpu_prepare.sh).
# Each step has its own time limit and log; a failed step does not stop the others.
set -u
out=${1:-bench/results/gpu}
tok=${2:-default}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
py=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$out/gpu.txt" 2>&1
$py -c "import torch, transformers, peft, trl, accelerate; print(torch.__version__, transformers.__version__, peft.__version__, trl.__version__, accelerate.__version__)" >>"$out/gpu.txt" 2>&1
cat "$out/gpu.txt"

step() {  # step NAME SECONDS command...
  local name=$1 limit=$2
  shift 2
  if [ -n "${STEPS:-}" ] && [[ " $STEPS " != *" $name "* ]]; then return; fi
  local began=$SECONDS
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  echo "== $name: exit $? after $((SECONDS - began)) s"
  tail -n 30 "$out/$name.log"
  if [ -n "${PACK:-}" ]; then tar czf "$PACK" -C "$(dirname "$out")" "$(basename "$out")"; fi
}

trl=($py bench/bench_trl.py --device cuda --tokenizer "$tok")  # an array: `timeout` runs no functions
# The issue's target shape first: 1.5B class, vocabulary 151936, max_length 2048.
step trl-1.5b-2048 230 "${trl[@]}" --gpu-model 1.5b --max-length 2048 --reps 2 --steps 6 --warmup 2 \
  --ablation-rounds 1 --ablation-steps 3 --out "$out/trl-1.5b-2048"
step loss 110 $py bench/bench_loss.py --device cuda --pairs 8 --reps 2
step trl-0.5b-2048 65 "${trl[@]}" --gpu-model 0.5b --max-length 2048 --reps 1 --steps 6 --warmup 2 \
  --skip check ablation profile --out "$out/trl-0.5b-2048"
step trl-0.5b-1024 65 "${trl[@]}" --gpu-model 0.5b --max-length 1024 --reps 1 --steps 6 --warmup 2 \
  --skip check ablation profile --out "$out/trl-0.5b-1024"
step trl-1.5b-1024 65 "${trl[@]}" --gpu-model 1.5b --max-length 1024 --reps 1 --steps 6 --warmup 2 \
  --skip check ablation profile --out "$out/trl-1.5b-1024"
# QLoRA on CUDA: the CPU-backend tests of tests/test_train.py, run on the GPU.
step qlora 150 env ORPO_LAB_TEST_DEVICE=cuda ORPO_LAB_TEST_TOKENIZER="$tok" \
  $py -m pytest -q -p no:cacheprovider tests/test_train.py -k qlora
