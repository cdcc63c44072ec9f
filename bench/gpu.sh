#!/usr/bin/env bash
# P6 on a GPU machine (the workplace `device` tool): install the wheels built by
# ../shared/tools/gpu-wheels (carried as .whl/), then run bench.training on 1 and 2 GPUs.
#   bash bench/gpu.sh [extra bench.training args...]   e.g. --rows 500000 --features 128 --hidden 1024,1024 --batch-size 4096
# Results: bench/results/training-gpu<N>.json (and $OUT/ when set).
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD RAY_TRAIN_V2_ENABLED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
gpus=$(nvidia-smi --list-gpus | wc -l)
python3 -m bench.training --gpus "$gpus" "$@"
if [ -n "${OUT:-}" ]; then cp bench/results/training-gpu"$gpus".json "$OUT/training-gpu$gpus-$(date +%s).json"; fi
