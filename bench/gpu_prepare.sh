#!/usr/bin/env bash
# Prepare a GPU machine that has torch, transformers, peft and accelerate but no internet (the
# project's lent H100/H200). Run this HERE; it writes three git-ignored folders:
#   .whl/          wheels of what that image lacks for the benchmarks (trl, datasets and their needs)
#   .whl-checks/   bitsandbytes and pytest, for the QLoRA tests on CUDA
#   .gpu/tokenizer the default model's tokenizer (and config.json, which load_tokenizer checks)
# A carry holds at most 64 MiB, so two calls to one warm machine, the second within its idle window:
#   1. carry .whl .gpu:   python3 -m pip install -q --no-index --no-deps --target .site .whl/*.whl &&
#                         PYTHONPATH=$PWD/.site:$PWD bash bench/gpu_suite.sh OUT .gpu/tokenizer
#   2. carry .whl-checks .gpu (.site stays: ignored paths not named in a carry are kept):
#                         python3 -m pip install -q --no-index --no-deps --target .site .whl-checks/*.whl &&
#                         PYTHONPATH=$PWD/.site:$PWD STEPS=qlora bash bench/gpu_suite.sh OUT .gpu/tokenizer
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl .whl-checks .gpu/tokenizer
get() {  # get FOLDER requirement...
  local dir=$1
  shift
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_24_x86_64 -d "$dir" "$@"
}
get .whl trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 pyarrow==26.0.1 fsspec==2026.9.0
get .whl-checks bitsandbytes==0.50.2 pytest pluggy iniconfig pygments
model=$(.venv/bin/python -m orpo_lab.model where)
cp "$model"/tokenizer* "$model"/chat_template.jinja "$model"/config.json .gpu/tokenizer/
du -sh .whl .whl-checks .gpu
