"""Validation on a GPU machine (the workplace ``device`` tool; CI has no GPU).

Checks that on a cluster with GPUs validation's ``auto`` executor is an actor pool running the
model on ``cuda``, and that its verdict and metrics equal those of the CPU tasks executor on the
same split; then times the P7 workload (1M rows, bench/validation.py) with the actor pool on
the GPU against a bare torch loop on the same GPU. Run it with ``bash bench/gpu.sh`` set up
(``.whl`` carried) as::

    python3 -m bench.gpu_validation        # prints a table; JSON under $OUT when set
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np


def check_validation(tmp: str) -> dict:
    from bench.builders import COEF, linear_model, register_feature_set, register_trained, validation_table
    from mlplat.registry import RegistryStore
    from mlplat.storage import open_root
    from mlplat.validation import report_of, validate

    storage = open_root(os.path.join(tmp, "root"))
    registry = RegistryStore(os.path.join(tmp, "registry.db"))
    fs = register_feature_set(registry, storage, "gpu-fs", validation_table(n=200_000), ["label"])
    registry.create_model("gpu", serving_policy={"validation": {"guardrails": ["auc >= 0.8"], "slices": ["region"]}})
    on_gpu = validate(registry, storage, "gpu", register_trained(registry, storage, "gpu", linear_model(COEF), fs))
    on_cpu = validate(registry, storage, "gpu", register_trained(registry, storage, "gpu", linear_model(COEF), fs),
                      policy={"guardrails": ["auc >= 0.8"], "slices": ["region"], "executor": "tasks"})
    gpu_report, _ = report_of(storage, "gpu", on_gpu.version)
    cpu_report, _ = report_of(storage, "gpu", on_cpu.version)
    worst = max(abs(on_gpu.metrics[m] - on_cpu.metrics[m]) for m in on_cpu.metrics)
    assert gpu_report["inference"]["executor"] == "actors" and gpu_report["inference"]["device"] == "cuda", gpu_report["inference"]
    assert cpu_report["inference"] == {"executor": "tasks", "device": "cpu", "actors": None}, cpu_report["inference"]
    assert on_gpu.state == on_cpu.state and on_gpu.state.value == "VALIDATED", (on_gpu, on_cpu)
    assert worst < 1e-4, (on_gpu.metrics, on_cpu.metrics)
    return {"gpu_inference": gpu_report["inference"], "cpu_inference": cpu_report["inference"],
            "state": on_gpu.state.value, "auc_gpu": on_gpu.metrics["auc"], "auc_cpu": on_cpu.metrics["auc"],
            "max_metric_difference": worst, "rows": gpu_report["rows"]}


def time_p7(tmp: str, repeats: int = 3) -> dict:
    import pyarrow.parquet as pq
    import torch

    from bench import validation as bv
    from mlplat.models import load_bundle, predict_outputs

    storage, names, sha = bv._setup(tmp)

    def bare_cuda() -> float:
        start = time.perf_counter()
        model = load_bundle(storage, "bench", 1, expected_sha256=sha).model.to("cuda")
        table = pq.read_table(storage.path("bench", "data.parquet"))
        X = np.column_stack([table.column(n).to_numpy() for n in names]).astype(np.float32, copy=False)
        out = []
        with torch.inference_mode():
            for lo in range(0, bv.ROWS, bv.BATCH):
                out.append(predict_outputs("binary", model(torch.from_numpy(X[lo:lo + bv.BATCH]).to("cuda"))).cpu())
        torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        assert sum(len(o) for o in out) == bv.ROWS
        return elapsed

    bare_cuda()  # warm-up: CUDA context, kernels, page cache
    bv._ray(storage, names, sha, "auto")
    bare, ray_s = [], []
    for _ in range(repeats):
        bare.append(bare_cuda())
        ray_s.append(bv._ray(storage, names, sha, "auto"))
    return {"rows": bv.ROWS, "bare_cuda_s": [round(t, 2) for t in bare], "ray_actors_cuda_s": [round(t, 2) for t in ray_s],
            "ratio": round(statistics.median(bare) / statistics.median(ray_s), 3)}


def main() -> int:
    import ray
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: this check needs a GPU machine", file=sys.stderr)
        return 2
    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    out: dict = {"device": torch.cuda.get_device_name(0), "gpus": torch.cuda.device_count(),
                 "cpus": int(ray.cluster_resources().get("CPU", 0))}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            out["validation"] = check_validation(os.path.join(tmp, "v"))
            out["p7_gpu"] = time_p7(os.path.join(tmp, "p7"))
    finally:
        ray.shutdown()
    text = json.dumps(as_rows(out), indent=2, default=str)
    print(text)
    if os.environ.get("OUT"):  # copy it to bench/results/validation-gpu.json
        with open(os.path.join(os.environ["OUT"], "gpu_validation.json"), "w") as handle:
            handle.write(text + "\n")
    return 0


def as_rows(out: dict) -> list[dict]:
    """The results as bench rows (bench/results/*.json), the validation check attached."""
    from bench.common import row, stamp

    p7 = out["p7_gpu"]
    ray_rows_s = p7["rows"] / statistics.median(p7["ray_actors_cuda_s"])
    bare_rows_s = p7["rows"] / statistics.median(p7["bare_cuda_s"])
    return stamp([row("P7-gpu", f"Ray Data batch inference, actor pool on cuda (auto executor), end to end incl. pool start "
                                f"({p7['rows']:,} rows x 32 features, MLP 256-128, batch 4096, {out['device']})",
                      ray_rows_s, "rows/s", baseline="bare torch loop on the same GPU", baseline_value=bare_rows_s,
                      target="informational (P7's target is on CPU)", ray_s=p7["ray_actors_cuda_s"],
                      bare_s=p7["bare_cuda_s"], validation_check=out["validation"])])


if __name__ == "__main__":
    sys.exit(main())
