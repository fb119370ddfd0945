#!/usr/bin/env bash
# Prepare a GPU machine that has torch, transformers, peft and accelerate but no internet (the
# benchmarks' lent H100/H200): run this HERE, then carry .whl/ and .gpu/ there and run
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
#   PYTHONPATH=/tmp/site:$PWD bash bench/gpu_suite.sh OUT_DIR .gpu/tokenizer
# .whl/: wheels of what that image lacks (trl, datasets and their own needs), for CPython 3.12.
# .gpu/tokenizer/: the default model's tokenizer (and config.json, which load_tokenizer checks).
# Keep both out of git (e.g. `echo /.whl/ >> .git/info/exclude`).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl .gpu/tokenizer
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 pyarrow==26.0.1 fsspec==2026.9.0
model=$(.venv/bin/python -m orpo_lab.model where)
cp "$model"/tokenizer* "$model"/chat_template.jinja "$model"/config.json .gpu/tokenizer/
du -sh .whl .gpu
