#!/usr/bin/env bash
# P6 on a GPU machine (the workplace `device` tool): install the wheels built by
# ../shared/tools/gpu-wheels (carried as .whl/), then run bench.training on 1 and 2 GPUs.
#   bash bench/gpu.sh [extra bench.training args...]   e.g. --rows 500000 --features 128 --hidden 1024,1024 --batch-size 4096
# Results: $OUT/training-gpu<N>-<shape tag>.json (bench/results/ when OUT is unset).
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD RAY_TRAIN_V2_ENABLED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
gpus=$(nvidia-smi --list-gpus | wc -l)
# one file per shape: training-gpu<N>-<shape tag>.json (bench/training.py shape_tag)
python3 -m bench.training --gpus "$gpus" --out-dir "${OUT:-bench/results}" "$@"
# everything of issue 18 in one run: bash bench/gpu_all.sh
