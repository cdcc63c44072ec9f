"""`make demo`: the platform's lifecycle end to end on an embedded local Ray.

data (register a CSV as a dataset) → features (configs/features-example.yaml on Ray Data) →
training (configs/train-example.yaml on Ray Train) → validation (batch inference + gate +
report) → promotion → serving (Ray Serve, HTTP) → predictions → telemetry → a second version
rolled out as a canary, promoted, and rolled back.

Everything lands under a fresh storage root ``./.mlplat-demo`` (override: MLPLAT_ROOT), and
the demo ends by printing where to look.
"""

from __future__ import annotations

import csv
import math
import os
import random
import secrets
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlplat.api import Platform, connect
from mlplat.records import RunState

MODEL = "clicks-ctr"
CONFIGS = Path(__file__).resolve().parent.parent / "configs"
ROWS = 4000


def _write_clicks_csv(path: Path, rows: int = ROWS, seed: int = 0) -> list[dict[str, Any]]:
    """Synthetic click logs whose label really depends on the features (so a model can learn)."""
    rng = random.Random(seed)
    out = []
    for i in range(rows):
        age, spend, sessions = rng.randint(18, 80), round(rng.expovariate(0.02), 2), rng.randint(0, 30)
        country, plan = rng.choice(["de", "fr", "us"]), rng.choice(["free", "pro"])
        logit = -2.0 + 0.15 * sessions - 0.06 * (age - 40) + (1.8 if plan == "pro" else 0) + (0.8 if country == "us" else 0)
        clicked = int(rng.random() < 1 / (1 + math.exp(-logit)))
        out.append({"user_id": f"u{i % 500}", "ts": f"2026-11-01T{rng.randint(0, 23):02d}:00:00", "age": age,
                    "spend": spend, "sessions": sessions, "country": country, "device": f"d{rng.randint(0, 999)}",
                    "plan": plan, "score": None if rng.random() < 0.05 else rng.random(), "clicked": clicked})
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(out[0]))
        writer.writeheader()
        writer.writerows(out)
    return out


class Demo:
    def __init__(self, p: Platform, workdir: Path):
        self.p, self.workdir = p, workdir
        self.rows: list[dict[str, Any]] = []
        self.version = 0  # set by the training stage
        self.report_uri = ""
        self.url = ""

    def storage_check(self) -> str:
        import torch

        from mlplat.storage import load_weights, save_weights

        tensors = {"weight": torch.randn(8, 4), "bias": torch.zeros(4)}
        ref = save_weights(self.p.storage, tensors, "demo", "storage-check.safetensors")
        loaded = load_weights(self.p.storage, "demo", "storage-check.safetensors", expected_sha256=ref.sha256)
        assert all(torch.equal(loaded[k], tensors[k]) for k in tensors)
        return f"safetensors round trip verified (sha256 {ref.sha256[:12]}...)"

    def data(self) -> str:
        source = self.workdir / "clicks.csv"
        self.rows = _write_clicks_csv(source)
        dataset = self.p.register_dataset("clicks", str(source), partition="date=2026-11-01", tags=["web", "demo"])
        self.p.complete_partition("clicks", "date=2026-11-01")
        return f"dataset clicks v{dataset.version}: {dataset.num_rows} rows, partition date=2026-11-01 complete"

    def features(self) -> str:
        fs = self.p.build_features(str(CONFIGS / "features-example.yaml"))
        return f"feature set {fs.name} v{fs.version}: {fs.num_rows} rows, {len(fs.feature_columns)} encoded columns"

    def train(self) -> str:
        run = self.p.train(str(CONFIGS / "train-example.yaml"), wait=True, timeout_s=900)
        if run.state != RunState.SUCCEEDED or run.version is None:
            raise RuntimeError(f"training run {run.run_id} ended {run.state.value}: {run.error}")
        self.version = run.version
        if not run.metrics:
            raise RuntimeError(f"training run {run.run_id} succeeded but recorded no metrics")
        metrics = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in sorted(run.metrics.items())
                            if isinstance(v, int | float) and not isinstance(v, bool))
        return f"{MODEL} v{self.version} TRAINED (run {run.run_id}; {metrics})"

    def validate(self) -> str:
        outcome = self.p.validate(MODEL, self.version, policy={"guardrails": ["auc >= 0.65", "auc >= champion - 0.005"]})
        _, self.report_uri = self.p.report(MODEL, self.version)
        state = self.p.registry.get_version(MODEL, self.version).state.value
        if state != "VALIDATED":
            raise RuntimeError(f"{MODEL} v{self.version} ended {state}: {outcome.decision.reasons}")
        return f"{MODEL} v{self.version} VALIDATED (auc {outcome.metrics['auc']:.3f}); report {self.report_uri}/index.html"

    def promote(self) -> str:
        self.p.promote(MODEL, self.version)
        return f"{MODEL} v{self.version} is PRODUCTION (alias production -> v{self.version})"

    def serve(self) -> str:
        self.url = self.p.serve_start()
        return f"Ray Serve app up at {self.url} (ingress + model pool)"

    def predict(self) -> str:
        features = ["age", "spend", "sessions", "country", "device", "plan", "score"]
        rows = [{k: r[k] for k in features} for r in self.rows[:3]]
        answer = self.p.predict(MODEL, rows)
        probabilities = ", ".join(f"{v:.3f}" for v in answer["predictions"])
        deadline = time.monotonic() + 4 * self.p.config.serve.telemetry_flush_s
        while not self.p.storage.list_dir("telemetry", MODEL) and time.monotonic() < deadline:
            time.sleep(0.5)  # the ingress flushes telemetry every telemetry_flush_s
        landed = "telemetry written" if self.p.storage.list_dir("telemetry", MODEL) else "telemetry not flushed yet"
        return f"POST /v1/models/{MODEL}:predict -> v{answer['model_version']}: [{probabilities}]; {landed}"


    def rollout(self) -> str:
        """A second version: trained, validated, pre-warmed as a 50% canary, promoted, rolled back."""
        run = self.p.train(str(CONFIGS / "train-example.yaml"), wait=True, timeout_s=900)
        if run.state != RunState.SUCCEEDED or run.version is None:
            raise RuntimeError(f"training run {run.run_id} ended {run.state.value}: {run.error}")
        v2 = run.version
        self.p.validate(MODEL, v2, policy={"guardrails": ["auc >= 0.65"]})
        canary = self.p.deploy(MODEL, v2, canary_percent=50, by="demo")
        if canary.state.value != "CANARY":
            raise RuntimeError(f"deploying {MODEL} v{v2} ended {canary.state.value}: {canary.reason}")
        features = ["age", "spend", "sessions", "country", "device", "plan", "score"]
        rows = [{k: r[k] for k in features} for r in self.rows[:1]]
        seen = sorted({self.p.predict(MODEL, rows, caller=f"user-{i}")["model_version"] for i in range(12)})
        live = self.p.deploy(MODEL, v2, canary_percent=100, by="demo")
        back = self.p.rollback(MODEL, by="demo")
        return (f"v{v2} pre-warmed, canary 50% (callers answered by v{' and v'.join(seen)}), {live.state.value}, "
                f"then rolled back: v{back.version} serves again (`mlplat deployments {MODEL}`)")


def main() -> int:
    root = Path(os.environ.get("MLPLAT_ROOT", ".mlplat-demo")).resolve()
    if "MLPLAT_ROOT" not in os.environ and root.exists():
        shutil.rmtree(root)  # the default demo root is scratch: start clean every run
    token = os.environ.get("MLPLAT_API_TOKEN") or secrets.token_urlsafe(24)
    p = connect(root=str(root), api_token=token, serve__telemetry_flush_s=1.0)
    workdir = root / "incoming"
    workdir.mkdir(parents=True, exist_ok=True)
    demo = Demo(p, workdir)
    stages: list[tuple[str, Callable[[], str]]] = [
        ("storage", demo.storage_check), ("data", demo.data), ("features", demo.features), ("training", demo.train),
        ("validation", demo.validate), ("registry", demo.promote), ("serving", demo.serve), ("inference", demo.predict),
        ("rollout", demo.rollout),
    ]
    print(f"mlplat demo — storage root {p.storage.uri}; starting an embedded Ray ...", flush=True)
    p.ensure_ray(log_to_driver=False)  # keep the demo's own lines readable; Ray logs stay in /tmp/ray
    started = time.perf_counter()
    for name, stage in stages:
        t0 = time.perf_counter()
        print(f"[{name}] ...", flush=True)
        print(f"[{name}] {stage()} ({time.perf_counter() - t0:.1f} s)", flush=True)
    total = time.perf_counter() - started
    print(f"\ndone in {total:.1f} s. Look at:")
    print(f"  {root}/datasets/clicks/            the registered dataset (Parquet)")
    print(f"  {root}/features/clicks-features/   encoded features, encoder.json, stats.json")
    print(f"  {root}/models/{MODEL}/v{demo.version}/          model.safetensors + bundle.json")
    print(f"  {demo.report_uri.removeprefix('file://')}/index.html   the validation report")
    print(f"  {root}/telemetry/{MODEL}/          every served prediction (Parquet)")
    print(f"  MLPLAT_ROOT={root} MLPLAT_REGISTRY_MODE=local mlplat models show {MODEL}")
    print("Serving stopped with this process; `mlplat serve start` keeps it up.")
    (root / "demo-wall-time.txt").write_text(f"{total:.1f}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
