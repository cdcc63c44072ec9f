#!/usr/bin/env bash
# Every GPU benchmark of issue 18 in one run on the device machine (2x H200 host), <= 9 minutes:
#   1. P6 at batch 1,024 (100k x 32, MLP 256-256) on 1 and 2 GPUs vs a bare loop with its data on
#      the GPU, with a torch.profiler trace of the 2-GPU fit's rank 0 (40 steps, untimed epoch);
#   2. GPU batch inference on 10M rows: bare cuda loop vs mlplat GPU (services) vs mlplat CPU;
#   3. GPU serving: a ~100M-parameter MLP in a dedicated deployment on cuda vs on CPU replicas;
#   4. P6 at batch 4,096 on 1 and 2 GPUs;
#   5. (if time is left) P6 at batch 1,024 with eager steps (performance.cuda_graphs: false) too.
# mlplat's fits run with default settings (on a GPU: cuda_graphs auto); each P6 round also runs
# the bare loop eager and with its step as a CUDA graph.
# GPU_STEPS picks steps by name (also: weights, pcie).
# Each step has its own timeout (and all share one deadline), so one failure loses only itself.
# Every result JSON (and the profile) lands in $OUT; a short table is printed last.
#   bash bench/gpu_all.sh            # on the GPU machine, .whl/ carried (../shared/tools/gpu-wheels --serve)
#   bash bench/gpu_all.sh --smoke    # here, on CPU, tiny sizes: checks every step end to end
set -uo pipefail
SMOKE=0; [ "${1:-}" = "--smoke" ] && SMOKE=1
START=$(date +%s)
TOTAL_S=${GPU_ALL_TOTAL_S:-530}
if [ "$SMOKE" = 1 ]; then
  PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
  OUT=${OUT:-$(mktemp -d /tmp/gpu-all-smoke-XXXX)}
  TOTAL_S=${GPU_ALL_TOTAL_S:-900}
else
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
  PY=python3
  OUT=${OUT:-$PWD/bench/results}
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
fi
export RAY_TRAIN_V2_ENABLED=1 OUT
mkdir -p "$OUT/logs"
echo "out: $OUT"
STATUS=()

# step NAME MAX_S CMD... : run with min(MAX_S, time left) as its timeout; log to $OUT/logs/NAME.log
step() {
  local name=$1 max=$2; shift 2
  local left=$(( TOTAL_S - ($(date +%s) - START) - 5 ))
  local limit=$(( max < left ? max : left ))
  if [ "$limit" -lt 30 ]; then STATUS+=("$name: skipped (no time left)"); echo "== $name: skipped"; return; fi
  echo "== $name (timeout ${limit}s): $*"
  local t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" > "$OUT/logs/$name.log" 2>&1
  local rc=$?
  STATUS+=("$name: rc=$rc in $(( $(date +%s) - t0 ))s")
  echo "   rc=$rc in $(( $(date +%s) - t0 ))s"; tail -n 4 "$OUT/logs/$name.log" | cut -c1-300
  # Ray started by a killed step would hold the GPUs and ports for the next one
  [ "$rc" -ne 0 ] && { $PY -c "import ray; ray.shutdown()" >/dev/null 2>&1; ray stop --force >/dev/null 2>&1 || true; }
}

if [ "$SMOKE" = 1 ]; then
  step p6-smoke 400 $PY -m bench.training --rows 4000 --features 8 --hidden 16 --batch-size 256 --epochs 3 --repeats 1 \
    --profile --eager --out-dir "$OUT"
  step validation-smoke 200 $PY -m bench.gpu_validation --smoke --repeats 1 --out-dir "$OUT"
  step serving-smoke 200 $PY -m bench.gpu_serving --smoke --out-dir "$OUT"
else
  GPUS=$(nvidia-smi --list-gpus | wc -l)
  # GPU_STEPS: the steps to run (default all, in this order)
  STEPS=" ${GPU_STEPS:-p6-b1024 validation-10m serving p6-b4096 p6-b1024-eager} "
  want() { [[ "$STEPS" == *" $1 "* ]]; }
  want p6-b1024 && step p6-b1024 170 $PY -m bench.training --gpus "$GPUS" --batch-size 1024 --epochs 8 --repeats 1 --profile --out-dir "$OUT"
  want validation-10m && step validation-10m 240 $PY -m bench.gpu_validation --rows 10000000 --repeats 1 --out-dir "$OUT"
  want serving && step serving 140 $PY -m bench.gpu_serving --seconds 12 --concurrency 64 --out-dir "$OUT"
  want p6-b4096 && step p6-b4096 150 $PY -m bench.training --gpus "$GPUS" --batch-size 4096 --epochs 8 --repeats 1 --out-dir "$OUT"
  want weights && step weights 150 $PY -m bench.weights --members 200 --size-mb 1000 --shard-mb 256 --device cuda \
    --repeats 2 --small-repeats 5 --no-s3 --out "$OUT/weights-gpu.json"
  want pcie && step pcie 40 $PY -c "
import json, os, time, torch
x = torch.empty(1 << 30, dtype=torch.uint8).pin_memory(); y = torch.empty_like(x, device='cuda')
rates = []
for _ in range(5):
    torch.cuda.synchronize(); t = time.perf_counter(); y.copy_(x, non_blocking=True); torch.cuda.synchronize()
    rates.append(x.numel() / (time.perf_counter() - t) / 1e6)
rates.sort(); print(rates[2])
from bench.common import row, stamp
r = row('pcie', 'pinned host-to-device copy, 1 GiB, median of 5 (the PCIe limit for streaming weights)', rates[2], 'MB/s', target='informational', card=torch.cuda.get_device_name(0))
open(os.path.join(os.environ['OUT'], 'pcie-gpu.json'), 'w').write(json.dumps(stamp([r]), indent=2))"
  # p6-b1024-eager: the default fits plus 1- and 2-GPU fits with eager steps (its own folder: same file name)
  want p6-b1024-eager && mkdir -p "$OUT/eager" && step p6-b1024-eager 300 $PY -m bench.training --gpus "$GPUS" --batch-size 1024 \
    --epochs 8 --repeats 1 --eager --out-dir "$OUT/eager"
fi

echo; echo "== steps"; printf '  %s\n' "${STATUS[@]}"
echo "== results ($OUT), $(( $(date +%s) - START )) s in all"
$PY - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
from bench.common import table
rows = []
for path in sorted(Path(sys.argv[1]).rglob("*.json")):
    if "profiles" in path.parts:
        continue
    try:
        data = json.loads(path.read_text())
    except ValueError:
        continue
    for r in data if isinstance(data, list) else []:
        if isinstance(r, dict) and "metric" in r:
            short = {k: r.get(k) for k in ("id", "value", "unit", "baseline", "baseline_value", "ratio", "target", "machine", "date")}
            short["metric"] = f"{r['metric'][:150]} [{path.name}{'; ' + r['card'] if r.get('card') else ''}]"
            rows.append(short)
print(table(rows))
for path in sorted(Path(sys.argv[1]).rglob("top-rank0.txt")):
    print(f"\nprofile table: {path}")
EOF
